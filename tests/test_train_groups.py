"""train.collective_timeout_s reaches every process group: the world group and the ones DeepSpeed adds."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from s3ft.config.train import TrainConfig


@pytest.fixture
def one_rank_env(monkeypatch):
    from s3ft.runtime.ports import free_port

    for key, value in {"RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)


@pytest.mark.slow
def test_the_configured_timeout_reaches_every_process_group(one_rank_env):
    from deepspeed.utils import groups as ds_groups

    from s3ft.train import groups

    assert groups.start(use_gpu=False, timeout_s=1234)
    try:
        assert groups.timeouts() == [1234.0]  # the world group, as the gloo backend holds it
        ds_groups._clone_world_group()  # what ZeRO does in deepspeed.initialize: a group without a timeout
        assert sorted(groups.timeouts()) == [1234.0, 1800.0]  # torch's default for it: 30 minutes
        assert groups.apply_timeout(1234) == 2
        assert groups.timeouts() == [1234.0, 1234.0]
    finally:
        groups.stop()


def test_the_timeout_is_long_by_default():
    assert TrainConfig().collective_timeout_s >= 3600


STALE_LOCK_SCRIPT = """
import sys
from s3ft.train import groups
groups.start(use_gpu=False, timeout_s=60)
groups.stop()
print("joined")
"""


@pytest.mark.slow
def test_a_lock_left_by_a_killed_rank_does_not_hang_the_next_run(tmp_path, one_rank_env):
    """A rank SIGKILLed while torch's JIT loader held an op's lock file leaves it behind; a CPU rank joining
    the group must not wait on it (DeepSpeed's shm comm op, which training never uses, is not loaded)."""
    build = tmp_path / "deepspeed_shm_comm"  # where the loader builds the op under TORCH_EXTENSIONS_DIR
    build.mkdir()
    (build / "lock").touch()
    env = {**os.environ, "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, "-c", STALE_LOCK_SCRIPT], env=env, capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "joined" in proc.stdout
    assert sorted(p.name for p in build.iterdir()) == ["lock"]  # nothing was built either
