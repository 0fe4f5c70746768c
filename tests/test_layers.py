"""The package's layers import only downward, and validating a config imports nothing heavy.

Every `import` counts, also those inside functions: a lazy import still ties a low module to a high one.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "s3ft"

# Bottom to top. A module may import its own layer and the ones below it; never one above.
LAYERS: list[tuple[str, ...]] = [
    ("s3ft.errors", "s3ft.config", "s3ft.selection", "s3ft.plan"),
    ("s3ft.runtime", "s3ft.sandbox"),
    ("s3ft.data", "s3ft.models"),
    ("s3ft.generation",),
    ("s3ft.judges",),
    ("s3ft.train", "s3ft.eval", "s3ft.report"),
    ("s3ft.pipeline",),
    ("s3ft.cli", "s3ft.demo"),
]


def _layer(module: str) -> int | None:
    for index, names in enumerate(LAYERS):
        if any(module == name or module.startswith(name + ".") for name in names):
            return index
    return None


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found += [(node.lineno, f"{node.module}.{alias.name}") for alias in node.names]
    return [(line, name) for line, name in found if name.startswith("s3ft.")]


def upward_imports() -> list[str]:
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        here = _module_name(path)
        own = _layer(here)
        for line, target in _imports(path):
            theirs = _layer(target)
            if own is not None and theirs is not None and theirs > own:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line} imports {target} (layer {theirs} > {own})")
    return bad


def test_every_module_has_a_layer() -> None:
    orphans = [_module_name(p) for p in PACKAGE.rglob("*.py") if _module_name(p) != "s3ft" and _layer(_module_name(p)) is None]
    assert not orphans, f"modules in no layer (add them to LAYERS): {orphans}"


def test_layers_import_only_downward() -> None:
    assert not (bad := upward_imports()), "upward imports:\n" + "\n".join(bad)


def test_the_layer_check_sees_an_upward_import(tmp_path: Path) -> None:
    """The check itself: a low module that imports the pipeline is found, also inside a function."""
    source = tmp_path / "probe.py"
    source.write_text("def f():\n    from s3ft.pipeline.run import run_all\n")
    assert _imports(source) == [(2, "s3ft.pipeline.run.run_all")]
    assert _layer("s3ft.pipeline.run.run_all") > _layer("s3ft.config")


HEAVY = ("ray", "vllm", "deepspeed", "torch")
# `s3ft plan` counts parameters on torch's meta device and asks DeepSpeed's own estimator: those two are
# its job. What it must never need is a cluster or an engine.
DISTRIBUTED = ("ray", "vllm")


@pytest.mark.parametrize(("code", "banned"), [
    ("from s3ft.config import load_config; load_config('configs/experiments/demo.yaml')", HEAVY),
    ("from s3ft.config import load_config; load_config('configs/experiments/mistral7b_gsm8k.yaml')", HEAVY),
    ("import s3ft.judges.math, s3ft.judges.qa, s3ft.judges.code, s3ft.judges.llm", HEAVY),
    ("from s3ft.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass", HEAVY),
    ("from s3ft.cli import main\ntry:\n    main(['run', '--help'])\nexcept SystemExit:\n    pass", HEAVY),
    ("from s3ft.cli import main; main(['plan', 'configs/experiments/demo.yaml'])", DISTRIBUTED),
])
def test_config_and_help_import_nothing_heavy(code: str, banned: tuple[str, ...]) -> None:
    probe = f"import sys\n{code}\nprint('imported:', *(m for m in {banned!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], cwd=PACKAGE.parent, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == "imported:", out.stdout.splitlines()[-1]
