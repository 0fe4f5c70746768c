"""Ports picked for later binding come from where neither the kernel nor Ray hands out ports by chance."""

from __future__ import annotations

import socket

from s3ft.runtime import ports


def test_ports_lie_between_rays_worker_ports_and_the_kernels_ephemeral_range() -> None:
    low = ports.ephemeral_start()
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as client:
        assert client.getsockname()[1] >= low  # where outgoing connections take their local ports
    picked = [ports.free_port() for _ in range(100)]
    assert all(ports.RAY_WORKER_PORTS_END <= p < low for p in picked), picked
    assert len(set(picked)) == len(picked)  # a port handed out and not yet bound is not handed out again


def test_a_picked_port_can_be_listened_on_at_every_address() -> None:
    with socket.create_server(("0.0.0.0", ports.free_port())) as server:
        assert server.getsockname()[0] == "0.0.0.0"


def test_a_port_taken_on_any_address_is_passed_over(monkeypatch) -> None:
    with socket.create_server(("127.0.0.2", 0)) as taken:
        port = taken.getsockname()[1]
        monkeypatch.setattr(ports, "ephemeral_start", lambda: port + 1)
        monkeypatch.setattr(ports, "RAY_WORKER_PORTS_END", port)
        assert ports.free_port() != port  # the quiet range holds only the taken port: the kernel picks one


def test_without_a_quiet_range_the_kernel_picks(monkeypatch) -> None:
    low = ports.ephemeral_start()
    monkeypatch.setattr(ports, "ephemeral_start", lambda: ports.RAY_WORKER_PORTS_END)
    assert ports.free_port() >= low


def test_processes_seeded_alike_draw_different_ports(monkeypatch) -> None:
    """Training seeds Python's `random`: two runs started alike must not race for the same ports."""
    import random

    draws = []
    for _ in range(2):
        monkeypatch.setattr(ports, "_handed_out", set())  # as in a fresh process
        random.seed(0)
        draws.append([ports.free_port() for _ in range(5)])
    assert draws[0] != draws[1]
