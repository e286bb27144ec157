"""Training tests run single-threaded: tiny models are many small ops, and on a shared CPU torch's
thread synchronization costs more than the ops (see ``icg_core.stages.bootstrap.torch_threads``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from icg_core.runtime import torch_threads


@pytest.fixture(autouse=True, scope="package")
def single_thread() -> Iterator[None]:
    with torch_threads(1):
        yield
