"""Personalized preference reward: a click model P(click | user embedding, cover image).

Trained on impressions -- the cover actually shown and whether the user clicked -- never on the
embedded world's hidden truth. Features of one (user, cover, item) row:

- ``u`` ``[D]``: the user's embedding (:mod:`icg_core.models.users`); for a segment, its centroid;
- ``x`` ``[A]``: :func:`icg_core.models.users.pixel_attributes` of the cover, standardized over the training
  impressions' covers (the model's own statistics, saved with it);
- ``c`` ``[C]``: one-hot of the item's catalog category (optional, ``use_category``). It is item
  context, not a function of the pixels, so it is the same for every candidate cover of an item and
  cannot pull generated covers toward another category's look.

The model is a factorization machine on those blocks::

    logit = b + w_u.u + w_x.x + v_x.x^2 + w_c.c + u^T W_x x + u^T W_c c

(``u^T W_x x``: how this user's taste meets this cover's look; ``u^T W_c c``: category affinity).
Training uses Adam on the binary cross-entropy. Acceptance is honest: the gate re-learns user
embeddings on the earlier days of the window only, fits the model there, and scores the last
``holdout_days`` days (AUC, log loss); below ``auc_floor`` :func:`train_preference_model` raises
:class:`PreferenceGateError` and nothing is saved. The model that is saved is then fitted on the whole
window with the users stage's embeddings (the space the reward is queried in), same recipe.
Inference is batched, under ``torch.no_grad``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from sklearn.metrics import log_loss, roc_auc_score
from torch import nn

from icg_core import layout
from icg_core.config import PreferenceConfig, UsersConfig
from icg_core.data.images import as_image_batch
from icg_core.models.users import (
    ATTRIBUTE_NAMES,
    ATTRIBUTE_SIZE,
    UserEmbeddings,
    cover_attributes,
    load_user_embeddings,
    pixel_attributes,
    pixel_attributes_tensor,
    train_user_embeddings,
)
from icg_core.rewards.common import (
    BuiltReward,
    RewardFn,
    RewardStats,
    finish,
    load_reward_model,
    save_reward_model,
)
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

KIND = "preference"


class PreferenceGateError(RuntimeError):
    """The click model's held-out AUC is below the configured floor: no model is produced."""

    def __init__(self, metrics: Mapping[str, Any], floor: float) -> None:
        super().__init__(
            f"preference model refused: held-out AUC {metrics.get('auc', float('nan')):.4f} is below the "
            f"floor {floor:.4f} (held-out impressions={metrics.get('n_eval')}, days={metrics.get('eval_days')})"
        )
        self.metrics = dict(metrics)
        self.floor = floor


class ClickModel(nn.Module):
    """The factorization machine of the module docstring; returns click logits ``[B]``."""

    def __init__(self, user_dim: int, n_attributes: int, n_categories: int) -> None:
        super().__init__()
        self.user_linear = nn.Linear(user_dim, 1)  # holds the bias b
        self.attr_linear = nn.Linear(n_attributes, 1, bias=False)
        self.attr_square = nn.Linear(n_attributes, 1, bias=False)
        self.user_attr = nn.Parameter(torch.zeros(user_dim, n_attributes))
        self.category_linear = nn.Linear(max(n_categories, 1), 1, bias=False)
        self.user_category = nn.Parameter(torch.zeros(user_dim, max(n_categories, 1)))

    def forward(
        self, users: torch.Tensor, attributes: torch.Tensor, categories: torch.Tensor
    ) -> torch.Tensor:
        """users ``[B, D]``, attributes ``[B, A]`` (standardized), categories ``[B, C]`` one-hot -> ``[B]``."""
        logit = self.user_linear(users) + self.attr_linear(attributes) + self.attr_square(attributes**2)
        logit = logit + self.category_linear(categories)
        logit = logit.squeeze(1) + torch.einsum("bd,da,ba->b", users, self.user_attr, attributes)
        return logit + torch.einsum("bd,dc,bc->b", users, self.user_category, categories)


@dataclass
class PreferenceModel:
    """A trained click model with the statistics and vocabulary it needs at inference."""

    module: ClickModel
    user_dim: int
    attribute_mean: np.ndarray  # [A]
    attribute_std: np.ndarray  # [A]
    categories: list[str]  # one-hot order; empty when use_category is off
    stats: RewardStats | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    def category_onehot(self, categories: Sequence[str | None]) -> np.ndarray:
        onehot = np.zeros((len(categories), max(len(self.categories), 1)), dtype=np.float32)
        index = {c: i for i, c in enumerate(self.categories)}
        for row, category in enumerate(categories):
            if category in index:  # unknown or missing category: no context term
                onehot[row, index[category]] = 1.0
        return onehot

    @torch.no_grad()
    def predict_from_attributes(
        self,
        users: np.ndarray,
        attributes: np.ndarray,
        categories: Sequence[str | None],
        batch_size: int = 8192,
    ) -> np.ndarray:
        """Click probability ``[B]`` from user embeddings ``[B, D]`` and raw cover attributes ``[B, A]``."""
        users = np.asarray(users, dtype=np.float32)
        if users.ndim != 2 or users.shape[1] != self.user_dim:
            raise ValueError(f"user embeddings must be [B, {self.user_dim}], got {users.shape}")
        standardized = ((np.asarray(attributes) - self.attribute_mean) / self.attribute_std).astype(
            np.float32
        )
        onehot = self.category_onehot(categories)
        self.module.eval()
        out = []
        for start in range(0, len(users), batch_size):
            end = start + batch_size
            logits = self.module(
                torch.from_numpy(users[start:end]),
                torch.from_numpy(standardized[start:end]),
                torch.from_numpy(onehot[start:end]),
            )
            out.append(torch.sigmoid(logits).numpy())
        return np.concatenate(out) if out else np.zeros(0, np.float32)

    def predict(
        self, users: np.ndarray, images: Any, categories: Sequence[str | None] | None = None
    ) -> np.ndarray:
        """Click probability ``[B]`` of user embeddings ``[B, D]`` on cover images (any batch layout)."""
        batch = as_image_batch(images, ATTRIBUTE_SIZE)
        return self.predict_from_attributes(users, pixel_attributes(batch), categories or [None] * len(batch))

    def click_probability_tensor(self, users: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
        """Differentiable click probability ``[B]`` (what reward guidance ascends).

        The category block is left out: it is item context, the same for every cover of an item, so it
        cannot change which look wins. Computed where the model lives; the result comes back to the
        covers' device (gradients follow).

        Args:
            users: ``[B, D]`` user embeddings or segment centroids.
            images: ``float [B, 3, H, W]`` in [0, 1].
        """
        source, device = images.device, next(self.module.parameters()).device
        images = images.to(device)
        if images.shape[-1] != ATTRIBUTE_SIZE:
            images = nn.functional.interpolate(
                images, size=(ATTRIBUTE_SIZE, ATTRIBUTE_SIZE), mode="bilinear", antialias=True
            )
        mean = torch.as_tensor(self.attribute_mean, device=device)
        std = torch.as_tensor(self.attribute_std, device=device)
        standardized = (pixel_attributes_tensor(images) - mean) / std
        no_category = torch.zeros(len(images), max(len(self.categories), 1), device=device)
        self.module.eval()
        return torch.sigmoid(self.module(users.float().to(device), standardized, no_category)).to(source)

    def save(self, store: ObjectStore, version: str) -> str:
        if self.stats is None:
            raise ValueError("a preference model is saved with its standardization statistics")
        settings = self.settings | {
            "user_dim": self.user_dim,
            "attribute_names": list(ATTRIBUTE_NAMES),
            "attribute_mean": self.attribute_mean.tolist(),
            "attribute_std": self.attribute_std.tolist(),
            "categories": self.categories,
        }
        return save_reward_model(
            store,
            KIND,
            version,
            modules={"click_model": self.module},
            config=settings,
            stats=self.stats,
            metrics=self.metrics,
        )

    @classmethod
    def load(cls, store: ObjectStore, version: str = "latest") -> PreferenceModel:
        saved = load_reward_model(store, KIND, version)
        settings = saved.settings
        if settings["attribute_names"] != list(ATTRIBUTE_NAMES):
            raise ValueError(
                f"preference model {saved.version} was trained on other attributes: {settings['attribute_names']}"
            )
        module = ClickModel(settings["user_dim"], len(ATTRIBUTE_NAMES), len(settings["categories"]))
        module.load_state_dict(saved.states["click_model"])
        return cls(
            module,
            settings["user_dim"],
            np.asarray(settings["attribute_mean"], np.float32),
            np.asarray(settings["attribute_std"], np.float32),
            list(settings["categories"]),
            saved.stats,
            saved.metrics,
            settings,
        )


# ----------------------------------------------------------------------------- training
@dataclass
class ClickRows:
    """Impressions as model inputs (rows whose user has no embedding are dropped)."""

    users: np.ndarray  # [N, D]
    attributes: np.ndarray  # [N, A] raw
    categories: list[str | None]  # [N]
    clicked: np.ndarray  # [N] bool
    dropped: int


def click_rows(
    impressions: pa.Table,
    embeddings: UserEmbeddings,
    attributes_by_uri: Mapping[str, np.ndarray],
    category_by_item: Mapping[str, str],
) -> ClickRows:
    """Join impressions to user embeddings, cover attributes and item categories."""
    rows, known = embeddings.lookup(impressions.column("user_id").to_pylist())
    uris = np.asarray(impressions.column("cover_uri").to_pylist(), dtype=object)[known]
    items = np.asarray(impressions.column("item_id").to_pylist(), dtype=object)[known]
    clicked = np.asarray(impressions.column("clicked").to_numpy(zero_copy_only=False), dtype=bool)[known]
    attributes = (
        np.stack([attributes_by_uri[u] for u in uris]) if len(uris) else np.zeros((0, len(ATTRIBUTE_NAMES)))
    )
    return ClickRows(
        users=embeddings.embeddings[rows[known]],
        attributes=attributes.astype(np.float32),
        categories=[category_by_item.get(i) for i in items],
        clicked=clicked,
        dropped=int((~known).sum()),
    )


def fit_click_model(data: ClickRows, cfg: PreferenceConfig, categories: list[str]) -> PreferenceModel:
    """Fit a :class:`ClickModel` on ``data`` (binary cross-entropy, Adam, seeded)."""
    if len(data.clicked) == 0 or data.clicked.all() or not data.clicked.any():
        raise ValueError("the click model needs impressions with both clicks and skips")
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    mean = data.attributes.mean(axis=0)
    std = np.maximum(data.attributes.std(axis=0), 1e-6)
    model = PreferenceModel(
        ClickModel(data.users.shape[1], data.attributes.shape[1], len(categories)),
        data.users.shape[1],
        mean.astype(np.float32),
        std.astype(np.float32),
        categories,
    )
    users = torch.from_numpy(data.users.astype(np.float32))
    attrs = torch.from_numpy(((data.attributes - mean) / std).astype(np.float32))
    onehot = torch.from_numpy(model.category_onehot(data.categories))
    labels = torch.from_numpy(data.clicked.astype(np.float32))
    with torch.no_grad():  # start at the base rate
        rate = float(labels.mean())
        model.module.user_linear.bias.fill_(np.log(rate / (1 - rate)))
    optimizer = torch.optim.Adam(model.module.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model.module.train()
    for _ in range(cfg.epochs):
        for batch in np.array_split(rng.permutation(len(labels)), max(1, len(labels) // cfg.batch_size)):
            index = torch.from_numpy(batch)
            loss = nn.functional.binary_cross_entropy_with_logits(
                model.module(users[index], attrs[index], onehot[index]), labels[index]
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    model.module.eval()
    return model


def click_metrics(clicked: np.ndarray, probability: np.ndarray, train_rate: float) -> dict[str, float]:
    """AUC and log loss of predictions, with the log loss of always predicting ``train_rate``."""
    probability = np.clip(probability, 1e-6, 1 - 1e-6)
    both = clicked.any() and not clicked.all()
    return {
        "auc": float(roc_auc_score(clicked, probability)) if both else float("nan"),
        "log_loss": float(log_loss(clicked, probability, labels=[False, True])),
        "log_loss_base_rate": float(
            log_loss(clicked, np.full(len(clicked), train_rate), labels=[False, True])
        ),
        "ctr": float(clicked.mean()),
        "n_eval": int(len(clicked)),
    }


def split_days(impressions: pa.Table, holdout_days: int) -> tuple[pa.Table, pa.Table, list[str]]:
    """(earlier days, last ``holdout_days`` days, the held-out dates) by ``shown_at`` UTC date."""
    days = pc.strftime(impressions.column("shown_at"), format="%Y-%m-%d", locale="C")
    distinct = sorted(set(days.to_pylist()))
    if len(distinct) <= holdout_days:
        raise ValueError(
            f"the window has {len(distinct)} days of impressions; the gate needs more than holdout_days={holdout_days}"
        )
    held = distinct[-holdout_days:]
    mask = pc.is_in(days, value_set=pa.array(held))
    return impressions.filter(pc.invert(mask)), impressions.filter(mask), held


def holdout_evaluation(
    impressions: pa.Table,
    attributes_by_uri: Mapping[str, np.ndarray],
    category_by_item: Mapping[str, str],
    cfg: PreferenceConfig,
    users_cfg: UsersConfig,
    fixed_embeddings: UserEmbeddings | None = None,
) -> tuple[dict[str, Any], pa.Table, np.ndarray]:
    """Learn users and clicks on the earlier days, score the held-out last days.

    User embeddings are re-learned on the earlier days (so no held-out click leaks into them), unless
    ``fixed_embeddings`` is given: a platform's imported embeddings, which this project cannot re-learn.

    Returns:
        (metrics, the held-out impressions scored, their predicted click probabilities ``[N_eval]``;
        held-out rows of users unseen in the earlier days are not scored and are counted in
        ``metrics["unseen_users"]``).
    """
    train, held, held_days = split_days(impressions, cfg.holdout_days)
    embeddings = fixed_embeddings or train_user_embeddings(train, attributes_by_uri, users_cfg, "holdout")
    categories = _category_vocabulary(category_by_item, cfg)
    model = fit_click_model(
        click_rows(train, embeddings, attributes_by_uri, category_by_item), cfg, categories
    )
    _, known = embeddings.lookup(held.column("user_id").to_pylist())
    scored = held.filter(pa.array(known))
    data = click_rows(scored, embeddings, attributes_by_uri, category_by_item)
    probability = model.predict_from_attributes(data.users, data.attributes, data.categories)
    train_rate = float(np.asarray(train.column("clicked").to_numpy(zero_copy_only=False)).mean())
    metrics = click_metrics(data.clicked, probability, train_rate) | {
        "eval_days": held_days,
        "n_train": train.num_rows,
        "unseen_users": int((~known).sum()),
    }
    return metrics, scored, probability


def _category_vocabulary(category_by_item: Mapping[str, str], cfg: PreferenceConfig) -> list[str]:
    return sorted(set(category_by_item.values())) if cfg.use_category else []


def train_preference_model(
    impressions: pa.Table,
    embeddings: UserEmbeddings,
    attributes_by_uri: Mapping[str, np.ndarray],
    category_by_item: Mapping[str, str],
    cfg: PreferenceConfig,
    users_cfg: UsersConfig,
) -> PreferenceModel:
    """Gate on held-out days, then fit the production click model on the whole window.

    Args:
        impressions: the validated impressions of the window.
        embeddings: the users stage's embeddings (the space the reward will be queried in).
        attributes_by_uri: :func:`icg_core.models.users.cover_attributes` of every shown cover.
        category_by_item: catalog category of each item.
        cfg: the preference config.
        users_cfg: the users config, to re-learn embeddings on the gate's earlier days.

    Returns:
        The fitted model, with ``metrics`` (the gate's) and ``stats`` (over logged impressions) set.

    Raises:
        PreferenceGateError: the held-out AUC is below ``cfg.auc_floor``.
    """
    started = time.perf_counter()
    fixed = embeddings if users_cfg.import_uri else None
    metrics, _, _ = holdout_evaluation(
        impressions, attributes_by_uri, category_by_item, cfg, users_cfg, fixed
    )
    gate_seconds = time.perf_counter() - started
    log.info(
        "stage=rewards preference gate auc=%.4f log_loss=%.4f floor=%.3f",
        metrics["auc"],
        metrics["log_loss"],
        cfg.auc_floor,
    )
    if not metrics["auc"] >= cfg.auc_floor:  # also refuses NaN
        raise PreferenceGateError(metrics, cfg.auc_floor)
    data = click_rows(impressions, embeddings, attributes_by_uri, category_by_item)
    model = fit_click_model(data, cfg, _category_vocabulary(category_by_item, cfg))
    sample = np.random.default_rng(cfg.seed).permutation(len(data.clicked))[: cfg.reference_rows]
    reference = model.predict_from_attributes(
        data.users[sample], data.attributes[sample], [data.categories[i] for i in sample]
    )
    model.stats = RewardStats.from_values(
        reference, "click probability over logged impressions (user, cover shown)"
    )
    model.metrics = metrics | {
        "gate_seconds": gate_seconds,
        "fit_seconds": time.perf_counter() - started - gate_seconds,
        "dropped_rows": data.dropped,
    }
    model.settings = cfg.model_dump() | {"user_embedding_version": embeddings.model_version}
    return model


# ----------------------------------------------------------------------------- reward
def preference_reward_fn(
    model: PreferenceModel,
    centroids: Mapping[int, np.ndarray] | None = None,
    standardize: bool = True,
) -> RewardFn:
    """The preference reward: P(click) of the metadata's user (or segment centroid) on each image.

    Each ``metadata[i]`` holds ``"user_embedding"`` (``[D]``) or ``"segment_id"`` (looked up in
    ``centroids``), and optionally ``"category"`` (the item's catalog category). ``prompts`` are unused.
    ``info`` holds ``click_probability`` ``[B]``.
    """
    stats = model.stats if standardize else None
    if standardize and stats is None:
        raise ValueError("standardize=True needs a model with standardization statistics")

    def reward(
        images: Any, prompts: Sequence[str], metadata: Sequence[Mapping[str, Any]]
    ) -> tuple[np.ndarray, dict[str, Any]]:
        batch = as_image_batch(images, ATTRIBUTE_SIZE)
        if len(metadata) != len(batch):
            raise ValueError(f"{len(batch)} images but {len(metadata)} metadata entries")
        users = (
            np.stack([_user_vector(m, centroids) for m in metadata])
            if len(batch)
            else np.zeros((0, model.user_dim))
        )
        probability = model.predict_from_attributes(
            users, pixel_attributes(batch), [m.get("category") for m in metadata]
        )
        return finish(probability, stats, {"click_probability": probability})

    return reward


def _user_vector(meta: Mapping[str, Any], centroids: Mapping[int, np.ndarray] | None) -> np.ndarray:
    if "user_embedding" in meta:
        return np.asarray(meta["user_embedding"], dtype=np.float32)
    if "segment_id" in meta:
        if centroids is None or int(meta["segment_id"]) not in centroids:
            raise KeyError(f"segment {meta['segment_id']} has no centroid (pass the segment centroids)")
        return np.asarray(centroids[int(meta["segment_id"])], dtype=np.float32)
    raise KeyError("preference metadata needs 'user_embedding' or 'segment_id'")


# ----------------------------------------------------------------------------- stage
def build_preference_reward(
    store: ObjectStore,
    ds: str,
    cfg: PreferenceConfig,
    users_cfg: UsersConfig,
    embeddings: UserEmbeddings | None = None,
    version: str | None = None,
) -> BuiltReward:
    """The preference part of the rewards stage: gate, fit, save as ``version`` (default ``ds``).

    Args:
        store: the object store with the validated window and the users stage's tables of ``ds``.
        ds: the run's date.
        cfg: the preference config.
        users_cfg: the users config (for the gate's re-learned embeddings).
        embeddings: the users stage's embeddings; read from area ``users`` when None.
        version: checkpoint version.

    Raises:
        PreferenceGateError: held-out AUC below the floor; nothing is saved.
    """
    impressions = layout.IMPRESSIONS.read(store, ds)
    catalog = layout.CATALOG.read(store, ds)
    category_by_item = dict(
        zip(catalog.column("item_id").to_pylist(), catalog.column("category").to_pylist(), strict=True)
    )
    embeddings = embeddings or load_user_embeddings(store, ds)
    attributes = cover_attributes(store, impressions.column("cover_uri").to_pylist())
    model = train_preference_model(impressions, embeddings, attributes, category_by_item, cfg, users_cfg)
    uri = model.save(store, version or ds)
    assert model.stats is not None  # save() refuses a model without them
    return BuiltReward(KIND, version or ds, uri, model.stats, model.metrics, model)


def load_preference_reward_fn(
    store: ObjectStore,
    version: str = "latest",
    centroids: Mapping[int, np.ndarray] | None = None,
    standardize: bool = True,
) -> RewardFn:
    """The saved preference reward of ``version``; pass the segment centroids to score by ``segment_id``."""
    return preference_reward_fn(PreferenceModel.load(store, version), centroids, standardize)
