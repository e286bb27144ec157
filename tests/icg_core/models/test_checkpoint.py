"""Module checkpoints: safetensors + JSON under models/<name>/<version>/, with a _latest pointer."""

from __future__ import annotations

import pytest
import torch

from icg_core.models.checkpoint import (
    CheckpointError,
    checkpoint_exists,
    load_module_checkpoint,
    resolve_version,
    save_module_checkpoint,
)
from icg_core.models.conditioning import AdapterConfig, ConditionAdapter
from icg_core.models.encoder import MetaTokenEncoder
from icg_core.storage import ObjectStore
from tests.icg_core.models.conftest import META_TOKENS, TITLES, reference_images


def test_round_trip_is_exact_and_latest_moves(tmp_path):
    store = ObjectStore(str(tmp_path))
    torch.manual_seed(0)
    adapter = ConditionAdapter(
        AdapterConfig(
            feature_dim=16, num_tokens=4, kind="sdxl", cross_attention_dim=8, pooled_dim=8, hidden_dim=16
        )
    )
    extra = {"scale": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3)}
    uri = save_module_checkpoint(store, "icg", "v1", {"adapter": adapter, "extra": extra}, {"kind": "sdxl"})
    assert uri == store.uri("models/icg/v1")
    assert {k.rsplit("/", 1)[1] for k in store.list("models/icg/v1")} == {
        "adapter.safetensors",
        "extra.safetensors",
        "config.json",
        "_SUCCESS",
    }
    states, config = load_module_checkpoint(store, "icg", "latest")
    assert config == {"kind": "sdxl"}
    for key, value in adapter.state_dict().items():
        assert torch.equal(states["adapter"][key], value)
    assert states["extra"]["scale"].dtype == torch.bfloat16 and torch.equal(
        states["extra"]["scale"], extra["scale"]
    )
    rebuilt = ConditionAdapter(adapter.config)
    rebuilt.load_state_dict(states["adapter"])

    save_module_checkpoint(store, "icg", "v2", {"adapter": rebuilt}, {"kind": "sdxl", "step": 2})
    assert resolve_version(store, "icg") == "v2"
    assert load_module_checkpoint(store, "icg", "v1")[1] == {"kind": "sdxl"}  # old versions stay readable


def test_missing_and_incomplete_checkpoints_raise(tmp_path):
    store = ObjectStore(str(tmp_path))
    assert not checkpoint_exists(store, "icg")
    with pytest.raises(CheckpointError, match="no saved checkpoint"):
        load_module_checkpoint(store, "icg")
    save_module_checkpoint(store, "icg", "v1", {"m": {"w": torch.ones(2)}}, {})
    assert checkpoint_exists(store, "icg") and checkpoint_exists(store, "icg", "v1")
    store.delete("models/icg/v1/_SUCCESS")  # as if a writer died mid-save
    with pytest.raises(CheckpointError, match="incomplete"):
        load_module_checkpoint(store, "icg", "v1")
    with pytest.raises(CheckpointError, match="invalid"):
        save_module_checkpoint(store, "icg", "../x", {}, {})


def test_corrupted_weights_are_detected(tmp_path):
    store = ObjectStore(str(tmp_path))
    save_module_checkpoint(store, "icg", "v1", {"m": {"w": torch.ones(2)}}, {})
    payload = bytearray(store.get_bytes("models/icg/v1/m.safetensors"))
    payload[-1] ^= 0xFF
    store.put_bytes("models/icg/v1/m.safetensors", bytes(payload))
    with pytest.raises(CheckpointError, match="manifest"):
        load_module_checkpoint(store, "icg", "v1")


def test_encoder_trainable_state_through_checkpoint(tmp_path, tiny_vlm_dirs):
    store = ObjectStore(str(tmp_path))
    path = tiny_vlm_dirs["qwen2_vl"]
    trained = MetaTokenEncoder(path, num_meta_tokens=META_TOKENS, seed=3)
    save_module_checkpoint(
        store, "encoder", "v1", {"encoder": trained.trainable_state_dict()}, {"n": META_TOKENS}
    )
    states, config = load_module_checkpoint(store, "encoder", "v1")
    fresh = MetaTokenEncoder(path, num_meta_tokens=config["n"], seed=4)
    fresh.load_trainable_state_dict(states["encoder"])
    assert fresh.encoder_version == trained.encoder_version
    with torch.no_grad():
        assert torch.equal(fresh(TITLES[:2], reference_images(2)), trained(TITLES[:2], reference_images(2)))
