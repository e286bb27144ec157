"""The click model: learns a planted signal, gates on held-out AUC, saves and scores covers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from icg_core.models.users import UsersConfig, pixel_attributes
from icg_core.rewards.preference import (
    ClickRows,
    PreferenceConfig,
    PreferenceGateError,
    PreferenceModel,
    build_preference_reward,
    fit_click_model,
    load_preference_reward_fn,
    preference_reward_fn,
    split_days,
)
from icg_core.stages.users import run_users
from icg_core.storage import ObjectStore
from tests.icg_core.rewards.synthetic import pattern_image, planted_logs

USERS = UsersConfig(embedding_dim=8, bpr_epochs=3, n_segments=2, kmeans_restarts=2)
FAST = PreferenceConfig(holdout_days=2, epochs=6, batch_size=256)


def _planted_rows(n: int, seed: int) -> tuple[ClickRows, np.ndarray, np.ndarray]:
    """Users [taste, noise] and covers with brightness in [0.2, 0.8]; clicks follow taste * brightness.

    Returns (rows, images, the true click probability).
    """
    rng = np.random.default_rng(seed)
    taste = rng.choice([-1.0, 1.0], n)
    users = np.stack([taste + rng.normal(0, 0.2, n), rng.normal(0, 1, n)], axis=1).astype(np.float32)
    brightness = rng.uniform(0.2, 0.8, n)
    images = np.stack([pattern_image("checks", np.array([128, 128, 128]), 2 * b, 64) for b in brightness])
    truth = 1 / (1 + np.exp(-(8.0 * taste * (brightness - 0.5))))
    clicked = rng.random(n) < truth
    return ClickRows(users, pixel_attributes(images), [None] * n, clicked, 0), images, truth


def test_click_model_learns_a_planted_signal():
    train, _, _ = _planted_rows(4000, 0)
    test, test_images, truth = _planted_rows(1000, 1)
    model = fit_click_model(train, FAST, categories=[])
    probability = model.predict_from_attributes(test.users, test.attributes, test.categories)
    assert probability.shape == (1000,) and ((0 < probability) & (probability < 1)).all()
    ceiling = roc_auc_score(test.clicked, truth)
    assert ceiling > 0.7  # the planted signal is strong
    assert roc_auc_score(test.clicked, probability) > ceiling - 0.03
    # The same numbers from images, through the batched image path.
    assert np.allclose(model.predict(test.users, test_images), probability, atol=1e-5)


def test_split_days_holds_out_the_last_days(tmp_path):
    logs = planted_logs(ObjectStore(str(tmp_path)), days=5)
    train, held, days = split_days(logs.impressions, holdout_days=2)
    assert days == ["2026-11-04", "2026-11-05"]
    assert train.num_rows + held.num_rows == logs.impressions.num_rows
    assert max(train.column("shown_at").to_pylist()) < min(held.column("shown_at").to_pylist())
    with pytest.raises(ValueError, match="needs more than"):
        split_days(logs.impressions, holdout_days=5)


def test_gate_refuses_a_model_without_signal_and_saves_nothing(tmp_path):
    store = ObjectStore(str(tmp_path))
    logs = planted_logs(store, strength=0.0)  # clicks ignore the cover
    run_users(store, logs.ds, USERS)
    with pytest.raises(PreferenceGateError, match="below the floor 0.6000") as caught:
        build_preference_reward(store, logs.ds, FAST.model_copy(update={"auc_floor": 0.6}), USERS)
    assert caught.value.metrics["auc"] < 0.6 and caught.value.metrics["n_eval"] > 0
    assert store.list("models/reward_preference") == []


def test_trained_reward_saves_loads_and_scores_segments(tmp_path):
    store = ObjectStore(str(tmp_path))
    logs = planted_logs(store, per_day=600, strength=5.0)
    run_users(store, logs.ds, USERS)
    model = build_preference_reward(store, logs.ds, FAST.model_copy(update={"auc_floor": 0.55}), USERS).model
    assert model.metrics["auc"] >= 0.55 and model.stats is not None
    loaded = PreferenceModel.load(store, logs.ds)
    assert loaded.stats == model.stats and loaded.metrics["auc"] == model.metrics["auc"]

    from icg_core.models.users import load_segments

    segments = load_segments(store, logs.ds)
    dark = pattern_image("rings", np.array([120, 120, 120]), 0.5)
    bright = pattern_image("rings", np.array([120, 120, 120]), 1.0)
    images = np.stack([dark, bright] * len(segments.centroids))
    metadata = [{"segment_id": s} for s in sorted(segments.centroids) for _ in range(2)]
    reward = load_preference_reward_fn(store, centroids=segments.centroids)
    rewards, info = reward(images, ["t"] * len(images), metadata)
    assert rewards.shape == (len(images),) and rewards.dtype == np.float32
    assert info["click_probability"].shape == (len(images),) and info["standardized"]
    # One segment prefers the bright cover and another the dark one: the planted tastes.
    prefers_bright = info["click_probability"][1::2] > info["click_probability"][0::2]
    assert prefers_bright.any() and not prefers_bright.all()
    # A user embedding works as well as a segment id; raw scores are probabilities.
    user = {"user_embedding": segments.centroids[sorted(segments.centroids)[0]]}
    raw, _ = preference_reward_fn(loaded, standardize=False)(images[:2], ["t", "t"], [user, user])
    assert np.allclose(raw, info["click_probability"][:2], atol=1e-6)
    with pytest.raises(KeyError, match="segment_id"):
        reward(images[:1], ["t"], [{}])


def test_imported_embeddings_are_gated_as_they_are(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    store = ObjectStore(str(tmp_path / "root"))
    logs = planted_logs(store, per_day=600, strength=5.0)
    path = tmp_path / "platform.parquet"
    users = sorted(logs.user_group)
    pq.write_table(
        pa.table({"user_id": users, "embedding": [[2.0 * logs.user_group[u] - 1.0] for u in users]}), path
    )
    imported = USERS.model_copy(update={"import_uri": str(path)})
    run_users(store, logs.ds, imported)
    model = build_preference_reward(
        store, logs.ds, FAST.model_copy(update={"auc_floor": 0.6}), imported
    ).model
    assert model.user_dim == 1 and model.metrics["auc"] > 0.6
