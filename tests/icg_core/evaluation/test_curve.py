"""The fine-tuning curve finds a generator's stage-2 snapshots by step, and only complete ones."""

from __future__ import annotations

from torch import nn

from icg_core.evaluation.curve import snapshot_steps
from icg_core.models.checkpoint import checkpoint_prefix, save_module_checkpoint
from icg_core.storage import ObjectStore
from icg_core.training.stage2 import SNAPSHOT_SUFFIX, snapshot_version


def test_snapshots_are_listed_by_step_for_one_generator_version(tmp_path) -> None:
    store = ObjectStore(str(tmp_path))
    name = "icg_generator" + SNAPSHOT_SUFFIX
    module = {"refiner": nn.Linear(2, 2)}
    for version, step in (("s2-a", 40), ("s2-a", 20), ("s2-a", 100), ("s2-b", 20)):
        save_module_checkpoint(
            store, name, snapshot_version(version, step), module, {"step": step}, set_latest=False
        )
    store.delete(f"{checkpoint_prefix(name, snapshot_version('s2-a', 100))}/_SUCCESS")  # an interrupted write
    assert snapshot_steps(store, "icg_generator", "s2-a") == [
        (20, "s2-a-step00020"),
        (40, "s2-a-step00040"),
    ]
    assert snapshot_steps(store, "icg_generator", "s2-c") == []
