"""ICGBundle: model folders in the store (local and S3), and a save/load round trip that samples the same covers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from icg_core.config import ModelsConfig
from icg_core.models.bundle import build_bundle, load_bundle, model_dir, put_model_dir, save_bundle
from icg_core.storage import SUCCESS, ObjectStore
from tests.icg_core.models.conftest import META_TOKENS, TITLES, reference_images

MODELS = ModelsConfig(num_meta_tokens=META_TOKENS, user_dim=8, adapter_hidden_dim=32, adapter_layers=1)


def test_model_folder_round_trip(any_store: ObjectStore, tmp_path: Path, tiny_sd_dirs) -> None:
    put_model_dir(any_store, "base-sd", "v1", tiny_sd_dirs["sd15"])
    local = model_dir(any_store, "base-sd", "v1", cache_dir=tmp_path / "cache")
    if any_store.scheme == "file":
        assert local == Path(any_store.arrow_path("models/base-sd/v1"))  # loaded in place, no copy
    else:
        assert local == tmp_path / "cache" / "base-sd" / "v1" and (local / SUCCESS).exists()
    for name in (
        "model_index.json",
        "unet/config.json",
        "vae/config.json",
        "scheduler/scheduler_config.json",
    ):
        assert (local / name).read_bytes() == (tiny_sd_dirs["sd15"] / name).read_bytes()


def test_saved_bundle_loads_and_samples_the_same_covers(tmp_path: Path, tiny_vlm_dirs, tiny_sd_dirs) -> None:
    store = ObjectStore(str(tmp_path / "root"))
    base = {"vlm": {"path": str(tiny_vlm_dirs["llava"])}, "sd": {"path": str(tiny_sd_dirs["sd15"])}}
    bundle = build_bundle(store, base, MODELS, seed=3).eval()
    with torch.no_grad():
        bundle.refiner.out.weight.copy_(
            0.5 * torch.eye(bundle.refiner.config.feature_dim)
        )  # a "trained" refiner, so users change the covers
        features = bundle.encoder(TITLES[:2], reference_images(2))
    users = torch.randn(2, 8)
    save_bundle(store, bundle, "icg_generator", "v1")
    loaded = load_bundle(store, MODELS)
    assert loaded.version == "v1" and loaded.encoder.encoder_version == bundle.encoder.encoder_version
    kwargs = {"steps": 3, "guidance_scale": 2.0}
    expected = bundle.generate(features, [1, 2], users=users, **kwargs)
    with torch.no_grad():
        reloaded_features = loaded.encoder(TITLES[:2], reference_images(2))
    actual = loaded.generate(reloaded_features, [1, 2], users=users, **kwargs)
    assert np.array_equal(actual, expected)
    assert not np.array_equal(
        loaded.generate(reloaded_features, [1, 2], **kwargs), actual
    )  # null user differs
