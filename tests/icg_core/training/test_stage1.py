"""Stage 1: the loss goes down, a resumed run equals an uninterrupted one, runs are deterministic,
and the held-out split is stable and disjoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from icg_core import layout
from icg_core.config import ModelsConfig, Stage1Config
from icg_core.models.bundle import ICGBundle, build_bundle
from icg_core.models.checkpoint import checkpoint_exists
from icg_core.models.tiny import build_tiny_sd, build_tiny_vlm
from icg_core.storage import ObjectStore
from icg_core.training.data import is_held_out, split_items
from icg_core.training.stage1 import Stage1Trainer, make_stage1_data

TITLES = ["Red Rings", "Blue Stripes", "Green Checks", "Yellow Dots"]
SIZE = 32
MODELS = ModelsConfig(num_meta_tokens=4, user_dim=8, adapter_hidden_dim=32, adapter_layers=1)


def stage1_config(**overrides) -> Stage1Config:
    base = dict(steps=8, batch_size=8, lr=2e-3, unet_lr=2e-3, warmup_steps=2, checkpoint_every=3, log_every=2)
    return Stage1Config(**{**base, **overrides})


@pytest.fixture(scope="module")
def base_dirs(tmp_path_factory) -> dict[str, dict[str, str]]:
    root = tmp_path_factory.mktemp("base")
    vlm = build_tiny_vlm(root / "vlm", "llava", TITLES, hidden_size=32, image_size=16)
    sd = build_tiny_sd(
        root / "sd", "sd15", sample_size=SIZE, cross_attention_dim=16, block_out_channels=(16, 32)
    )
    return {"vlm": {"path": str(vlm)}, "sd": {"path": str(sd)}}


def covers() -> tuple[np.ndarray, np.ndarray]:
    """Two covers per item: a flat colour per item, plus a darker variant."""
    colours = np.array([[220, 40, 40], [40, 40, 220], [40, 200, 40], [230, 220, 40]], dtype=np.uint8)
    references = np.broadcast_to(colours[:, None, None, :], (4, SIZE, SIZE, 3)).copy()
    variants = (references * 0.6).astype(np.uint8)
    return references, np.concatenate([references, variants])


def fresh(base_dirs, seed: int = 0) -> ICGBundle:
    return build_bundle(
        ObjectStore("/nonexistent-unused"), {k: dict(v) for k, v in base_dirs.items()}, MODELS, seed=seed
    )


def trainer_for(base_dirs, cfg: Stage1Config, store: ObjectStore | None = None) -> Stage1Trainer:
    bundle = fresh(base_dirs, seed=cfg.seed)
    references, images = covers()
    data = make_stage1_data(bundle, TITLES, references, images, np.tile(np.arange(4), 2))
    return Stage1Trainer(bundle, data, cfg, store=store, version="test")


def trained_weights(trainer: Stage1Trainer) -> dict[str, torch.Tensor]:
    weights = {f"meta.{k}": v for k, v in trainer.bundle.encoder.trainable_state_dict().items()}
    for name, module in (
        ("refiner", trainer.bundle.refiner),
        ("adapter", trainer.bundle.adapter),
        ("unet", trainer.unet),
    ):
        weights.update({f"{name}.{k}": v.detach().clone() for k, v in module.state_dict().items()})
    return weights


def fixed_loss(trainer: Stage1Trainer, seed: int = 123) -> float:
    """The loss on one fixed batch and fixed noise (the trainer's own generator is left untouched)."""
    saved = trainer.generator.get_state()
    trainer.generator.manual_seed(seed)
    with torch.no_grad():
        losses = [trainer.loss(torch.arange(len(trainer.data))).item() for _ in range(4)]
    trainer.generator.set_state(saved)
    return float(np.mean(losses))


def test_loss_decreases(base_dirs) -> None:
    trainer = trainer_for(
        base_dirs, stage1_config(steps=40, checkpoint_every=100, log_every=10, cond_dropout=0.0)
    )
    before = fixed_loss(trainer)
    result = trainer.run()
    after = fixed_loss(trainer)
    assert result.complete and result.steps == 40 and len(result.curve) == 4
    assert after < 0.7 * before, (before, after)


def test_resumed_run_equals_uninterrupted_run(base_dirs, tmp_path) -> None:
    cfg = stage1_config()
    straight = trainer_for(base_dirs, cfg)
    straight.run()

    store = ObjectStore(str(tmp_path))
    first_half = trainer_for(base_dirs, cfg, store)
    stopped = first_half.run(stop_after=4)
    assert not stopped.complete and stopped.steps == 4
    assert checkpoint_exists(store, "icg_generator-stage1-state", "test")
    assert layout.latest_version(store, "icg_generator-stage1-state") is None  # states never become "latest"

    second_half = trainer_for(base_dirs, cfg, store)  # a new process: fresh modules, state from the store
    resumed = second_half.run()
    assert resumed.resumed_from == 4 and resumed.complete
    expected, actual = trained_weights(straight), trained_weights(second_half)
    assert expected.keys() == actual.keys()
    for name in expected:
        torch.testing.assert_close(actual[name], expected[name], rtol=1e-5, atol=1e-6, msg=name)
    assert [p["loss"] for p in resumed.curve] == pytest.approx([p["loss"] for p in straight.curve], rel=1e-4)


def test_same_seed_same_weights_other_seed_other_weights(base_dirs) -> None:
    cfg = stage1_config(steps=3)
    runs = [trainer_for(base_dirs, cfg) for _ in range(2)] + [
        trainer_for(base_dirs, stage1_config(steps=3, seed=1))
    ]
    weights = []
    for trainer in runs:
        trainer.run()
        weights.append(trained_weights(trainer))
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])
    assert not all(torch.equal(weights[0][k], weights[2][k]) for k in weights[0])


def test_frozen_unet_is_untouched_and_conditioning_still_learns(base_dirs) -> None:
    trainer = trainer_for(base_dirs, stage1_config(steps=3, train_unet=False))
    unet_before = {k: v.clone() for k, v in trainer.unet.state_dict().items()}
    adapter_before = {k: v.clone() for k, v in trainer.bundle.adapter.state_dict().items()}
    trainer.run()
    assert all(torch.equal(unet_before[k], v) for k, v in trainer.unet.state_dict().items())
    assert not all(torch.equal(adapter_before[k], v) for k, v in trainer.bundle.adapter.state_dict().items())
    assert not any(p.requires_grad for p in trainer.unet.parameters())


def test_held_out_split_is_deterministic_disjoint_and_stable() -> None:
    ids = [f"item_{i:05d}" for i in range(2000)]
    train, held = split_items(ids, 0.35)
    assert set(train).isdisjoint(held) and sorted(train + held) == sorted(ids)
    assert 0.31 < len(held) / len(ids) < 0.39
    assert split_items(ids, 0.35) == (train, held)
    # Growing the catalog never moves an existing item across the split.
    _, held_grown = split_items(ids + [f"new_{i}" for i in range(500)], 0.35)
    assert set(held) == {i for i in held_grown if i.startswith("item_")}
    assert split_items(ids, 0.0) == (ids, []) and split_items(ids, 1.0) == ([], ids)
    assert is_held_out("item_00001", 0.35) == ("item_00001" in held)
