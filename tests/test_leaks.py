"""The paraphrase leak check: rewrites that speak of the reference, the rewriting or the prompt are
refused (SDFT's whole phrase list and more), and the real gold answers of every task pass it."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from s3ft.config import ParaphraseConfig
from s3ft.data.leaks import find_leak, leak_check, leak_phrases
from s3ft.data.prompts import load_templates, render
from s3ft.data.tasks import TASKS
from tests.paths import shared_file

# sail-sg/sdft eval/gen_distilled_data.py refuses a prediction containing one of these, or starting "Your turn"
SDFT_BANNED = ["reference answer", "your response", "my response", "your own response", "now it's your turn"]


@pytest.mark.parametrize("task", ["gsm8k", "humaneval", "mbpp", "nq_open", "generic"])
def test_every_task_refuses_what_sdft_refuses(task: str) -> None:
    phrases = leak_phrases(task)
    for banned in SDFT_BANNED:
        assert find_leak(f"Some text. {banned.upper()}: 42.", phrases) == banned
    assert find_leak("Your turn: solve it again. 42", phrases) == "your turn"


@pytest.mark.parametrize(
    ("paraphrase", "phrase"),
    [
        ("As the reference solution shows, she has 4 apples. The answer is 4", "the reference"),
        ("The solution: she has 4 apples, as the reference solution shows.", "the reference"),
        ("Following our reference solution, 4.", "reference solution"),
        ("Here is my rewrite:\nShe has 2 + 2 = 4. The answer is 4", "here is my"),
        ("Here's my version of the solution. 4", "here's my"),
        ("Rewritten solution: 2 + 2 = 4.", "rewritten"),
        ("I rephrased it: 4", "rephrased"),
        ("In my own words: two and two make 4.", "in my own words"),
        ("Your response should end with the answer. The answer is 4", "your response"),
        ("The given answer of 4 is right, so the answer is 4", "given answer"),
        ("The ground truth says 4.", "ground truth"),
        ("Following the gold answer, 4.", "gold answer"),
        ("As requested, step by step: 2 + 2 = 4.", "as requested"),
        ("The prompt asks for 2 + 2, which is 4.", "the prompt"),
        ("Good. Now it\u2019s your turn: 4", "now it's your turn"),  # a curly apostrophe too
        ("Here is a math problem and its solution, restated: 4", "math problem and its"),
        ("Per their Reference\n  Solution, 4", "reference solution"),  # any case and spacing
    ],
)
def test_leaking_gsm8k_paraphrases_are_caught(paraphrase: str, phrase: str) -> None:
    assert find_leak(paraphrase, leak_phrases("gsm8k"), prompt="Solve: what is 2+2?") == phrase


@pytest.mark.parametrize(
    "paraphrase",
    [
        "She has 2 + 2 = 4 apples. The answer is 4",
        "The librarian files 3 reference books and 1 novel: 4. The answer is 4",  # "reference" alone is no leak
        "Prompting her, he writes 4 lines. The answer is 4",  # words only: "prompting" is not "the prompt"
        "She rewinds the tape twice: 4. The answer is 4",
    ],
)
def test_ordinary_answers_pass(paraphrase: str) -> None:
    assert find_leak(paraphrase, leak_phrases("gsm8k")) is None


def test_a_phrase_of_the_training_prompt_is_no_leak() -> None:
    """HumanEval docstrings say "Your task is ...": a rewrite that repeats its prompt's docstring is fine."""
    code = 'def pluck(arr):\n    """Your task is to pluck one of the nodes."""\n    return arr[:1]\n'
    assert find_leak(code, leak_phrases("humaneval"), prompt=code[:60]) is None
    assert find_leak(code, leak_phrases("humaneval"), prompt="def pluck(arr):") == "your task"


@pytest.mark.parametrize(
    ("task", "path", "golds"),
    [
        ("gsm8k", ("gsm8k", "train.jsonl"), lambda row: [row["answer"]]),
        ("gsm8k", ("gsm8k", "test.jsonl"), lambda row: [row["answer"]]),
        ("nq_open", ("nq_open", "dev.jsonl"), lambda row: row["answer"]),
        ("humaneval", ("humaneval", "HumanEval.jsonl"), lambda row: [row["prompt"] + row["canonical_solution"]]),
    ],
)
def test_no_real_gold_answer_is_taken_for_a_leak(task: str, path: tuple[str, str], golds: Callable[[dict], list[str]]) -> None:
    """Gold answers are what good paraphrases look like: not one of them (7,473 + 1,319 GSM8K
    solutions, 6,490 NQ answers, 164 HumanEval solutions) trips the task's default phrases."""
    templates, phrases = load_templates(task), leak_phrases(task)
    flagged = []
    for line in shared_file(*path).read_text().splitlines():
        raw = json.loads(line)
        prompt = render(templates.prompt, TASKS[task](raw))
        flagged += [(gold[:80], leak) for gold in golds(raw) if (leak := find_leak(gold, phrases, prompt))]
    assert not flagged, flagged[:5]


def test_the_phrases_are_configurable_per_run() -> None:
    text = "Per the textbook, 4."
    assert leak_check("gsm8k", ParaphraseConfig(leak_check=False)) is None
    default = leak_check("gsm8k", ParaphraseConfig())
    assert default is not None and default(text, "") is None and default("Here is my rewrite: 4", "") == "here is my"
    extra = leak_check("gsm8k", ParaphraseConfig(extra_leak_phrases=["per the textbook"]))
    assert extra is not None and extra(text, "") == "per the textbook" and extra("my rewrite: 4", "") == "rewrite"
    only = leak_check("gsm8k", ParaphraseConfig(leak_phrases=["per the textbook"]))
    assert only is not None and only(text, "") == "per the textbook" and only("my rewrite: 4", "") is None
    assert find_leak("anything", ["", "  "]) is None  # blank phrases match nothing
