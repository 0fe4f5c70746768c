"""A uid of its own for each running program, where the judge runs as root.

Two programs must never share a uid while either may still run: without a pid namespace the
runner ends a program by killing every process of its uid, `kill(-1)` from a program reaches every
process of its uid, and `RLIMIT_NPROC` counts per uid. So a uid is leased: the runner holds an
exclusive `flock` on the uid's lock file from before the jail starts until after the last kill, and
a uid whose lock another sandbox holds (in any process of this host) is skipped. Leases are
released by the kernel when their holder dies, so a crashed judge leaks none.

The uids come from `UID_BASE` up where the host maps them (root outside a user namespace); inside
a container whose user namespace maps only 0..65535 they come from the top of that range below
`nobody`, skipping every uid that names a user. `nobody` itself is never used: host daemons run as it.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import pwd
import random
from collections.abc import Iterator
from pathlib import Path

UID_BASE = 1_000_000_000
NOBODY = 65534
SLOTS = 4096  # far more programs than one host runs at once, so a uid is seldom reused soon
LEASES = Path("/run/s3ft-sandbox-uids")  # root's only: a sandboxed program can neither take nor remove a lease


def mapped_ranges() -> list[tuple[int, int]]:
    """The uids this process may switch to, as [start, end) ranges of its user namespace."""
    with open("/proc/self/uid_map") as f:
        return [(int(inner), int(inner) + int(count)) for inner, _, count in (line.split() for line in f)]


@functools.cache
def _named_uids() -> frozenset[int]:
    return frozenset(entry.pw_uid for entry in pwd.getpwall())


def candidates(ranges: list[tuple[int, int]]) -> list[int]:
    """The uids a sandbox may lease."""
    if any(start <= UID_BASE and UID_BASE + SLOTS <= end for start, end in ranges):
        return list(range(UID_BASE, UID_BASE + SLOTS))
    below = (uid for start, end in ranges for uid in range(max(start, NOBODY - 2 * SLOTS), min(end, NOBODY)))
    return sorted(set(below) - _named_uids(), reverse=True)[:SLOTS]


@contextlib.contextmanager
def lease_uid() -> Iterator[int | None]:
    """A uid no other running sandbox holds, for as long as the block runs; None when not root
    (the jail then drops privileges through a user namespace, or not at all).

    Raises OSError when every candidate is taken, or the host maps none.
    """
    if os.geteuid() != 0:
        yield None
        return
    LEASES.mkdir(mode=0o700, parents=True, exist_ok=True)
    uids = candidates(mapped_ranges())
    start = random.randrange(len(uids)) if uids else 0  # spread over the slots: a killed daemon's zombie
    for uid in uids[start:] + uids[:start]:  # still counts against its uid's RLIMIT_NPROC until reaped
        fd = os.open(LEASES / str(uid), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        try:
            yield uid
        finally:
            os.close(fd)
        return
    raise OSError("no sandbox uid is free: every candidate is leased, or this host maps none (docs/sandbox.md)")
