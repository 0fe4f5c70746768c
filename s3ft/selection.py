"""Selection: pick each example's training target and say where it came from.

sft   gold for every example.
ssr   the model's own response where judged correct, else gold (Selective Self-Rehearsal).
s3ft  own response, else the model's judged-correct paraphrase of the gold, else gold.
rft   every distinct correct sample as its own row (`ID#k`), else gold (Rejection-sampling FT).

Rows from the judge stage carry `responses` (list) and `verdicts` (one {correct, reason} each);
the paraphrase stage adds `paraphrase` and `paraphrase_verdict`. A paraphrase the judge passed is
still refused when the leak check finds it speaking of its prompt (`s3ft.data.leaks`); such rows
train on gold and are counted as `paraphrase_leaked`.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

SOURCES = ("self", "paraphrase", "gold")
LeakCheck = Callable[[str, str], "str | None"]  # (paraphrase, training prompt) -> the leaking phrase, or None


def _merged(row: dict[str, Any], *, target: str, source: str, reason: str, **fields: Any) -> dict[str, Any]:
    base = {
        "id": row["id"],
        "messages": row["messages"],
        "gold": row["gold"],
        "response": None,
        "response_correct": None,
        "paraphrase": row.get("paraphrase"),
        "paraphrase_correct": (row.get("paraphrase_verdict") or {}).get("correct"),
        "paraphrase_leak": None,
        "target": target,
        "source": source,
        "judge_reason": reason,
    }
    return base | fields


def needs_paraphrase(row: dict[str, Any]) -> bool:
    return not any(v["correct"] for v in row["verdicts"])


def select_row(row: dict[str, Any], strategy: str, leak: LeakCheck | None = None) -> list[dict[str, Any]]:
    if strategy == "sft":
        return [_merged(row, target=row["gold"], source="gold", reason="sft: gold by construction")]
    if strategy == "rft":
        return _select_rft(row)
    response, verdict = row["responses"][0], row["verdicts"][0]
    own = {"response": response, "response_correct": verdict["correct"]}
    if verdict["correct"]:
        return [_merged(row, target=response, source="self", reason=verdict["reason"], **own)]
    para = row.get("paraphrase_verdict")
    usable = strategy == "s3ft" and para is not None and para["correct"]
    leaked = leak(row["paraphrase"], _prompt_text(row)) if usable and leak else None
    if usable and leaked is None:
        return [_merged(row, target=row["paraphrase"], source="paraphrase", reason=para["reason"], **own)]
    reason = f"response: {verdict['reason']}" + (f"; paraphrase: {para['reason']}" if para else "")
    if leaked is not None:
        reason += f", but leaks its prompt ({leaked!r})"
    return [_merged(row, target=row["gold"], source="gold", reason=reason, paraphrase_leak=leaked, **own)]


def _prompt_text(row: dict[str, Any]) -> str:
    """What the model reads at training time: a phrase from it is no leak."""
    messages = row["messages"]
    return messages if isinstance(messages, str) else "\n".join(str(m.get("content", "")) for m in messages)


def _select_rft(row: dict[str, Any]) -> list[dict[str, Any]]:
    kept: list[dict[str, Any]] = []
    seen: set[str] = set()
    for k, (response, verdict) in enumerate(zip(row["responses"], row["verdicts"], strict=True)):
        if verdict["correct"] and response.strip() not in seen:
            seen.add(response.strip())
            kept.append(
                _merged(row, target=response, source="self", reason=verdict["reason"], response=response,
                        response_correct=True) | {"id": f"{row['id']}#{k}"}
            )
    if kept:
        return kept
    reasons = "; ".join(sorted({v["reason"] for v in row["verdicts"]}))
    return [_merged(row, target=row["gold"], source="gold", reason=f"no correct sample: {reasons}",
                    response=row["responses"][0], response_correct=False)]


def select_all(
    rows: Iterable[dict[str, Any]], strategy: str, counts: Counter[str], leak: LeakCheck | None = None
) -> Iterator[dict[str, Any]]:
    """Stream merged rows, counting sources (and what the judge could not decide, and leaked
    paraphrases) into `counts`."""
    for row in rows:
        counts["examples"] += 1
        _count_verdicts(row, counts)
        for merged in select_row(row, strategy, leak):
            counts[merged["source"]] += 1
            counts["paraphrase_leaked"] += merged["paraphrase_leak"] is not None
            yield merged


def _count_verdicts(row: dict[str, Any], counts: Counter[str]) -> None:
    verdicts = [*row.get("verdicts", []), *([row["paraphrase_verdict"]] if row.get("paraphrase_verdict") else [])]
    for verdict in verdicts:
        count_verdict(verdict, counts)


def count_verdict(verdict: dict[str, Any], counts: Counter[str]) -> None:
    """Count one verdict dict into what `judge_stats` reports (also `s3ft judge`'s summary)."""
    counts["verdicts"] += 1
    counts["judge_errors"] += verdict["reason"].startswith("error")
    counts["unparseable"] += verdict["reason"].startswith("unparseable")
    if "audit" in verdict:
        counts["audited"] += 1
        counts["audit_agree"] += verdict["audit"] == verdict["correct"]


def judge_stats(counts: Counter[str]) -> dict[str, Any]:
    """Verdicts, errors, unparseable LLM verdicts and, where audited, agreement with the rule judge."""
    out: dict[str, Any] = {"verdicts": counts["verdicts"], "errors": counts["judge_errors"], "unparseable": counts["unparseable"]}
    if counts["audited"]:
        out["audit"] = {"rows": counts["audited"], "agreement": round(counts["audit_agree"] / counts["audited"], 4)}
    return out


def stats(strategy: str, counts: Counter[str], **extra: Any) -> dict[str, Any]:
    total = sum(counts[s] for s in SOURCES)
    return {
        "strategy": strategy,
        "total": total,
        "examples": counts["examples"],
        **{s: counts[s] for s in SOURCES},
        "share": {s: round(counts[s] / total, 4) if total else 0.0 for s in SOURCES},
        "paraphrase_leaked": counts["paraphrase_leaked"],
        "judge": judge_stats(counts),
        **extra,
    }
