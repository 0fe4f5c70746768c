"""Per-task prompt templates (YAML), rendered with `{name}` placeholders.

Placeholders are replaced one by one rather than with `str.format`, so code and JSON in the data
(full of braces) never break a template.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from s3ft.errors import ConfigError

PLACEHOLDER = re.compile(r"\{(\w+)\}")


@dataclass(frozen=True)
class Templates:
    prompt: str
    paraphrase: str
    system: str | None = None


def load_templates(task: str, override_file: str | None = None, paraphrase: str | None = None) -> Templates:
    """The task's default templates, then the keys of an override file, then a paraphrase override."""
    values = yaml.safe_load(resources.files("s3ft.data").joinpath(f"prompts/{task}.yaml").read_text())
    if override_file:
        path = Path(override_file)
        if not path.is_file():
            raise ConfigError(f"data.prompt_template: file not found: {path}")
        extra = yaml.safe_load(path.read_text()) or {}
        unknown = set(extra) - {"prompt", "paraphrase", "system"}
        if unknown:
            raise ConfigError(f"{path}: unknown template key(s) {sorted(unknown)}; allowed: prompt, paraphrase, system")
        values.update(extra)
    if paraphrase:
        values["paraphrase"] = paraphrase
    return Templates(**values)


def render(template: str, fields: dict[str, Any]) -> str:
    return PLACEHOLDER.sub(lambda m: str(fields[m.group(1)]) if m.group(1) in fields else m.group(0), template)


def chat(templates: Templates, user: str) -> list[dict[str, str]]:
    system = [{"role": "system", "content": templates.system}] if templates.system else []
    return [*system, {"role": "user", "content": user}]
