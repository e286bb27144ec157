"""How a process runs the models: torch threads and memory, shared by every stage and worker."""

from __future__ import annotations

import resource
from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def torch_threads(count: int | None) -> Iterator[None]:
    """Run with ``count`` torch intra-op threads (None = unchanged), restoring the previous count.

    The tiny embedded models are thousands of small ops: with several threads each op pays a thread
    synchronization, which on a machine shared with other processes can cost more than the op itself.
    """
    previous = torch.get_num_threads()
    if count:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def peak_rss_mb() -> float:
    """Peak resident memory of this process, MiB (Linux ru_maxrss is KiB)."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
