from collections import Counter

import pytest

from s3ft.selection import select_all, select_row, stats

OK = {"correct": True, "reason": "match: 4"}
BAD = {"correct": False, "reason": "mismatch: got 5, expected 4"}


def row(responses: list[str], verdicts: list[dict], paraphrase: str | None = None, para: dict | None = None) -> dict:
    return {"id": "x", "messages": [{"role": "user", "content": "2+2?"}], "gold": "#### 4", "responses": responses,
            "verdicts": verdicts, "paraphrase": paraphrase, "paraphrase_verdict": para}


@pytest.mark.parametrize(
    ("strategy", "example", "source", "target"),
    [
        ("s3ft", row(["4"], [OK]), "self", "4"),
        ("s3ft", row(["5"], [BAD], "it is 4", OK), "paraphrase", "it is 4"),
        ("s3ft", row(["5"], [BAD], "it is 3", BAD), "gold", "#### 4"),
        ("ssr", row(["4"], [OK]), "self", "4"),
        ("ssr", row(["5"], [BAD], "it is 4", OK), "gold", "#### 4"),  # ssr never uses paraphrases
        ("sft", row(["4"], [OK]), "gold", "#### 4"),
    ],
)
def test_each_strategy_picks_the_papers_target(strategy: str, example: dict, source: str, target: str) -> None:
    (merged,) = select_row(example, strategy)
    assert (merged["source"], merged["target"]) == (source, target)
    if source == "self":
        assert merged["target"] == merged["response"] and merged["response_correct"] is True
    if source == "paraphrase":
        assert merged["paraphrase_correct"] is True and merged["response_correct"] is False
    if source == "gold" and strategy == "s3ft":
        assert "mismatch" in merged["judge_reason"] and "paraphrase" in merged["judge_reason"]


def test_rft_keeps_every_distinct_correct_sample_under_its_own_id() -> None:
    example = row(["4", "5", " 4", "four is 4"], [OK, BAD, OK, OK])
    merged = select_row(example, "rft")
    assert [m["id"] for m in merged] == ["x#0", "x#3"]
    assert all(m["source"] == "self" and m["target"] == m["response"] for m in merged)
    (fallback,) = select_row(row(["5", "6"], [BAD, BAD]), "rft")
    assert (fallback["id"], fallback["source"], fallback["target"]) == ("x", "gold", "#### 4")


def test_counts_add_up_to_the_total() -> None:
    counts: Counter[str] = Counter()
    rows = [row(["4"], [OK]), row(["5"], [BAD], "4", OK), row(["5"], [BAD], "3", BAD), row(["4"], [OK])]
    merged = list(select_all(rows, "s3ft", counts))
    summary = stats("s3ft", counts)
    assert summary["total"] == len(merged) == 4
    assert (summary["self"], summary["paraphrase"], summary["gold"]) == (2, 1, 1)
    assert summary["share"] == {"self": 0.5, "paraphrase": 0.25, "gold": 0.25}


def test_stats_count_what_the_judge_could_not_decide() -> None:
    counts: Counter[str] = Counter()
    unparseable = {"correct": False, "reason": "unparseable verdict: 'hmm'", "audit": True}
    error = {"correct": False, "reason": "error: missing field(s) gold"}
    audited_ok = {"correct": True, "reason": "llm judge: correct", "audit": True}
    list(select_all([row(["a"], [unparseable]), row(["b"], [error], "4", audited_ok)], "s3ft", counts))
    judge = stats("s3ft", counts)["judge"]
    assert judge == {"verdicts": 3, "errors": 1, "unparseable": 1, "audit": {"rows": 2, "agreement": 0.5}}


def test_a_correct_paraphrase_that_leaks_its_prompt_is_refused_and_counted() -> None:
    from s3ft.config import ParaphraseConfig
    from s3ft.data.leaks import leak_check

    leak = leak_check("gsm8k", ParaphraseConfig())
    leaky = row(["5"], [BAD], "As the reference solution shows, it is 4", OK)
    clean = row(["5"], [BAD], "it is 4", OK)
    (merged,) = select_row(leaky, "s3ft", leak)
    assert (merged["source"], merged["target"], merged["paraphrase_leak"]) == ("gold", "#### 4", "the reference")
    assert merged["paraphrase_correct"] is True  # the judge passed it; the leak check did not
    assert merged["judge_reason"].endswith("paraphrase: match: 4, but leaks its prompt ('the reference')")
    assert select_row(leaky, "s3ft")[0]["source"] == "paraphrase"  # no check: the judge alone decides
    counts: Counter[str] = Counter()
    merged_rows = list(select_all([leaky, clean, row(["4"], [OK]), leaky], "s3ft", counts, leak))
    summary = stats("s3ft", counts)
    assert [m["source"] for m in merged_rows] == ["gold", "paraphrase", "self", "gold"]
    assert (summary["paraphrase_leaked"], summary["paraphrase"], summary["gold"]) == (2, 1, 2)


def test_words_of_the_training_prompt_are_no_leak() -> None:
    from s3ft.config import ParaphraseConfig
    from s3ft.data.leaks import leak_check

    example = row(["5"], [BAD], "Your task: add them. It is 4", OK)
    leak = leak_check("gsm8k", ParaphraseConfig())
    assert select_row(example, "s3ft", leak)[0]["source"] == "gold"
    example["messages"] = [{"role": "user", "content": "Your task: what is 2+2?"}]
    assert select_row(example, "s3ft", leak)[0]["source"] == "paraphrase"
