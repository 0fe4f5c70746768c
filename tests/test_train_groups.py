"""train.collective_timeout_s reaches every process group: the world group and the ones DeepSpeed adds."""

from __future__ import annotations

import pytest

from s3ft.config.train import TrainConfig


@pytest.fixture
def one_rank_env(monkeypatch):
    from s3ft.train.launch import free_port

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
