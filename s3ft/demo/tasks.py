"""The demo's synthetic task family: 2-digit addition to fine-tune on, word reversal to forget.

The base model learnt additions asked one way ("Add 23+45") and answers them in its own style,
working digit by digit ("23+45: 3+5=8, 2+4+0=6. The answer is 68"). The fine-tuning and test sets
ask about half their additions another way ("What is 23 plus 45?"), which the base model never saw:
it answers about half of them, on any machine, and fine-tuning has something to teach. Their gold
answers do the same working in other words ("Adding 23 and 45: 3+5=8, 2+4+0=6, so the sum is
68.\\n#### 68"), as GSM8K's gold solutions differ from a model's own, so plain SFT has to move the model to a new way of
answering while S3FT mostly trains on what the model writes already: the paper's point in
miniature. The math judge reads both styles. Word reversal is a skill the fine-tuning set never
shows, so its accuracy after fine-tuning measures forgetting.

Everything comes from one seed: `write_demo_files` rebuilds the shipped files (configs/data/demo/
and the lm-eval task under s3ft/demo/lm_eval_tasks/) byte for byte, and a test checks they match.
"""

from __future__ import annotations

import json
import random
import string
from dataclasses import dataclass
from pathlib import Path

# The user turn of an addition, and of the paraphrase request (the demo's data.prompt_template).
PROMPT_TEMPLATE = "{question}"
PARAPHRASE_TEMPLATE = "Restate: {gold}"
REVERSE_PROMPT = "Reverse {word}"
# How an addition is asked: pretraining uses the first only, fine-tuning and test sets both.
PHRASINGS = ("Add {a}+{b}", "What is {a} plus {b}?")

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / "configs" / "data" / "demo"
REVERSE_TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks" / "demo_reverse"


@dataclass(frozen=True)
class Addition:
    a: int
    b: int
    phrasing: int = 0  # index into PHRASINGS

    @property
    def total(self) -> int:
        return self.a + self.b

    @property
    def question(self) -> str:
        return PHRASINGS[self.phrasing].format(a=self.a, b=self.b)

    @property
    def sums(self) -> tuple[str, str]:
        """The digit-by-digit working both styles write: the ones, then the tens with the carry.
        Writing it out is what lets a 0.35M-parameter model learn to add in the demo's minutes."""
        ones = self.a % 10 + self.b % 10
        tens = self.a // 10 + self.b // 10 + ones // 10
        return f"{self.a % 10}+{self.b % 10}={ones}", f"{self.a // 10}+{self.b // 10}+{ones // 10}={tens}"

    @property
    def own(self) -> str:
        """The base model's style, learnt in pretraining."""
        ones, tens = self.sums
        return f"{self.a}+{self.b}: {ones}, {tens}. The answer is {self.total}"

    @property
    def gold(self) -> str:
        """The fine-tuning set's style, which the base model never writes: the same working in other
        words, ending GSM8K's way."""
        ones, tens = self.sums
        return f"Adding {self.a} and {self.b}: {ones}, {tens}, so the sum is {self.total}.\n#### {self.total}"

    @property
    def paraphrase_question(self) -> str:
        return PARAPHRASE_TEMPLATE.format(gold=self.gold)


@dataclass(frozen=True)
class DemoSplits:
    """Disjoint addition pairs for pretraining, fine-tuning and test; held-out words for reversal."""

    pretrain: list[Addition]
    finetune: list[Addition]
    test: list[Addition]
    reverse_test: list[str]


def random_word(rng: random.Random) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(3, 5)))


def make_splits(seed: int = 0, finetune_rows: int = 512, test_rows: int = 200, reverse_rows: int = 200) -> DemoSplits:
    """Disjoint number pairs; fine-tuning and test rows get a random phrasing each."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(10, 100) for b in range(10, 100)]
    rng.shuffle(pairs)
    asked = [Addition(a, b, rng.randrange(len(PHRASINGS))) for a, b in pairs[:test_rows + finetune_rows]]
    words: list[str] = []
    while len(words) < reverse_rows:
        word = random_word(rng)
        if word not in words:
            words.append(word)
    return DemoSplits(
        pretrain=[Addition(a, b) for a, b in pairs[test_rows + finetune_rows:]],
        finetune=asked[test_rows:],
        test=asked[:test_rows],
        reverse_test=words,
    )


def addition_rows(items: list[Addition], prefix: str) -> list[dict[str, str]]:
    """GSM8K-format rows (`question`, `answer` ending `#### N`): the gsm8k adapter and math judge read them."""
    return [{"id": f"{prefix}-{i:05d}", "question": x.question, "answer": x.gold} for i, x in enumerate(items)]


def reverse_rows(words: list[str]) -> list[dict[str, str]]:
    return [{"id": f"reverse-{i:05d}", "word": w, "reversed": w[::-1]} for i, w in enumerate(words)]


def prompt_template_yaml() -> str:
    return (
        "# The demo's prompts (written by s3ft.demo.tasks): the bare question, and a restate request\n"
        "# that the base model learnt in pretraining, so it can paraphrase gold answers in its own style.\n"
        f"prompt: {json.dumps(PROMPT_TEMPLATE)}\n"
        f"paraphrase: {json.dumps(PARAPHRASE_TEMPLATE)}\n"
    )


def demo_files(seed: int = 0) -> dict[Path, str]:
    """Every shipped demo file and its content."""
    splits = make_splits(seed)
    return {
        DATA_DIR / "train.jsonl": _jsonl(addition_rows(splits.finetune, "train")),
        DATA_DIR / "test.jsonl": _jsonl(addition_rows(splits.test, "test")),
        DATA_DIR / "prompts.yaml": prompt_template_yaml(),
        REVERSE_TASK_DIR / "demo_reverse.jsonl": _jsonl(reverse_rows(splits.reverse_test)),
    }


def write_demo_files(seed: int = 0) -> list[Path]:
    written = []
    for path, content in demo_files(seed).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content)
        written.append(path)
    return written


def _jsonl(rows: list[dict[str, str]]) -> str:
    return "".join(json.dumps(row) + "\n" for row in rows)


if __name__ == "__main__":
    for written_path in write_demo_files():
        print(written_path)
