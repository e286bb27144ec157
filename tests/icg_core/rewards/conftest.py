"""Reward tests train small torch models: one intra-op thread keeps them fast on a shared machine
(two threads spin against other processes' load) and their numbers identical run to run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_torch_thread() -> Iterator[None]:
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
