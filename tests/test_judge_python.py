"""The `python` judge: a user's own function, imported once, answering in any of its three forms."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3ft.config import JudgeConfig
from s3ft.errors import JudgeError
from s3ft.judges import Verdict, build_judge
from s3ft.judges.python_fn import PythonJudge
from s3ft.judges.run import judge_from_config

USER_MODULE = '''
from s3ft.judges import Verdict

IMPORTS = 0
IMPORTS += 1


def as_bool(row):
    return row["response"].strip() == row["gold"]


def as_pair(row):
    ok = row["response"].strip() == row["gold"]
    return ok, "same" if ok else f"expected {row['gold']}"


def as_verdict(row):
    return Verdict(row["response"] == row["gold"], "checked", score=0.5)


def fragile(row):
    return 1 / int(row["response"]) > 0


def odd(row):
    return "yes"


class Nested:
    @staticmethod
    def check(row):
        return True


NOT_CALLABLE = 3
'''


@pytest.fixture
def user_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    name = f"user_judges_{tmp_path.name.replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(USER_MODULE)
    (tmp_path / "broken_judges.py").write_text("raise RuntimeError('no GPU here')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield name
    sys.modules.pop(name, None)
    sys.modules.pop("broken_judges", None)


ROWS = [{"response": " 4 ", "gold": "4"}, {"response": "5", "gold": "4"}]


def test_a_bool_a_pair_and_a_verdict_are_all_verdicts(user_module: str) -> None:
    bools = PythonJudge(f"{user_module}:as_bool").judge_batch(ROWS)
    assert bools == [Verdict(True, "correct"), Verdict(False, "incorrect")]
    pairs = PythonJudge(f"{user_module}:as_pair").judge_batch(ROWS)
    assert pairs == [Verdict(True, "same"), Verdict(False, "expected 4")]
    assert PythonJudge(f"{user_module}:as_verdict").judge_batch(ROWS)[1] == Verdict(False, "checked", score=0.5)
    assert PythonJudge(f"{user_module}:Nested.check").judge_row(ROWS[0]).correct


def test_built_by_kind_and_imported_once(user_module: str) -> None:
    judge = build_judge("python", target=f"{user_module}:as_bool")
    judge.judge_batch(ROWS * 3)
    PythonJudge(f"{user_module}:as_pair")
    assert sys.modules[user_module].IMPORTS == 1


def test_a_row_that_raises_is_an_error_row_and_the_batch_goes_on(user_module: str) -> None:
    rows = [{"response": "2"}, {"response": "0"}, {"response": "x"}, {"gold": "no response"}, {"response": "1"}]
    verdicts = PythonJudge(f"{user_module}:fragile").judge_batch(rows)
    assert [v.correct for v in verdicts] == [True, False, False, False, True]
    assert verdicts[1].reason == "error: ZeroDivisionError: division by zero"
    assert verdicts[2].reason.startswith("error: ValueError: invalid literal")
    assert verdicts[3].reason == "error: missing field(s) response"


def test_an_answer_of_the_wrong_type_is_an_error_row(user_module: str) -> None:
    verdict = PythonJudge(f"{user_module}:odd").judge_row(ROWS[0])
    assert not verdict.correct
    assert verdict.reason == "error: judge function returned str, not bool, (bool, reason) or Verdict"


@pytest.mark.parametrize(
    ("target", "says"),
    [
        ("no_such_module_s3ft:f", "cannot import 'no_such_module_s3ft': ModuleNotFoundError"),
        ("broken_judges:f", "cannot import 'broken_judges': RuntimeError: no GPU here"),
        ("{m}:missing", "has no attribute 'missing'"),
        ("{m}:NOT_CALLABLE", "is a int, not a function"),
        ("{m}.as_bool", "is not 'package.module:function'"),
        (":as_bool", "is not 'package.module:function'"),
    ],
)
def test_a_target_that_cannot_be_loaded_is_a_judge_error(user_module: str, target: str, says: str) -> None:
    target = target.format(m=user_module)
    with pytest.raises(JudgeError) as raised:
        PythonJudge(target)
    assert says in str(raised.value) and f"'{target}'" in str(raised.value)


def test_the_judge_section_builds_it_from_a_module_on_the_path(user_module: str) -> None:
    """`judge: {kind: python, target: ...}` as a config gives it; on a cluster the module must be
    importable on every node (installed, or on PYTHONPATH through the job's runtime env)."""
    cfg = JudgeConfig.model_validate({"kind": "python", "target": f"{user_module}:as_pair"})
    judge = judge_from_config(cfg)
    assert isinstance(judge, PythonJudge)
    assert judge.judge_batch(ROWS) == [Verdict(True, "same"), Verdict(False, "expected 4")]
