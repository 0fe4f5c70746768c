"""`s3ft data` end to end: real Ray, real vLLM (CPU build), a tiny model taught what to answer
(tests/engine_workspace.py), so every strategy has a known outcome."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from s3ft.config import load_config
from s3ft.pipeline.data_engine import run_data
from s3ft.runtime.shards import read_jsonl
from tests.engine_workspace import EXPECTED_S3FT, ROWS, config_file

pytestmark = pytest.mark.slow


def merged(out: Path) -> list[dict]:
    return read_jsonl(out / "data" / "merged.jsonl")


def check_invariants(rows: list[dict], stats: dict) -> None:
    assert stats["total"] == len(rows) == sum(stats[s] for s in ("self", "paraphrase", "gold"))
    assert len({r["id"] for r in rows}) == len(rows)
    for row in rows:
        if row["source"] == "self":
            assert row["target"] == row["response"] and row["response_correct"] is True
        elif row["source"] == "paraphrase":
            assert row["target"] == row["paraphrase"] and row["paraphrase_correct"] is True
            assert row["response_correct"] is False
        else:
            assert row["target"] == row["gold"]


@pytest.fixture(scope="module")
def clean_run(engine_workspace: Path, ray_session: None, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """An uninterrupted S3FT run with one row per shard (the kill test compares against it)."""
    out = tmp_path_factory.mktemp("clean") / "s3ft"
    return out, run_data(load_config(config_file(engine_workspace, out, generation__shard_size=1)))


def test_s3ft_picks_self_then_paraphrase_then_gold(clean_run: tuple[Path, dict]) -> None:
    out, stats = clean_run
    rows = merged(out)
    check_invariants(rows, stats)
    assert [r["source"] for r in rows] == EXPECTED_S3FT
    assert rows[0]["target"] == ROWS[0][2] and rows[2]["target"] == ROWS[2][3]
    assert rows[0]["messages"] == [{"role": "user", "content": "Q 12+7"}]
    assert "mismatch" in rows[4]["judge_reason"] and "paraphrase" in rows[4]["judge_reason"]
    assert json.loads((out / "data" / "stats.json").read_text()) == stats
    assert stats["share"] == {"self": 0.3333, "paraphrase": 0.3333, "gold": 0.3333}


@pytest.mark.parametrize("backend", ["hf"])
def test_ssr_sft_and_rft_strategies(engine_workspace: Path, ray_session: None, tmp_path: Path, backend: str) -> None:
    ssr = run_data(load_config(config_file(engine_workspace, tmp_path / "ssr", generation__backend=backend,
                                           selection__strategy="ssr")))
    assert [r["source"] for r in merged(tmp_path / "ssr")] == ["self", "self", "gold", "gold", "gold", "gold"]
    check_invariants(merged(tmp_path / "ssr"), ssr)

    sft = run_data(load_config(config_file(engine_workspace, tmp_path / "sft", selection__strategy="sft")))
    assert sft["gold"] == 6
    assert not list((tmp_path / "sft" / "stages").glob("generate-*"))  # sft never starts an engine
    check_invariants(merged(tmp_path / "sft"), sft)

    rft = run_data(load_config(config_file(engine_workspace, tmp_path / "rft", generation__backend=backend,
                                           selection__strategy="rft", selection__num_samples=3)))
    rows = merged(tmp_path / "rft")
    check_invariants(rows, rft)
    for row in rows:
        base, _, k = row["id"].partition("#")
        assert (row["source"] == "self") == bool(k)
        assert base in {f"q{i}" for i in range(1, 7)}
    assert {r["id"].split("#")[0] for r in rows} == {f"q{i}" for i in range(1, 7)}  # every example kept


def stage_dirs(out: Path) -> dict[str, set[str]]:
    dirs: dict[str, set[str]] = {}
    for path in (out / "stages").iterdir():
        dirs.setdefault(path.name.rsplit("-", 1)[0], set()).add(path.name)
    return dirs


def shard_times(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "stages").rglob("shard-*.jsonl")}


def untouched(shards: dict[Path, int]) -> bool:
    return all(path.stat().st_mtime_ns == mtime for path, mtime in shards.items())


def test_rerun_skips_finished_work_and_a_changed_setting_reruns_only_what_it_decides(
    engine_workspace: Path, ray_session: None, tmp_path: Path
) -> None:
    out = tmp_path / "again"
    config = load_config(config_file(engine_workspace, out, generation__backend="hf"))
    first = run_data(config)
    assert load_config(out / "config.yaml") == config  # the resolved config is saved in the run directory
    shards = shard_times(out)
    assert run_data(config) == first
    assert shard_times(out) == shards
    assert (first["paraphrase"], first["paraphrase_leaked"]) == (2, 0)

    # the leak check runs at selection: refusing the paraphrases ("It is 35. ...") judges nothing again
    leaky = run_data(load_config(config_file(engine_workspace, out, generation__backend="hf",
                                             paraphrase__extra_leak_phrases=["it is"])))
    assert (leaky["paraphrase"], leaky["gold"], leaky["paraphrase_leaked"]) == (0, first["gold"] + 2, 2)
    assert shard_times(out) == shards

    before = stage_dirs(out)
    run_data(load_config(config_file(engine_workspace, out, generation__backend="hf",
                                     paraphrase__template="Say again: {gold}")))
    after = stage_dirs(out)
    for stage in ("load", "generate", "judge"):  # the answers do not depend on the paraphrase prompt
        assert after[stage] == before[stage]
    for stage in ("paraphrase", "judge_paraphrase"):
        assert len(after[stage] - before[stage]) == 1
    assert untouched(shards)

    run_data(load_config(config_file(engine_workspace, out, generation__backend="hf", judge__kind="qa")))
    judged = stage_dirs(out)
    assert judged["generate"] == before["generate"] and len(judged["judge"] - after["judge"]) == 1
    assert untouched(shards)


def stores(out: Path) -> dict[str, tuple[dict, dict[str, list[dict]]]]:
    """Each stage's manifest (without its timings) and shards, by directory name."""
    found = {}
    for path in (out / "stages").iterdir():
        manifest = json.loads((path / "manifest.json").read_text())
        manifest.pop("seconds")
        found[path.name] = (manifest, {p.name: read_jsonl(p) for p in sorted(path.glob("shard-*.jsonl"))})
    return found


def test_streamed_and_staged_runs_write_the_same_rows_stores_and_manifests(
    engine_workspace: Path, clean_run: tuple[Path, dict], tmp_path: Path
) -> None:
    out = tmp_path / "staged"
    staged = run_data(load_config(config_file(engine_workspace, out, generation__shard_size=1,
                                              generation__stream=False)))
    assert staged == clean_run[1]
    assert merged(out) == merged(clean_run[0])
    assert stores(out) == stores(clean_run[0])
    assert len(stores(out)) == 5  # load, generate, judge, paraphrase, judge_paraphrase


def test_the_llm_judge_starts_its_engines_once_for_both_judging_steps(
    engine_workspace: Path, ray_session: None, tmp_path: Path
) -> None:
    """Streamed, both judging steps run at once; one judge serves them, so one pool of judge engines
    (a second would wait for GPUs the first holds on a cluster sized for one)."""
    from ray.util import placement_group_table

    before = set(placement_group_table())
    judge = {"model": {"path": str(engine_workspace / "model")},
             "generation": {"backend": "vllm", "max_tokens": 8, "enforce_eager": True}}
    stats = run_data(load_config(config_file(engine_workspace, tmp_path / "llm", judge__kind="llm", judge__llm=judge)))
    rows = merged(tmp_path / "llm")
    check_invariants(rows, stats)
    assert all("unparseable verdict" in r["judge_reason"] or "llm judge" in r["judge_reason"] for r in rows)
    assert all(r["paraphrase_correct"] is not None for r in rows if not r["response_correct"])  # judged again
    pools = {re.search(r"\(pool (\w+)\)", group["name"])[1]
             for key, group in placement_group_table().items() if key not in before and "s3ft engine" in group["name"]}
    assert len(pools) == 2  # the generator's and the judge's


def test_killed_mid_stream_leaves_no_process_and_resumes_without_redoing_shards(
    engine_workspace: Path, clean_run: tuple[Path, dict], tmp_path: Path
) -> None:
    """As a user did it (issue 12): `s3ft data` on a local Ray cluster of its own, SIGKILLed once the first
    shard is generated, then `ray stop --force`. No process of the run
    survives (vLLM's engine core and its workers included, which lived on reparented to init); the re-run
    keeps every shard on disk and matches a clean run, stores and manifests included."""
    import ray

    from tests.machine import machine
    from tests.multinode import missing_requirements

    if reason := missing_requirements():
        pytest.skip(reason)
    out = tmp_path / "killed"
    # One shard per engine at a time, so that the kill finds the stream half way.
    config = config_file(engine_workspace, out, generation__shard_size=1, generation__shards_in_flight=1)
    cmd = [sys.executable, "-m", "s3ft.cli", "data", str(config)]
    local = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    with machine() as host:
        proc = host.popen(cmd, env=local, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 300
        while not list(out.glob("stages/generate-*/shard-*.jsonl")):
            assert proc.poll() is None and time.time() < deadline, "s3ft data ended before generating a shard"
            time.sleep(0.05)
        assert host.processes("_EngineActor")  # the engine runs now
        # `ray stop --force` SIGKILLs the engine actor's process; when that lands before Ray has cleaned up
        # after the dead driver (the user's case, a matter of timing) nothing else stops the engine core.
        # Here the cluster is frozen first and the actor killed as `ray stop --force` kills it, so the
        # test does not depend on timing.
        for pid in host.pids("raylet", "gcs_server"):
            os.kill(pid, signal.SIGSTOP)
        driver = next(p for p in psutil.Process(proc.pid).children() if "s3ft.cli" in " ".join(p.cmdline()))
        driver.kill()
        proc.wait()
        for pid in host.pids("ray::_EngineActor"):
            os.kill(pid, signal.SIGKILL)
        killed = time.monotonic()
        kept = {p: p.stat().st_mtime_ns for p in out.glob("stages/*/shard-*.jsonl") if "load-" not in str(p)}
        host.popen([str(Path(sys.executable).parent / "ray"), "stop", "--force"], env=local,
                   stdout=subprocess.DEVNULL).wait(timeout=120)
        while (left := host.processes()) and time.monotonic() - killed < 60:
            time.sleep(0.5)
        print(f"killed run: every process gone {time.monotonic() - killed:.1f} s after the kill")
        assert left == [], "processes of the killed run survived `ray stop --force`:\n" + "\n".join(left)
    generated = [p for p in kept if "/generate-" in str(p)]
    assert 1 <= len(generated) < len(ROWS), "the kill came too late to test a resume"
    assert not list(out.glob("stages/generate-*/manifest.json"))

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address}
    subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=600)
    for path, mtime in kept.items():
        assert path.stat().st_mtime_ns == mtime, f"{path} was done again"
    assert merged(out) == merged(clean_run[0])
    resumed, clean = stores(out), stores(clean_run[0])
    assert resumed.keys() == clean.keys()
    for name, (manifest, shards) in resumed.items():
        assert shards == clean[name][1], name
        assert manifest | {"skipped_shards": 0} == clean[name][0] | {"skipped_shards": 0}, name


def test_the_smoke_config_runs_on_its_50_gsm8k_rows_and_builds_its_model(ray_session: None, tmp_path: Path) -> None:
    """`s3ft data configs/experiments/smoke.yaml` as a newcomer runs it, the tiny model built on first use."""
    import ray

    from tests.paths import REPO

    env = {**os.environ, "RAY_ADDRESS": ray.get_runtime_context().gcs_address, "COLUMNS": "120"}
    cmd = [sys.executable, "-m", "s3ft.cli", "data", "configs/experiments/smoke.yaml",
           "--set", f"output_dir={tmp_path / 'smoke'}", "--set", f"model.path={tmp_path / 'tiny-llama'}"]
    done = subprocess.run(cmd, check=False, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "tiny-llama" / "config.json").is_file()
    stats = json.loads((tmp_path / "smoke" / "data" / "stats.json").read_text())
    rows = merged(tmp_path / "smoke")
    check_invariants(rows, stats)
    assert stats["input_rows"] == stats["total"] == 50 and stats["rejected"] == 0
    assert [r["gold"] for r in rows] == [json.loads(line)["answer"] for line in
                                         (REPO / "configs/data/gsm8k_sample.jsonl").read_text().splitlines()]
    table = " ".join(done.stdout.split())  # rich wraps the title to the table's width
    assert "training targets by source (s3ft)" in table
    for source in ("self", "paraphrase", "gold"):
        assert f"│ {source} │ {stats[source]} │ {100 * stats['share'][source]:.1f}% │" in table
    assert "50 input rows: 50 examples, 0 rejected" in done.stdout
