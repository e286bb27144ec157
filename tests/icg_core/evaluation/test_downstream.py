"""Downstream click models on planted logs: cover features must help when clicks depend on the cover."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from icg_core.evaluation.downstream import (
    ClickWindow,
    click_features,
    click_rate_features,
    downstream_auc,
    roc_points,
)
from icg_core.models.users import UserEmbeddings
from icg_core.storage import ObjectStore


def planted_window(seed: int = 0, n: int = 4000) -> ClickWindow:
    """Users with a taste direction over 4 cover attributes; clicks follow taste . attributes."""
    rng = np.random.default_rng(seed)
    users = rng.normal(size=(50, 6)).astype(np.float32)
    uris = [f"file:///covers/{i}.png" for i in range(40)]
    attributes = {u: rng.normal(size=4).astype(np.float32) for u in uris}

    def impressions(rows: int) -> pa.Table:
        user = rng.integers(0, 50, rows)
        cover = rng.integers(0, 40, rows)
        logit = np.einsum("na,na->n", users[user, :4], np.stack([attributes[uris[c]] for c in cover]))
        clicked = rng.random(rows) < 1 / (1 + np.exp(-2 * logit))
        return pa.table({
            "user_id": [f"u{i}" for i in user], "item_id": [f"i{c % 10}" for c in cover],
            "cover_uri": [uris[c] for c in cover], "clicked": clicked,
        })  # fmt: skip

    embeddings = UserEmbeddings(np.array([f"u{i}" for i in range(50)]), users, "planted")
    return ClickWindow(
        train=impressions(n), held=impressions(n // 2), attributes_by_uri=attributes,
        category_by_item={f"i{i}": "ab"[i % 2] for i in range(10)}, embeddings=embeddings,
    )  # fmt: skip


def test_cover_features_raise_the_held_out_auc_on_logged_clicks(tmp_path) -> None:
    result = downstream_auc(ObjectStore(str(tmp_path)), planted_window(), seed=0)
    assert result["judged_by"] == "held-out logged clicks" and result["n_eval"] == 2000
    assert result["auc_with_covers"] > result["auc_without_covers"] + 0.1
    assert result["auc_with_covers"] > 0.7


def test_click_features_shapes() -> None:
    users, categories, attributes = np.ones((3, 5)), np.eye(3)[:, :2], np.ones((3, 4))
    rates = np.zeros((3, 3))
    assert click_features(users, categories, rates, None).shape == (3, 5 + 2 + 10 + 3)
    assert click_features(users, categories, rates, attributes).shape == (3, 5 + 2 + 10 + 3 + 8 + 20)


def _logs(users: list[str], items: list[str], clicked: list[bool]) -> pa.Table:
    return pa.table({"user_id": users, "item_id": items, "cover_uri": ["c"] * len(users), "clicked": clicked})


def test_click_rates_are_shrunk_toward_the_mean_and_leave_the_own_label_out() -> None:
    train = _logs(["a"] * 10 + ["b"] * 10, ["x"] * 20, [True] * 10 + [False] * 10)
    category = {"x": "k", "y": "k"}
    held = click_rate_features(train, _logs(["a", "b", "z"], ["x", "x", "y"], [False] * 3), category,
                               leave_one_out=False, prior_impressions=10.0)  # fmt: skip
    assert held[0, 0] > 0.5 and held[1, 0] < -0.5  # clicker vs skipper, shrunk from +-inf
    assert abs(held[2, 0]) < 1e-6 and abs(held[2, 1]) < 1e-6  # unseen user and item: the mean (logit 0)
    own = click_rate_features(train, train, category, leave_one_out=True, prior_impressions=10.0)
    # Leaving each row's own click out lowers the clicker's rate on its own rows.
    assert (own[:10, 0] < held[0, 0]).all()


def test_the_baseline_recommender_learns_user_and_item_effects(tmp_path) -> None:
    """Clicks driven by user and item propensity alone: the model without cover features must rank them."""
    rng = np.random.default_rng(1)
    user_effect, item_effect = rng.normal(0, 1.5, 200), rng.normal(0, 1.5, 30)

    def impressions(rows: int) -> pa.Table:
        user, item = rng.integers(0, 200, rows), rng.integers(0, 30, rows)
        clicked = rng.random(rows) < 1 / (1 + np.exp(-(user_effect[user] + item_effect[item])))
        return pa.table({"user_id": [f"u{i}" for i in user], "item_id": [f"i{i}" for i in item],
                         "cover_uri": ["c"] * rows, "clicked": clicked})  # fmt: skip

    window = ClickWindow(
        train=impressions(20000), held=impressions(4000), attributes_by_uri={"c": np.zeros(4, np.float32)},
        category_by_item={f"i{i}": "ab"[i % 2] for i in range(30)},
        embeddings=UserEmbeddings(np.array([f"u{i}" for i in range(200)]), np.zeros((200, 4), np.float32), "none"),
    )  # fmt: skip
    assert downstream_auc(ObjectStore(str(tmp_path)), window, seed=0)["auc_without_covers"] > 0.7


def test_roc_is_thinned_and_spans_the_square() -> None:
    rng = np.random.default_rng(0)
    labels = rng.random(5000) < 0.3
    curve = roc_points(labels, labels + rng.normal(0, 1, 5000))
    assert len(curve["fpr"]) <= 200 and len(curve["fpr"]) == len(curve["tpr"])
    assert curve["fpr"][0] == 0.0 and curve["fpr"][-1] == 1.0 and curve["tpr"][-1] == 1.0
