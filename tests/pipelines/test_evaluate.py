"""``icg evaluate`` end to end on a tiny bootstrapped world: metrics.json, samples, the gate, ablations, real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from icg_core import layout
from icg_core.config import load_config
from icg_core.evaluation.promotion import promotions
from icg_core.models.checkpoint import resolve_version
from icg_core.runtime import torch_threads
from icg_core.stages.finetune import run_finetune
from icg_core.stages.generate import generate_covers
from icg_core.storage import ObjectStore
from pipelines.cli import app
from pipelines.runtime import StageFailed
from tests.tiny import prepare_tiny_day, write_tiny_config

M_KEYS = {
    "aesthetic", "aesthetic_heldout", "relevance", "category_top1", "preference", "oracle_ctr", "diversity",
    "aesthetic_ci", "aesthetic_heldout_ci", "relevance_ci", "category_top1_ci", "preference_ci", "oracle_ctr_ci",
    "diversity_ci", "oracle_ctr_by_segment", "preference_by_segment", "seconds_per_cover", "n_covers",
    "generator_version", "source", "fallback_rate",
}  # fmt: skip


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(app, [*args, "--json"], env=env)


@pytest.fixture
def tiny_day(tmp_path: Path) -> tuple[ObjectStore, Path, str]:
    """A tiny world through users, rewards, finetune and generate: (store, config file, ds)."""
    config = write_tiny_config(
        tmp_path / "tiny.yaml", evaluate={"bootstrap_samples": 200, "timing_covers": 2, "sheet_items": 2}
    )
    cfg = load_config(config, root=str(tmp_path / "root"), environ={})
    store = ObjectStore(cfg.storage.root)
    ds = prepare_tiny_day(store, cfg)
    with torch_threads(1):
        assert run_finetune(store, cfg, ds).promoted  # the first fine-tune replaces the untuned champion
        generate_covers(store, cfg, ds)
        # Tonight's challenger: another recipe (preference weighted 2, not 4) from the same stage-1 model.
        weights = cfg.rewards.weights.model_copy(update={"preference": 2.0})
        other = cfg.model_copy(update={"rewards": cfg.rewards.model_copy(update={"weights": weights})})
        assert not run_finetune(store, other, ds).promoted
    return store, config, ds


def _check_promotion(store: ObjectStore, metrics: dict, champion: str, challenger: str) -> None:
    """The decision is recorded, and production moved exactly when it says it was promoted."""
    decision = metrics["promotion"]
    assert (decision["champion"], decision["challenger"], decision["metric"]) == (
        champion,
        challenger,
        "oracle_ctr",
    )
    uplift = metrics["variants"]["challenger"]["uplift_vs_icg"]
    assert decision["uplift_ci"] == uplift["oracle_ctr_ci"]
    assert decision["promoted"] == (uplift["oracle_ctr_ci"][0] > 0 and uplift["relevance"] >= -0.1)
    assert resolve_version(store, "icg_generator") == (challenger if decision["promoted"] else champion)
    events = promotions(store, "icg_generator")  # the first: the fine-tune that replaced stage 1 at once
    assert (
        events[0]["reason"].startswith("first fine-tuned generator") and events[0]["challenger"] == champion
    )
    assert [e["challenger"] for e in events[1:]] == ([challenger] if decision["promoted"] else [])


@pytest.mark.slow
def test_evaluate_writes_metrics_gates_ablations_and_nulls_without_oracle(tiny_day) -> None:
    store, config, ds = tiny_day
    common = ["--root", store.root, "--config", str(config), "--ds", ds]
    production = resolve_version(store, "icg_generator")  # the champion, which drew the covers
    challenger = layout.challenger(store, "icg_generator")
    assert challenger is not None and challenger["ds"] == ds and challenger["version"] != production

    result = invoke("evaluate", *common)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["gate"]["passed"]
    metrics = store.get_json(f"reports/ds={ds}/metrics.json")
    assert set(metrics) >= {
        "ds",
        "variants",
        "preference_model",
        "segments",
        "downstream",
        "run",
        "samples",
        "gate",
        "finetune_curve",
    }
    assert set(metrics["variants"]) == {
        "reference",
        "selection",
        "base",
        "icg",
        "icg_unguided",
        "challenger",
        "oracle_best",
    }
    _check_promotion(store, metrics, production, challenger["version"])
    icg = metrics["variants"]["icg"]
    assert M_KEYS <= set(icg) and icg["source"] == "staged" and icg["generator_version"] == production
    assert 0.0 <= icg["fallback_rate"] <= 1.0 and metrics["variants"]["icg_unguided"]["fallback_rate"] == 0.0
    ceiling = metrics["variants"]["oracle_best"]
    assert ceiling["oracle_ctr"] >= max(
        v["oracle_ctr"] for n, v in metrics["variants"].items() if n != "oracle_best"
    )
    # Fine-tuning curve: step 0 (the base) and every stage-2 snapshot (checkpoint_every=1, 2 steps).
    assert [p["step"] for p in metrics["finetune_curve"]] == [0, 1, 2]
    assert all(p["preference"] is not None and p["oracle_ctr"] is not None for p in metrics["finetune_curve"])
    assert (
        icg["oracle_ctr"] is not None
        and icg["oracle_ctr_ci"][0] <= icg["oracle_ctr"] <= icg["oracle_ctr_ci"][1]
    )
    assert set(icg["uplift_vs_reference"]) >= {"oracle_ctr", "oracle_ctr_ci"} and "uplift_vs_base" in icg
    assert metrics["variants"]["reference"]["diversity"] == 0.0
    n_items = metrics["run"]["items"]
    assert icg["n_covers"] == n_items * 2 and metrics["variants"]["reference"]["n_covers"] == n_items
    assert set(metrics["preference_model"]) >= {"auc", "oracle_auc", "log_loss", "roc"}
    assert 0 < len(metrics["preference_model"]["roc"]["fpr"]) <= 200
    segments = metrics["segments"]
    assert (
        segments["k"] == 2
        and sum(segments["sizes"].values()) == 40
        and segments["ari_vs_taste_groups"] is not None
    )
    downstream = metrics["downstream"]
    assert 0 <= downstream["auc_without_covers"] <= 1 and 0 <= downstream["auc_with_covers"] <= 1
    assert metrics["run"]["model_versions"]["generator"] == production
    assert metrics["run"]["data_interval"]["end"] == ds
    assert set(metrics["run"]["stage_seconds"]) == {"finetune", "finetune_challenger", "evaluate"}
    samples = metrics["samples"]
    assert len(samples) == 2 * (1 + 2 * 4)  # sheet items x (reference + 4 variants per segment)
    assert all(store.exists(s["image_key"]) for s in samples)
    assert {s["segment_id"] for s in samples if s["variant"] == "reference"} == {None}

    # The knob that forces the gate to fail: any relevance is "too far" below the references' at -1000%.
    forced = invoke("evaluate", *common, env={"ICG__EVALUATE__MAX_RELEVANCE_DROP_VS_REFERENCE": "-10"})
    assert isinstance(forced.exception, StageFailed) and "relevance" in str(forced.exception)
    assert store.get_json(f"reports/ds={ds}/metrics.json")["gate"]["passed"] is False

    champion = resolve_version(store, "icg_generator")  # after the first run's decision
    ablated = invoke("evaluate", *common, "--ablations")
    assert ablated.exit_code == 0, ablated.output
    metrics = store.get_json(f"reports/ds={ds}/metrics.json")
    assert {"icg_no_preference", "icg_no_aesthetic"} <= set(metrics["variants"])
    versions = metrics["run"]["model_versions"]
    assert versions["generator_icg_no_preference"].startswith("s2-a0.25-r0.5-p0-")
    assert versions["generator_icg_no_aesthetic"].startswith("s2-a0-r0.5-p4-")
    assert resolve_version(store, "icg_generator") == champion  # ablations never move production
    assert resolve_version(store, "icg_generator-no_preference") == versions["generator_icg_no_preference"]
    assert "finetune_icg_no_aesthetic" in metrics["run"]["stage_seconds"]

    store.delete("oracle/world.json")  # a root without an oracle: real data
    real = invoke("evaluate", *common)
    assert real.exit_code == 0, real.output
    metrics = store.get_json(f"reports/ds={ds}/metrics.json")
    icg = metrics["variants"]["icg"]
    assert icg["oracle_ctr"] is None and icg["oracle_ctr_ci"] is None and icg["category_top1"] is None
    assert icg["relevance"] is not None and icg["uplift_vs_base"]["oracle_ctr"] is None
    assert (
        metrics["preference_model"]["oracle_auc"] is None
        and metrics["segments"]["ari_vs_taste_groups"] is None
    )
    assert metrics["downstream"]["judged_by"] == "held-out logged clicks"
    assert "icg_no_preference" in metrics["variants"]  # kept from the ablation run of the same ds


@pytest.mark.slow
def test_a_broken_generator_is_refused_and_never_wins(tiny_day, monkeypatch) -> None:
    """Covers that lose their item (every one flat grey): the gate refuses them, the verdict claims nothing,
    and with the item guard on, the references that stand in are refused as well."""
    import numpy as np

    from icg_core.models.generator import CoverGenerator

    store, config, ds = tiny_day

    def flat(self: CoverGenerator, latents) -> np.ndarray:
        return np.full((len(latents), self.image_size, self.image_size, 3), 127, np.uint8)

    monkeypatch.setattr(CoverGenerator, "decode", flat)
    common = ("--root", store.root, "--ds", ds, "--config", str(config))
    gate_on = {"ICG__EVALUATE__MIN_ITEM_RECALL_RATIO": "0.9", "ICG__EVALUATE__MAX_REFERENCE_SHARE": "0.5"}
    for guard, failing in (("0", "item_recall_vs_reference"), ("1", "reference_share")):
        env = gate_on | {"ICG__GUIDANCE__ITEM_RANK": guard}
        with torch_threads(1):
            generate_covers(store, load_config(config, root=store.root, environ=env), ds, force=True)
        result = invoke("evaluate", *common, env=env)
        assert isinstance(result.exception, StageFailed), result.output
        metrics = store.get_json(f"reports/ds={ds}/metrics.json")
        assert metrics["gate"]["passed"] is False
        assert failing in [c["name"] for c in metrics["gate"]["checks"] if not c["passed"]]
        assert metrics["verdict"]["outcome"] != "wins"
