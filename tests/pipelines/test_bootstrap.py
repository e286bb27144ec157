"""`icg bootstrap` and `icg generate-sample`: end to end on a tiny world, resume, reuse, contact sheet."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from icg_core.config import load_config
from icg_core.stages.extract import extract_day
from icg_core.stages.validate import validate_day
from icg_core.storage import ObjectStore
from icg_core.world.simulator import generate_world
from pipelines.cli import app
from tests.tiny import write_tiny_config

# A bootstrap that trains every phase (VLM warm-up included) for a few steps.
BOOTSTRAP = {
    "world": {"n_items": 20, "n_users": 30, "days": 2, "impressions_per_day": 200},
    "models": {"sample_steps": 3},
    "stage1": {"steps": 4, "vlm_warmup_steps": 2, "vlm_warmup_batch_size": 4, "sheet_items": 4},
}


def invoke(*args: str) -> dict:
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.fixture
def tiny_world(tmp_path: Path) -> tuple[Path, Path]:
    """A validated tiny world: (root, config file)."""
    config = write_tiny_config(tmp_path / "tiny.yaml", **BOOTSTRAP)
    root = tmp_path / "root"
    cfg = load_config(config, root=str(root), environ={})
    store = ObjectStore(str(root))
    ds = generate_world(store, cfg.world).first_nightly_ds
    extract_day(store, ds, cfg.extract)
    assert validate_day(store, ds, cfg).success
    return root, config


@pytest.mark.slow
def test_bootstrap_resumes_then_reuses_and_draws_a_contact_sheet(tiny_world) -> None:
    root, config = tiny_world
    common = ["--root", str(root), "--config", str(config)]

    stopped = invoke("bootstrap", *common, "--stop-after", "2")
    assert not stopped["complete"] and stopped["stage1"]["steps"] == 2 and not stopped["contact_sheet"]

    done = invoke("bootstrap", *common)
    assert done["complete"] and done["stage1"]["resumed_from"] == 2 and done["stage1"]["steps"] == 4
    assert done["reused"] == ["vlm", "vae"]  # built by the stopped run
    assert done["items"]["held_out"] > 0 and done["items"]["train"] + done["items"]["held_out"] == 20
    assert done["features"]["items"] == 20 and done["features"]["computed"] == 20
    assert done["base"]["sd"]["name"] == "base-sd" and done["base"]["vlm"]["name"] == "base-vlm"
    store = ObjectStore(str(root))
    sheet = Image.open(io.BytesIO(store.read_object(done["contact_sheet"])))
    assert sheet.width > 4 * 32 and sheet.height > 32
    summary = store.get_json("reports/bootstrap/summary.json")
    assert summary["generator_version"] == done["generator_version"] and summary["stage1"]["curve"]
    assert store.get_json("models/icg_generator/_latest")["version"] == done["generator_version"]

    again = invoke("bootstrap", *common)
    assert again["generator_version"] == done["generator_version"]
    assert again["reused"] == ["vlm", "vae", "stage1"] and again["features"]["computed"] == 0

    sample = invoke("generate-sample", *common, "--items", "3")
    image = Image.open(io.BytesIO(store.read_object(sample["contact_sheet"])))
    assert image.width >= 3 * 32 * 3  # three tiles of reference + two samples


def test_commands_have_help_and_reject_a_bad_ds() -> None:
    runner = CliRunner()
    for command in ("bootstrap", "generate-sample"):
        result = runner.invoke(app, [command, "--help"])
        assert result.exit_code == 0 and "--root" in result.output
    result = runner.invoke(app, ["bootstrap", "--ds", "15-11-2026"])
    assert result.exit_code != 0 and "YYYY-MM-DD" in result.output
