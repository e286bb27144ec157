"""Click models judged on held-out days: the preference model's ROC and the downstream recommendation AUC.

Both split the validated window the way the preference gate does (the last ``holdout_days`` days
are held out) and learn user embeddings on the earlier days only, so no held-out click leaks in.

- Preference model: the gate's own held-out evaluation, re-run to get its predictions (an ROC curve
  for the report); ``oracle_auc`` is the oracle's AUC on the same rows, the ceiling.
- Downstream: a logistic click model trained on the earlier days' impressions -- a recommender
  with user and item effects and category affinity: ``[user embedding, item category,
  user x category, smoothed click rates of the user, the item and the user on the item's
  category]`` (:func:`click_rate_features`, leave-one-out on the training rows) -- and again with
  the shown cover's image features added (``[pixel attributes, their squares, user x attributes]``). On held-out days, in
  the embedded world, each impression's user is shown their segment's ICG cover of the item and
  the click is drawn from the oracle's click probability (seeded); on real data (no oracle) the
  held-out logged impressions and clicks are used. Reported: the AUC of each model.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score, roc_curve
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from icg_core import layout
from icg_core.config import ICGConfig
from icg_core.data.images import as_image_batch, read_images
from icg_core.evaluation.stats import rounded
from icg_core.models.users import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_SIZE,
    UserEmbeddings,
    cover_attributes,
    load_user_embeddings,
    pixel_attributes,
    train_user_embeddings,
)
from icg_core.rewards.preference import holdout_evaluation, split_days
from icg_core.storage import ObjectStore
from icg_core.world.oracle import Oracle

log = logging.getLogger(__name__)

ROC_POINTS = 200  # points kept of the ROC curve (the report plots them)
PRIOR_IMPRESSIONS = 20.0  # pseudo-impressions at the global click rate behind every smoothed click rate
_MAX_ITER = 300


@dataclass
class ClickWindow:
    """The validated window split for held-out judgement.

    Attributes:
        train, held: impressions of the earlier days and of the last ``holdout_days`` days.
        attributes_by_uri: pixel attributes ``[A]`` of every logged cover.
        category_by_item: catalog category of each item.
        embeddings: user embeddings learned on ``train`` only (a platform's imported ones as given).
    """

    train: pa.Table
    held: pa.Table
    attributes_by_uri: dict[str, np.ndarray]
    category_by_item: dict[str, str]
    embeddings: UserEmbeddings


def load_click_window(store: ObjectStore, ds: str, cfg: ICGConfig) -> ClickWindow:
    """Read the day's validated impressions and catalog, split by day, and learn train-day user embeddings."""
    impressions = layout.IMPRESSIONS.read(store, ds)
    catalog = layout.CATALOG.read(store, ds)
    train, held, _ = split_days(impressions, cfg.rewards.preference.holdout_days)
    attributes = cover_attributes(store, impressions.column("cover_uri").to_pylist())
    if cfg.users.import_uri:  # a platform's own embeddings cannot be re-learned here
        embeddings = load_user_embeddings(store, ds)
    else:
        embeddings = train_user_embeddings(train, attributes, cfg.users, "evaluate-holdout")
    return ClickWindow(
        train=train,
        held=held,
        attributes_by_uri=attributes,
        category_by_item=dict(
            zip(catalog.column("item_id").to_pylist(), catalog.column("category").to_pylist(), strict=True)
        ),
        embeddings=embeddings,
    )


def roc_points(labels: np.ndarray, scores: np.ndarray, points: int = ROC_POINTS) -> dict[str, list[float]]:
    """The ROC curve thinned to at most ``points`` points (first and last kept): {"fpr": [...], "tpr": [...]}."""
    fpr, tpr, _ = roc_curve(labels, scores)
    keep = np.unique(np.linspace(0, len(fpr) - 1, min(points, len(fpr))).round().astype(int))
    return {"fpr": [round(float(v), 5) for v in fpr[keep]], "tpr": [round(float(v), 5) for v in tpr[keep]]}


def preference_model_report(
    store: ObjectStore,
    window: ClickWindow,
    cfg: ICGConfig,
    saved_metrics: Mapping[str, Any],
    oracle: Oracle | None,
) -> dict[str, Any]:
    """``preference_model``: the saved gate's ``auc`` and ``log_loss``, the oracle ceiling, and the ROC.

    Args:
        store: the object store (reads the held-out covers for the oracle).
        window: :func:`load_click_window`.
        cfg: the configuration (the preference section: the gate's recipe).
        saved_metrics: the saved preference model's metrics (its gate).
        oracle: the oracle, or None on real data.
    """
    impressions = pa.concat_tables([window.train, window.held])
    metrics, scored, probability = holdout_evaluation(
        impressions, window.attributes_by_uri, window.category_by_item, cfg.rewards.preference, cfg.users,
        fixed_embeddings=window.embeddings,
    )  # fmt: skip
    clicked = np.asarray(scored.column("clicked").to_numpy(zero_copy_only=False), dtype=bool)
    oracle_auc = None
    if oracle is not None and clicked.any() and not clicked.all():
        uris = scored.column("cover_uri").to_pylist()
        distinct = list(dict.fromkeys(uris))  # a few thousand covers behind tens of thousands of rows
        images = read_images(store, distinct, oracle.image_size)
        attributes, scores = oracle.standardized_attributes(images), oracle.category_scores(images)
        row = {uri: i for i, uri in enumerate(distinct)}
        cover = np.array([row[uri] for uri in uris], dtype=np.int64)
        users = oracle.user_index(scored.column("user_id").to_pylist())
        truth = oracle.click_probability_from_features(users, attributes[cover], scores[cover])
        oracle_auc = float(roc_auc_score(clicked, truth))
    return {
        "auc": rounded(saved_metrics.get("auc")),
        "oracle_auc": rounded(oracle_auc),
        "log_loss": rounded(saved_metrics.get("log_loss")),
        "auc_reproduced": rounded(metrics["auc"]),
        "n_eval": int(metrics["n_eval"]),
        "roc": roc_points(clicked, probability)
        if clicked.any() and not clicked.all()
        else {"fpr": [], "tpr": []},
    }


def _one_hot(values: list[str | None], vocabulary: list[str]) -> np.ndarray:
    index = {v: i for i, v in enumerate(vocabulary)}
    out = np.zeros((len(values), len(vocabulary)), np.float32)
    for row, value in enumerate(values):
        if value in index:
            out[row, index[value]] = 1.0
    return out


def click_rate_features(
    train: pa.Table,
    table: pa.Table,
    category_by_item: Mapping[str, str],
    *,
    leave_one_out: bool,
    prior_impressions: float = PRIOR_IMPRESSIONS,
) -> np.ndarray:
    """Smoothed click rates learned on ``train`` for each row of ``table``, as logits ``[N, 3]``.

    Columns: the user's click rate, the item's, and the user's on the item's category (affinity).
    Each is ``(clicks + k * p) / (impressions + k)``, shrunk toward the training click rate ``p``
    with ``k = prior_impressions``; unseen users and items get ``p``. With ``leave_one_out`` (for
    ``table`` = ``train``), each row's own impression is taken out of its rates, so the model cannot
    learn its label from them.
    """
    import pandas as pd

    def frame(t: pa.Table) -> pd.DataFrame:
        items = t.column("item_id").to_pylist()
        return pd.DataFrame({
            "user": t.column("user_id").to_pylist(),
            "item": items,
            "category": [category_by_item.get(i, "") for i in items],
            "clicked": np.asarray(t.column("clicked").to_numpy(zero_copy_only=False), dtype=np.float64),
        })  # fmt: skip

    seen, rows = frame(train), frame(table)
    rate = float(seen["clicked"].mean()) if len(seen) else 0.5
    own = rows["clicked"].to_numpy() if leave_one_out else np.zeros(len(rows))
    out = []
    for keys in (["user"], ["item"], ["user", "category"]):
        totals = seen.groupby(keys)["clicked"].agg(["sum", "count"])
        joined = rows[keys].join(totals, on=keys)
        clicks = joined["sum"].fillna(0.0).to_numpy() - own
        count = joined["count"].fillna(0.0).to_numpy() - float(leave_one_out)
        smoothed = (clicks + prior_impressions * rate) / (count + prior_impressions)
        out.append(np.log(smoothed / (1.0 - smoothed)))
    return np.stack(out, axis=1).astype(np.float32)


def click_features(
    users: np.ndarray, categories: np.ndarray, rates: np.ndarray, attributes: np.ndarray | None
) -> np.ndarray:
    """Design matrix of the downstream click model.

    Args:
        users: ``[N, D]`` user embeddings.
        categories: ``[N, C]`` item category one-hot.
        rates: ``[N, 3]`` :func:`click_rate_features`.
        attributes: ``[N, A]`` standardized pixel attributes of the shown cover, or None (no cover features).

    Returns:
        ``[N, D + C + D*C + 3]``, plus ``2A + D*A`` columns with cover features.
    """
    blocks = [users, categories, np.einsum("nd,nc->ndc", users, categories).reshape(len(users), -1), rates]
    if attributes is not None:
        blocks += [
            attributes,
            attributes**2,
            np.einsum("nd,na->nda", users, attributes).reshape(len(users), -1),
        ]
    return np.concatenate(blocks, axis=1).astype(np.float32)


def _rows(window: ClickWindow, table: pa.Table) -> tuple[np.ndarray, pa.Table]:
    """(embedding rows, the impressions whose user has an embedding)."""
    rows, known = window.embeddings.lookup(table.column("user_id").to_pylist())
    return rows[known], table.filter(pa.array(known))


def downstream_auc(
    store: ObjectStore,
    window: ClickWindow,
    *,
    seed: int,
    oracle: Oracle | None = None,
    segment_of_user: Mapping[str, int] | None = None,
    cover_uris: Mapping[tuple[str, int], str] | None = None,
    covers: Mapping[tuple[str, int], np.ndarray] | None = None,
) -> dict[str, Any]:
    """``downstream``: held-out AUC of the click model without and with cover image features.

    Args:
        store: the object store (reads the ICG covers named by ``cover_uris``).
        window: :func:`load_click_window`.
        seed: seeds the simulated clicks.
        oracle: the oracle (embedded world); None = judge on held-out logged clicks.
        segment_of_user: user id -> segment id (with an oracle).
        cover_uris: (item, segment) -> URI of its ICG cover (the generate stage's covers).
        covers: (item, segment) -> uint8 ``[H, W, 3]`` ICG covers already in memory (the evaluated ones).
    """
    vocabulary = sorted(set(window.category_by_item.values()))
    train_rows, train = _rows(window, window.train)
    train_attr = np.stack([window.attributes_by_uri[u] for u in train.column("cover_uri").to_pylist()])
    mean, std = train_attr.mean(axis=0), np.maximum(train_attr.std(axis=0), 1e-6)
    held_rows, held = _rows(window, window.held)
    if oracle is None:
        held_attr = np.stack([window.attributes_by_uri[u] for u in held.column("cover_uri").to_pylist()])
        labels = np.asarray(held.column("clicked").to_numpy(zero_copy_only=False), dtype=bool)
        judged_by = "held-out logged clicks"
    else:
        held_rows, held, held_attr, labels = _oracle_clicks(
            store, oracle, held_rows, held, segment_of_user or {}, cover_uris or {}, covers or {}, seed
        )
        judged_by = "oracle clicks on each user's segment ICG cover"
    if len(labels) == 0 or labels.all() or not labels.any():
        log.warning("stage=evaluate downstream: no held-out rows with both clicks and skips")
        return {
            "auc_without_covers": None,
            "auc_with_covers": None,
            "n_train": train.num_rows,
            "n_eval": len(labels),
            "judged_by": judged_by,
        }
    train_labels = np.asarray(train.column("clicked").to_numpy(zero_copy_only=False), dtype=bool)
    users_train, users_held = (
        window.embeddings.embeddings[train_rows],
        window.embeddings.embeddings[held_rows],
    )
    cats_train = _one_hot(
        [window.category_by_item.get(i) for i in train.column("item_id").to_pylist()], vocabulary
    )
    cats_held = _one_hot(
        [window.category_by_item.get(i) for i in held.column("item_id").to_pylist()], vocabulary
    )
    rates_train = click_rate_features(train, train, window.category_by_item, leave_one_out=True)
    rates_held = click_rate_features(train, held, window.category_by_item, leave_one_out=False)
    out: dict[str, Any] = {}
    for key, with_covers in (("auc_without_covers", False), ("auc_with_covers", True)):
        x_train = click_features(
            users_train, cats_train, rates_train, (train_attr - mean) / std if with_covers else None
        )
        x_held = click_features(
            users_held, cats_held, rates_held, (held_attr - mean) / std if with_covers else None
        )
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=_MAX_ITER))
        model.fit(x_train, train_labels)
        out[key] = rounded(float(roc_auc_score(labels, model.predict_proba(x_held)[:, 1])))
    out |= {"n_train": int(train.num_rows), "n_eval": int(len(labels)), "judged_by": judged_by}
    return out


def _oracle_clicks(
    store: ObjectStore,
    oracle: Oracle,
    held_rows: np.ndarray,
    held: pa.Table,
    segment_of_user: Mapping[str, int],
    cover_uris: Mapping[tuple[str, int], str],
    covers: Mapping[tuple[str, int], np.ndarray],
    seed: int,
) -> tuple[np.ndarray, pa.Table, np.ndarray, np.ndarray]:
    """Held-out impressions re-shown with their segment's ICG cover; clicks drawn from the oracle.

    Returns:
        (embedding rows, the impressions kept (those with an ICG cover), ``[N, A]`` cover attributes,
        ``[N]`` simulated clicks).
    """
    users = held.column("user_id").to_pylist()
    pairs = [
        (item, segment_of_user.get(u, -1))
        for item, u in zip(held.column("item_id").to_pylist(), users, strict=True)
    ]
    keep = np.array([pair in covers or pair in cover_uris for pair in pairs], dtype=bool)
    pairs = [p for p, k in zip(pairs, keep, strict=True) if k]
    distinct = list(dict.fromkeys(pairs))
    from_store = [p for p in distinct if p not in covers]
    loaded = (
        dict(
            zip(
                from_store,
                read_images(store, [cover_uris[p] for p in from_store], ATTRIBUTE_SIZE),
                strict=True,
            )
        )
        if from_store
        else {}
    )
    held = held.filter(pa.array(keep))
    if not distinct:
        return held_rows[keep], held, np.zeros((0, len(ATTRIBUTE_NAMES)), np.float32), np.zeros(0, bool)
    images = as_image_batch([covers[p] if p in covers else loaded[p] for p in distinct], ATTRIBUTE_SIZE)
    index = {p: i for i, p in enumerate(distinct)}
    cover_of_row = np.array([index[p] for p in pairs], dtype=np.int64)
    attributes = pixel_attributes(images)
    standardized, scores = oracle.standardized_attributes(images), oracle.category_scores(images)
    user_rows = oracle.user_index(held.column("user_id").to_pylist())
    probability = oracle.click_probability_from_features(
        user_rows, standardized[cover_of_row], scores[cover_of_row]
    )
    clicks = np.random.default_rng(seed).random(len(probability)) < probability
    log.info(
        "stage=evaluate downstream: %d held-out impressions re-shown with %d ICG covers",
        len(clicks),
        len(distinct),
    )
    return held_rows[keep], held, attributes[cover_of_row], clicks
