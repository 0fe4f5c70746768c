"""Ports chosen now for a process that binds them later (a rendezvous, a test's Ray head or dashboard).

A port found by binding port 0 comes from the kernel's ephemeral range, the very range from which the
kernel hands local ports to outgoing connections and Ray picks its own (`Node._get_unused_port`):
in the gap before our process binds it, any of those may take it ("address already in use"). So the
port is drawn from below that range and above Ray's worker ports, where nothing is assigned at random."""

from __future__ import annotations

import random
import socket
from pathlib import Path

RAY_WORKER_PORTS_END = 20000  # `ray start --max-worker-port` defaults to 19999
LINUX_EPHEMERAL_START = 32768  # net.ipv4.ip_local_port_range's default low end
TRIES = 200
_RANDOM = random.SystemRandom()  # not the seeded global one: runs seeded alike would draw the same ports

_handed_out: set[int] = set()  # free until their user binds them, so not to be handed out twice


def free_port(host: str = "") -> int:
    """A TCP port nothing listens on or is bound to at `host` ("" = every address), from the quiet range
    when the machine has one; else one the kernel picks."""
    quiet = range(RAY_WORKER_PORTS_END, ephemeral_start())
    for port in _RANDOM.sample(quiet, k=min(TRIES, len(quiet))):
        if port not in _handed_out and _bindable(host, port):
            _handed_out.add(port)
            return port
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ephemeral_start() -> int:
    """The low end of the kernel's ephemeral ports; Linux's default where it cannot be read."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return LINUX_EPHEMERAL_START


def _bindable(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True
