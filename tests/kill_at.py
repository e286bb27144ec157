"""Run a stage's entry point and SIGKILL it at a commit point: a crash no ``finally`` can clean up after.

    python -m tests.kill_at KEY_REGEX before|after MODULE [ARGS...]

Kills the process just before (or just after) the first object write whose key matches ``KEY_REGEX``;
otherwise runs ``python -m MODULE ARGS...`` unchanged. Test-only: the fault suite uses it to stop a
stage between the writes of a commit (tests/pipelines/test_faults.py).
"""

from __future__ import annotations

import os
import re
import runpy
import signal
import sys
from typing import Any

from icg_core.storage import ObjectStore


def main() -> None:
    pattern, when, module, *args = sys.argv[1:]
    if when not in ("before", "after"):
        raise SystemExit(f"when must be 'before' or 'after', got {when!r}")
    write = ObjectStore.put_bytes

    def put_bytes(self: ObjectStore, key: str, data: bytes) -> Any:
        hit = re.search(pattern, key) is not None
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        written = write(self, key, data)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)
        return written

    ObjectStore.put_bytes = put_bytes  # type: ignore[method-assign]
    sys.argv = [module, *args]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
