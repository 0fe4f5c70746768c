"""General benchmarks through lm-eval: the scores must be the ones the model's log-likelihoods give."""

from __future__ import annotations

import json
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest

from s3ft.eval.general import DatasetUnavailableError, evaluate_general, headline_score
from s3ft.eval.lm_eval_tasks import TASKS_DIR
from s3ft.eval.results import EvalError

DATA = Path(__file__).parent / "data" / "eval"
LOCAL_MC = TASKS_DIR / "local_mc" / "local_mc.jsonl"

# A user's own task, as the packaged example tells them to write it: absolute data_files, no loader.
USER_TASK_YAML = """\
task: user_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {path}
output_type: multiple_choice
test_split: test
doc_to_text: "Q: {{{{question}}}}\\nA:"
doc_to_target: "{{{{label}}}}"
doc_to_choice: "{{{{options}}}}"
metric_list:
  - metric: acc
"""


def _docs(path: Path, question: str, choices: str, answer: str) -> list[tuple[str, list[str], int]]:
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [(r[question], r[choices], r[answer]) for r in rows]


def _hand_accuracy(model_dir: Path, docs: list[tuple[str, list[str], int]], template: str) -> float:
    """Accuracy from summed log-probs of ' choice' after the question, with plain torch."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    correct = 0
    for question, choices, answer in docs:
        context = template.format(question)
        n_ctx = len(tokenizer(context, add_special_tokens=False)["input_ids"])
        scores = []
        for choice in choices:
            ids = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([ids])).logits[0].float(), dim=-1)
            scores.append(sum(float(logp[i - 1, ids[i]]) for i in range(n_ctx, len(ids))))
        correct += max(range(len(choices)), key=scores.__getitem__) == answer
    return correct / len(docs)


def _memorised_copy(src: Path, dst: Path, texts: list[str]) -> Path:
    from tests.tiny_training import memorize

    shutil.copytree(src, dst)
    memorize(dst, texts, steps=80)
    return dst


def test_headline_metric_from_table_then_fallback() -> None:
    metrics = {"alias": "x", "acc,none": 0.25, "acc_stderr,none": "N/A", "acc_norm,none": 0.5}
    assert headline_score("mmlu", metrics) == 0.25
    assert headline_score("hellaswag", metrics) == 0.5
    assert headline_score("my_task", metrics) == 0.5  # fallback prefers acc_norm
    generated = {"exact_match,strict-match": 0.3, "exact_match_stderr,strict-match": 0.1}
    assert headline_score("my_gen_task", generated) == 0.3
    assert headline_score("odd", {"bleu,none": 12.0}) == 12.0
    with pytest.raises(EvalError, match="no score for 'ai2_arc'"):
        headline_score("ai2_arc", {})


@pytest.mark.slow
def test_local_task_scores_equal_hand_computation(tiny_model_dir: Path, tmp_path: Path) -> None:
    local_docs = _docs(LOCAL_MC, "question", "choices", "answer")
    random_acc = _hand_accuracy(tiny_model_dir, local_docs, "Question: {}\nAnswer:")
    assert evaluate_general(str(tiny_model_dir), ["local_mc"], batch_size=4) == {"local_mc": random_acc}
    limited = evaluate_general(str(tiny_model_dir), ["local_mc"], limit=5, batch_size=4)
    assert limited == {"local_mc": _hand_accuracy(tiny_model_dir, local_docs[:5], "Question: {}\nAnswer:")}

    # Teach the model the right answers: a real evaluation must now score 1.0 where the random one did not.
    user_docs = _docs(DATA / "user_mc.jsonl", "question", "options", "label")
    texts = [f"Question: {q}\nAnswer: {c[a]}" for q, c, a in local_docs]
    texts += [f"Q: {q}\nA: {c[a]}" for q, c, a in user_docs]
    taught = _memorised_copy(tiny_model_dir, tmp_path / "taught", texts)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    (tasks_dir / "user_mc.yaml").write_text(USER_TASK_YAML.format(path=DATA / "user_mc.jsonl"))
    scores = evaluate_general(str(taught), ["local_mc", "user_mc"], include_path=tasks_dir, batch_size=4)
    assert scores == {
        "local_mc": _hand_accuracy(taught, local_docs, "Question: {}\nAnswer:"),
        "user_mc": _hand_accuracy(taught, user_docs, "Q: {}\nA:"),
    }
    assert scores == {"local_mc": 1.0, "user_mc": 1.0}
    assert random_acc < 1.0


@pytest.mark.slow
def test_hub_benchmark_offline_is_a_clear_error(tiny_model_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import datasets
    import huggingface_hub.constants

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(DatasetUnavailableError, match=r"'arc_challenge'.*hub is unreachable"):
        evaluate_general(str(tiny_model_dir), ["local_mc", "arc_challenge"])
    with pytest.raises(EvalError, match="unknown lm-eval task.*no_such_task"):
        evaluate_general(str(tiny_model_dir), ["no_such_task"])


def test_argument_mistakes_are_clear_errors() -> None:
    model = "never-loaded"
    with pytest.raises(EvalError, match="unknown evaluation backend 'vlm'"):
        evaluate_general(model, ["local_mc"], backend="vlm")  # type: ignore[arg-type]
    with pytest.raises(EvalError, match="list is empty"):
        evaluate_general(model, [])
    with pytest.raises(EvalError, match="not a folder"):
        evaluate_general(model, ["local_mc"], include_path="/no/such/tasks")
    try:
        version("vllm")
        pytest.skip("the official vllm package is installed: lm-eval's vllm backend is usable here")
    except PackageNotFoundError:
        pass
    with pytest.raises(EvalError, match="official `vllm` package"):
        evaluate_general(model, ["local_mc"], backend="vllm")
