"""The multi-node tests share one rig (tests/multinode/__init__.py), stopped once they are done: idle, its
three Ray nodes would take a tenth of two cores from every later test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest


@pytest.fixture(scope="package")
def multinode_rig() -> Iterator[object]:
    """One multi-node Ray cluster for the multi-node tests, stopped after the last of them: a head
    without CPUs on 127.0.0.2 and two 1-CPU worker nodes on 127.0.0.3 and 127.0.0.4; s3ft-node2
    sees a private directory of its own at `rig.nodes["s3ft-node2"].private_dirs[0]` (not shared storage)."""
    import shutil
    import tempfile

    from tests.multinode import missing_requirements, multinode_cluster

    if reason := missing_requirements():
        pytest.skip(reason)
    private = tempfile.mkdtemp(prefix="s3ft-unshared-")
    try:
        with multinode_cluster(worker_cpus=(1, 1), head_cpus=0, private_dirs={"s3ft-node2": [private]}) as rig:
            yield rig
    finally:
        shutil.rmtree(private, ignore_errors=True)
