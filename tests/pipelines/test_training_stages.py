"""``train-users``, ``train-rewards`` and ``finetune`` end to end on a tiny world, with their gates."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icg_core import layout
from icg_core.config import load_config
from icg_core.models.checkpoint import resolve_version
from icg_core.stages.bootstrap import bootstrap
from icg_core.stages.extract import extract_day
from icg_core.stages.validate import validate_day
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from pipelines.cli import app
from pipelines.runtime import StageFailed
from tests.tiny import write_tiny_config


def invoke(*args: str):
    return CliRunner().invoke(app, [*args, "--json"])


@pytest.fixture
def tiny_world(tmp_path: Path) -> tuple[Path, Path, str]:
    """A validated, bootstrapped tiny world: (root, config file, ds)."""
    config = write_tiny_config(tmp_path / "tiny.yaml")
    root = tmp_path / "root"
    cfg = load_config(config, root=str(root), environ={})
    store = ObjectStore(str(root))
    ds = generate_world(store, cfg.world).first_nightly_ds
    extract_day(store, ds, cfg.extract)
    assert validate_day(store, ds, cfg).success
    assert bootstrap(store, cfg, ds=ds).complete
    return root, config, ds


@pytest.mark.slow
def test_users_rewards_finetune_end_to_end_and_gates(tiny_world, tmp_path) -> None:
    root, config, ds = tiny_world
    common = ["--root", str(root), "--config", str(config), "--ds", ds]
    store = ObjectStore(str(root))
    stage1 = resolve_version(store, "icg_generator")

    users = invoke("train-users", *common)
    assert users.exit_code == 0, users.output
    assert json.loads(users.stdout)["n_segments"] == 2

    strict = write_tiny_config(tmp_path / "strict.yaml", rewards={"preference": {"auc_floor": 1.01}})
    refused = invoke("train-rewards", "--root", str(root), "--config", str(strict), "--ds", ds)
    assert isinstance(refused.exception, StageFailed) and "below the floor" in str(refused.exception)

    rewards = invoke("train-rewards", *common)
    assert rewards.exit_code == 0, rewards.output
    assert set(json.loads(rewards.stdout)) >= {"aesthetic", "relevance", "preference"}

    # Any relevance change at all trips a guard set below -100%: the run fails, latest stays at stage 1.
    rigged = write_tiny_config(tmp_path / "rigged.yaml", finetune={"max_relevance_drop": -10.0})
    failed = invoke("finetune", "--root", str(root), "--config", str(rigged), "--ds", ds)
    assert isinstance(failed.exception, StageFailed) and "held-out relevance" in str(failed.exception)
    assert resolve_version(store, "icg_generator") == stage1

    tuned = invoke("finetune", *common)
    assert tuned.exit_code == 0, tuned.output
    summary = json.loads(tuned.stdout)
    assert summary["challenger"] and summary["base_version"] == stage1
    assert summary["generator_version"].startswith("s2-a0.25-r0.5-p4-")
    # The first fine-tune replaces the untuned stage-1 champion at once; later ones wait for evaluate.
    assert summary["promoted"] and resolve_version(store, "icg_generator") == summary["generator_version"]
    assert layout.challenger(store, "icg_generator")["version"] == summary["generator_version"]
    assert len(summary["result"]["guard"]) == 3 and store.exists(store.key(summary["report"]))

    # The ablation is its own version, still fine-tuned from the stage-1 generator.
    ablation = write_tiny_config(tmp_path / "no_pref.yaml", rewards={"weights": {"preference": 0.0}})
    again = invoke("finetune", "--root", str(root), "--config", str(ablation), "--ds", ds)
    assert again.exit_code == 0, again.output
    ablated = json.loads(again.stdout)
    assert ablated["generator_version"].startswith("s2-a0.25-r0.5-p0-") and ablated["base_version"] == stage1
    assert ablated["challenger"] and not ablated["promoted"]  # a tuned champion is only replaced by evaluate
    assert resolve_version(store, "icg_generator") == summary["generator_version"]
