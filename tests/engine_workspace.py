"""A dataset and a tiny model that has memorised what to answer, so the pipeline's outcome is known.

For six questions the model gives right answers to q1–q2, wrong answers to q3–q6, right paraphrases
of the gold for q3–q4 and wrong ones for q5–q6: S3FT must pick self, self, paraphrase, paraphrase,
gold, gold, and greedy in-domain accuracy on these rows is exactly 2/6.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml

TEMPLATES = {"prompt": "Q {question}", "paraphrase": "P {question} | {gold}"}
#            question, gold,  own answer,            paraphrase of the gold
ROWS = [
    ("12+7", "#### 19", "12+7=19. The answer is 19", "It is 19. The answer is 19"),
    ("20+5", "#### 25", "20+5=25. The answer is 25", "It is 25. The answer is 25"),
    ("31+4", "#### 35", "31+4=36. The answer is 36", "It is 35. The answer is 35"),
    ("40+8", "#### 48", "40+8=47. The answer is 47", "It is 48. The answer is 48"),
    ("51+6", "#### 57", "51+6=58. The answer is 58", "It is 56. The answer is 56"),
    ("63+2", "#### 65", "63+2=64. The answer is 64", "It is 66. The answer is 66"),
]
EXPECTED_S3FT = ["self", "self", "paraphrase", "paraphrase", "gold", "gold"]


def build_workspace(root: Path) -> Path:
    """The dataset, the template override and the memorised model, under `root`."""
    from s3ft.data.prompts import Templates, chat, render
    from s3ft.models.chat import render_prompt
    from s3ft.models.resolve import load_tokenizer
    from s3ft.models.tiny import build_tiny_model
    from tests.tiny_training import memorize

    (root / "data.jsonl").write_text(
        "".join(json.dumps({"id": f"q{i + 1}", "question": q, "answer": g}) + "\n" for i, (q, g, _, _) in enumerate(ROWS))
    )
    (root / "templates.yaml").write_text(yaml.safe_dump(TEMPLATES))
    model = build_tiny_model(root / "model")
    tokenizer = load_tokenizer(str(model))
    templates = Templates(**TEMPLATES)
    texts = []
    for question, gold, own, para in ROWS:
        fields = {"question": question, "gold": gold}
        for template, answer in ((templates.prompt, own), (templates.paraphrase, para)):
            texts.append(render_prompt(tokenizer, chat(templates, render(template, fields))) + answer + "</s>")
    memorize(model, texts, steps=400)
    return root


def config_file(workspace: Path, out: Path, **overrides: object) -> Path:
    """An experiment YAML over the workspace; `section__key=value` overrides."""
    data: dict = {
        "output_dir": str(out),
        "model": {"path": str(workspace / "model")},
        "data": {"path": str(workspace / "data.jsonl"), "task": "gsm8k", "prompt_template": str(workspace / "templates.yaml")},
        "generation": {"backend": "vllm", "max_tokens": 40, "shard_size": 2, "enforce_eager": True},
        "judge": {"kind": "math"},
        "eval": {"general_tasks": [], "data_path": str(workspace / "data.jsonl")},
    }
    for key, value in overrides.items():
        section, _, name = key.partition("__")
        data.setdefault(section, {})[name] = value
    path = out.parent / f"{out.name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
