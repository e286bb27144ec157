"""User embeddings and user segments, learned from the validated impression logs (docs/architecture.md, "The method").

A user's embedding is two blocks, each standardized so that neither dominates by accident of scale:

- **collaborative** (``collab_dim = embedding_dim - A`` values, ``A = len(ATTRIBUTE_NAMES)``): BPR matrix factorization in torch over (user, item)
  clicks. For each click (u, i) a negative item j is drawn -- with probability
  ``bpr_skip_negative_share`` among the items u was shown and skipped (an observed "no"), otherwise
  uniformly from the catalog -- and ``-log sigmoid(x_ui - x_uj)`` is minimized with L2 on the factors.
- **visual preference** (one value per :data:`ATTRIBUTE_NAMES`): the difference between the mean
  attributes of the covers the user clicked and of those they skipped, attributes computed from pixels
  by :func:`pixel_attributes` and standardized over the window's impressions. With ``n1`` clicks and
  ``n0`` skips the difference is shrunk toward 0 by ``n_eff / (n_eff + visual_prior_impressions)``,
  ``n_eff = n1*n0/(n1+n0)``, so a user with a handful of impressions has a near-neutral taste.

Embedding = ``[collab / sqrt(collab_dim), visual_weight * visual / sqrt(A)]`` after z-scoring every
column over users, so the collaborative block has total variance 1 and the visual block
``visual_weight**2``: ``visual_weight`` says how much cover taste (what personalized covers can act
on) counts against item taste when users are segmented.

Segments: k-means (scikit-learn, seeded, ``kmeans_restarts`` restarts) over the embeddings. The ids
are then matched to the previous day's segments with the Hungarian method
(``scipy.optimize.linear_sum_assignment``) so they do not shuffle night to night: on the overlap of
users (a new segment takes the id of the old segment it shares most users with), or, when no users
overlap, on centroid distance when the embedding spaces agree (same dimension). Clusters left
unmatched (K grew) get fresh ids.

That full re-segmentation runs on a schedule (``resegment_every_days``, weekly by default), on the
first day, and when K changes. The nights between keep yesterday's segments (:func:`keep_segments`):
each user joins the nearest of yesterday's centroids and each centroid becomes its users' mean, so a
segment drifts slowly with its users, and its covers stay while it moved less than the generate
stage's tolerance (:mod:`icg_core.serving.refresh`).

Day to day: BPR factors are only defined up to a rotation, so a retrained collaborative block is
rotated onto the previous day's (orthogonal Procrustes over the users both days share,
:func:`align_to_previous`). Centroids then stay comparable across days, which matters when a run
reuses a generator and reward models trained on an earlier day's embeddings (``skip_training``).
The visual block is not rotated: its columns mean the same attribute every day.

The users stage (:mod:`icg_core.stages.users`) writes ``user_embeddings``, ``user_segments`` and
``segment_centroids`` for each day. Embeddings may instead be imported
from a platform's Parquet table (user_id, embedding) with ``UsersConfig.import_uri``. Nothing here
reads the embedded world's hidden truth.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.optimize import linear_sum_assignment
from sklearn.cluster import KMeans

from icg_core import layout
from icg_core.config import USER_VISUAL_ATTRIBUTES, UsersConfig
from icg_core.data.images import read_images
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

MODEL_NAME = "users"
ATTRIBUTE_NAMES = USER_VISUAL_ATTRIBUTES  # one definition, in the config (UsersConfig sizes by it)
ATTRIBUTE_SIZE = 64  # covers are resized to this square side before measuring, whatever their size
_READ_CHUNK = 2048  # covers decoded at once by cover_attributes (bounds memory on big catalogs)
_LUMA = np.array([0.2126, 0.7152, 0.0722], dtype=np.float32)  # Rec. 709 luma weights


# ----------------------------------------------------------------------------- pixel attributes
def pixel_attributes(images: np.ndarray) -> np.ndarray:
    """Global colour/tone attributes of covers, in the order of :data:`ATTRIBUTE_NAMES`.

    On RGB scaled to [0, 1]:
      - warmth: mean of (R - B), in [-1, 1]; warm (red/orange) covers are positive;
      - brightness: mean Rec. 709 luma, in [0, 1];
      - saturation: mean chroma (max - min over R, G, B), in [0, 1];
      - contrast: RMS contrast, the standard deviation of luma over the image, in [0, 0.5].

    Args:
        images: ``uint8 [B, H, W, 3]``.

    Returns:
        ``float32 [B, 4]``.
    """
    out = np.zeros((len(images), len(ATTRIBUTE_NAMES)), dtype=np.float32)
    for start in range(0, len(images), 256):  # bounds the float copy held at once
        x = torch.from_numpy(np.ascontiguousarray(images[start : start + 256])).permute(0, 3, 1, 2)
        out[start : start + 256] = pixel_attributes_tensor(x.float() / 255.0).numpy()
    return out


def pixel_attributes_tensor(images: torch.Tensor) -> torch.Tensor:
    """:func:`pixel_attributes` as a differentiable function (reward guidance steers covers along it).

    Args:
        images: ``float [B, 3, H, W]`` in [0, 1].

    Returns:
        ``[B, 4]`` in the order of :data:`ATTRIBUTE_NAMES`.
    """
    luma = torch.einsum("bchw,c->bhw", images, torch.as_tensor(_LUMA, device=images.device))
    return torch.stack(
        [
            (images[:, 0] - images[:, 2]).mean(dim=(1, 2)),
            luma.mean(dim=(1, 2)),
            (images.amax(dim=1) - images.amin(dim=1)).mean(dim=(1, 2)),
            luma.flatten(1).std(dim=1, correction=0),
        ],
        dim=1,
    )


def cover_attributes(store: ObjectStore, uris: Sequence[str]) -> dict[str, np.ndarray]:
    """:func:`pixel_attributes` of each distinct cover URI, read from the store at :data:`ATTRIBUTE_SIZE`."""
    unique = list(dict.fromkeys(uris))
    out: dict[str, np.ndarray] = {}
    for start in range(0, len(unique), _READ_CHUNK):
        chunk = unique[start : start + _READ_CHUNK]
        out.update(zip(chunk, pixel_attributes(read_images(store, chunk, ATTRIBUTE_SIZE)), strict=True))
    return out


# ----------------------------------------------------------------------------- embeddings
@dataclass
class UserEmbeddings:
    """Embeddings of the users of one window, plus what is needed to interpret them."""

    user_ids: np.ndarray  # [U] str
    embeddings: np.ndarray  # [U, D] float32
    model_version: str
    attribute_mean: np.ndarray | None = None  # [A] cover-attribute standardization of the visual block
    attribute_std: np.ndarray | None = None
    item_ids: np.ndarray | None = None  # [I] items of the BPR model
    item_factors: np.ndarray | None = None  # [I, collab_dim]
    bpr_losses: list[float] = field(default_factory=list)  # mean loss per epoch
    source: str = "learned"  # "learned" or "imported"

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def lookup(self, user_ids: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(rows ``[B]`` of ``embeddings``, known mask ``[B]``); unknown users get row 0 and False."""
        index = {uid: i for i, uid in enumerate(self.user_ids.tolist())}
        rows = np.array([index.get(str(u), -1) for u in user_ids], dtype=np.int64)
        return np.maximum(rows, 0), rows >= 0


def model_version(ds: str, cfg: UsersConfig) -> str:
    digest = hashlib.sha256(cfg.model_dump_json().encode()).hexdigest()[:8]
    return f"{ds}-{digest}"


def train_bpr(
    user_index: np.ndarray,
    item_index: np.ndarray,
    clicked: np.ndarray,
    n_users: int,
    n_items: int,
    cfg: UsersConfig,
) -> tuple[np.ndarray, np.ndarray, list[float]]:
    """BPR matrix factorization over clicks, with skipped impressions as preferred negatives.

    Args:
        user_index, item_index: ``int [N]`` rows of each impression's user and item.
        clicked: ``bool [N]``.
        n_users, n_items: sizes of the factor tables.
        cfg: factors, epochs, learning rate, L2, negative sampling share, seed.

    Returns:
        (user factors ``[n_users, collab_dim]``, item factors ``[n_items, collab_dim]``, mean loss per epoch).
    """
    rng = np.random.default_rng(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    users_pos, items_pos = user_index[clicked], item_index[clicked]
    # Each user's skipped items as one sorted array with offsets: a skip is drawn by a random offset.
    skip_order = np.argsort(user_index[~clicked], kind="stable")
    skip_items = item_index[~clicked][skip_order]
    skip_counts = np.bincount(user_index[~clicked], minlength=n_users)
    skip_start = np.concatenate([[0], np.cumsum(skip_counts)[:-1]])
    user_emb = torch.nn.Embedding(n_users, cfg.collab_dim)
    item_emb = torch.nn.Embedding(n_items, cfg.collab_dim)
    for table in (user_emb, item_emb):
        torch.nn.init.normal_(table.weight, std=0.1, generator=generator)
    optimizer = torch.optim.Adam([user_emb.weight, item_emb.weight], lr=cfg.bpr_lr)
    losses: list[float] = []
    if len(users_pos) == 0:
        log.warning("stage=users bpr: no clicks in the window; collaborative factors stay at their init")
    for _ in range(cfg.bpr_epochs if len(users_pos) else 0):
        order = rng.permutation(len(users_pos))
        total, steps = 0.0, 0
        for start in range(0, len(order), cfg.bpr_batch_size):
            rows = order[start : start + cfg.bpr_batch_size]
            u, i = users_pos[rows], items_pos[rows]
            negatives = rng.integers(n_items, size=len(rows))
            from_skips = (rng.random(len(rows)) < cfg.bpr_skip_negative_share) & (skip_counts[u] > 0)
            offsets = (rng.random(len(rows)) * np.maximum(skip_counts[u], 1)).astype(np.int64)
            negatives[from_skips] = skip_items[skip_start[u] + offsets][from_skips]
            pu = user_emb(torch.from_numpy(u))
            qi, qj = item_emb(torch.from_numpy(i)), item_emb(torch.from_numpy(negatives))
            margin = (pu * (qi - qj)).sum(dim=1)
            loss = -torch.nn.functional.logsigmoid(margin).mean()
            loss = loss + cfg.bpr_l2 * (pu.pow(2).sum() + qi.pow(2).sum() + qj.pow(2).sum()) / len(rows)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += loss.item()
            steps += 1
        losses.append(total / max(steps, 1))
    return user_emb.weight.detach().numpy().copy(), item_emb.weight.detach().numpy().copy(), losses


def visual_preferences(
    user_index: np.ndarray, attributes: np.ndarray, clicked: np.ndarray, n_users: int, prior: float
) -> np.ndarray:
    """Shrunk clicked-minus-skipped mean cover attributes per user.

    Args:
        user_index: ``int [N]`` user row of each impression.
        attributes: ``[N, A]`` standardized attributes of the cover shown.
        clicked: ``bool [N]``.
        n_users: number of user rows.
        prior: pseudo-count of the shrinkage toward 0 (see the module docstring).

    Returns:
        ``float32 [n_users, A]``; 0 for users without both a click and a skip.
    """
    y = clicked.astype(np.float64)
    n1 = np.bincount(user_index, weights=y, minlength=n_users)
    n0 = np.bincount(user_index, weights=1.0 - y, minlength=n_users)
    columns = []
    for a in range(attributes.shape[1]):
        s1 = np.bincount(user_index, weights=attributes[:, a] * y, minlength=n_users)
        s0 = np.bincount(user_index, weights=attributes[:, a] * (1.0 - y), minlength=n_users)
        columns.append(s1 / np.maximum(n1, 1) - s0 / np.maximum(n0, 1))
    gap = np.stack(columns, axis=1)
    n_eff = n1 * n0 / np.maximum(n1 + n0, 1)
    shrink = n_eff / np.maximum(n_eff + prior, 1e-12)  # 0 when a user has no click or no skip
    return (gap * shrink[:, None]).astype(np.float32)


def _zscore(block: np.ndarray) -> np.ndarray:
    return (block - block.mean(axis=0)) / np.maximum(block.std(axis=0), 1e-6)


def train_user_embeddings(
    impressions: pa.Table, attributes_by_uri: Mapping[str, np.ndarray], cfg: UsersConfig, model_version: str
) -> UserEmbeddings:
    """Learn the embedding of every user with at least one impression in ``impressions``.

    Args:
        impressions: validated impressions (user_id, item_id, cover_uri, clicked, ...).
        attributes_by_uri: :func:`cover_attributes` of every ``cover_uri`` in ``impressions``.
        cfg: the users config.
        model_version: recorded with the embeddings.

    Returns:
        :class:`UserEmbeddings` with ``embeddings`` of shape ``[U, embedding_dim]``.
    """
    if impressions.num_rows == 0:
        raise ValueError("no impressions in the window: user embeddings cannot be learned")
    user_ids, user_index = np.unique(
        np.asarray(impressions.column("user_id").to_pylist()), return_inverse=True
    )
    item_ids, item_index = np.unique(
        np.asarray(impressions.column("item_id").to_pylist()), return_inverse=True
    )
    clicked = np.asarray(impressions.column("clicked").to_numpy(zero_copy_only=False), dtype=bool)
    uris = impressions.column("cover_uri").to_pylist()
    missing = {u for u in uris if u not in attributes_by_uri}
    if missing:
        raise KeyError(f"{len(missing)} cover URIs have no attributes, e.g. {sorted(missing)[:3]}")
    attributes = np.stack([attributes_by_uri[u] for u in uris]).astype(np.float64)
    attribute_mean, attribute_std = attributes.mean(axis=0), np.maximum(attributes.std(axis=0), 1e-6)
    standardized = (attributes - attribute_mean) / attribute_std

    user_factors, item_factors, losses = train_bpr(
        user_index, item_index, clicked, len(user_ids), len(item_ids), cfg
    )
    visual = visual_preferences(
        user_index, standardized, clicked, len(user_ids), cfg.visual_prior_impressions
    )
    embeddings = np.concatenate(
        [
            _zscore(user_factors) / np.sqrt(cfg.collab_dim),
            cfg.visual_weight * _zscore(visual) / np.sqrt(visual.shape[1]),
        ],
        axis=1,
    ).astype(np.float32)
    log.info(
        "stage=users embeddings users=%d items=%d impressions=%d clicks=%d dim=%d bpr_loss=%s",
        len(user_ids),
        len(item_ids),
        len(clicked),
        int(clicked.sum()),
        embeddings.shape[1],
        f"{losses[0]:.4f}->{losses[-1]:.4f}" if losses else "n/a",
    )
    return UserEmbeddings(
        user_ids=user_ids.astype(str),
        embeddings=embeddings,
        model_version=model_version,
        attribute_mean=attribute_mean.astype(np.float32),
        attribute_std=attribute_std.astype(np.float32),
        item_ids=item_ids.astype(str),
        item_factors=item_factors,
        bpr_losses=losses,
    )


@dataclass
class Alignment:
    """How a day's collaborative block was rotated onto the previous day's (see :func:`align_to_previous`)."""

    to_ds: str | None  # the previous day aligned to; None = not aligned
    shared_users: int = 0
    residual_before: float | None = None  # ||A - B|| / ||B|| over shared users, before the rotation
    residual_after: float | None = None  # the same after it (0 = the two days agree exactly)


def align_to_previous(
    embeddings: UserEmbeddings,
    previous: UserEmbeddings | None,
    collab_dim: int,
    previous_ds: str | None = None,
) -> tuple[UserEmbeddings, Alignment]:
    """Rotate the collaborative block (first ``collab_dim`` columns) onto ``previous``'s.

    The rotation is the orthogonal Procrustes solution over the users present both days; it is
    applied to every user. Skipped (returned unchanged) when there is no previous day, the widths
    differ, or fewer than ``2 * collab_dim`` users are shared (too few to pin a rotation down).

    Returns:
        (the aligned embeddings, what was done).
    """
    if previous is None or previous.dim != embeddings.dim or collab_dim <= 0:
        return embeddings, Alignment(to_ds=None)
    previous_row = {u: i for i, u in enumerate(previous.user_ids.tolist())}
    shared = [(i, previous_row[u]) for i, u in enumerate(embeddings.user_ids.tolist()) if u in previous_row]
    if len(shared) < 2 * collab_dim:
        return embeddings, Alignment(to_ds=None, shared_users=len(shared))
    today_rows, previous_rows = (np.array(rows) for rows in zip(*shared, strict=True))
    today = embeddings.embeddings[today_rows, :collab_dim].astype(np.float64)
    before = previous.embeddings[previous_rows, :collab_dim].astype(np.float64)
    rotation, _ = orthogonal_procrustes(today, before)
    scale = max(float(np.linalg.norm(before)), 1e-12)
    aligned = embeddings.embeddings.copy()
    aligned[:, :collab_dim] = (aligned[:, :collab_dim].astype(np.float64) @ rotation).astype(np.float32)
    alignment = Alignment(
        to_ds=previous_ds,
        shared_users=len(shared),
        residual_before=round(float(np.linalg.norm(today - before)) / scale, 4),
        residual_after=round(float(np.linalg.norm(today @ rotation - before)) / scale, 4),
    )
    return replace(embeddings, embeddings=aligned), alignment


def import_user_embeddings(store: ObjectStore, uri: str, model_version: str | None = None) -> UserEmbeddings:
    """Read a platform's own embeddings: a Parquet file or folder with columns user_id, embedding.

    Args:
        store: the object store (used when ``uri`` lies under its root, e.g. on S3 with its endpoint).
        uri: ``file://``/``s3://`` URI or local path of the table.
        model_version: recorded version; defaults to ``"imported-<sha of the uri>"``.
    """
    if uri.startswith(store.root + "/"):  # under the store's root (e.g. on S3 with its endpoint)
        table = pq.read_table(store.arrow_path(store.key(uri)), filesystem=store.fs)
    else:  # a path or URI of its own
        filesystem, path = pafs.FileSystem.from_uri(uri) if "://" in uri else (None, uri)
        table = pq.read_table(path, filesystem=filesystem)
    for column in ("user_id", "embedding"):
        if column not in table.column_names:
            raise ValueError(
                f"imported embeddings {uri}: missing column {column!r} (found {table.column_names})"
            )
    user_ids = np.asarray(table.column("user_id").to_pylist(), dtype=str)
    if len(set(user_ids.tolist())) != len(user_ids):
        raise ValueError(f"imported embeddings {uri}: duplicate user_id values")
    rows = table.column("embedding").to_pylist()
    if not rows or len({len(r) for r in rows}) != 1:
        raise ValueError(f"imported embeddings {uri}: embeddings must be non-empty lists of one fixed length")
    embeddings = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(embeddings).all():
        raise ValueError(f"imported embeddings {uri}: non-finite values")
    version = model_version or "imported-" + hashlib.sha256(uri.encode()).hexdigest()[:8]
    log.info(
        "stage=users imported embeddings users=%d dim=%d from %s", len(user_ids), embeddings.shape[1], uri
    )
    return UserEmbeddings(user_ids=user_ids, embeddings=embeddings, model_version=version, source="imported")


# ----------------------------------------------------------------------------- segments
@dataclass
class Segments:
    """Segment of each user and the centroid of each segment id."""

    user_ids: np.ndarray  # [U] str
    segment_ids: np.ndarray  # [U] int32, stable ids
    centroids: dict[int, np.ndarray]  # segment id -> [D]
    matched_by: (
        str  # "users", "centroids", "none" (new k-means), or "kept" (yesterday's segments, re-averaged)
    )

    def centroid_matrix(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids ``[K]`` sorted, centroids ``[K, D]`` in that order)."""
        ids = np.array(sorted(self.centroids), dtype=np.int32)
        return ids, np.stack([self.centroids[i] for i in ids.tolist()])


def kmeans(embeddings: np.ndarray, k: int, seed: int, restarts: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded k-means: (labels ``[U]`` in [0, k), centroids ``[k, D]``); ``k`` is capped at the user count."""
    k = max(1, min(k, len(embeddings)))
    model = KMeans(n_clusters=k, n_init=restarts, random_state=seed).fit(embeddings.astype(np.float64))
    return model.labels_.astype(np.int64), model.cluster_centers_.astype(np.float32)


def match_segment_ids(
    labels: np.ndarray,
    centroids: np.ndarray,
    user_ids: np.ndarray,
    previous: Segments | None,
) -> tuple[np.ndarray, str]:
    """Stable id for each new cluster, matched to ``previous`` with the Hungarian method.

    Args:
        labels: ``[U]`` new cluster of each user, in [0, K).
        centroids: ``[K, D]`` new centroids.
        user_ids: ``[U]`` users, aligned with ``labels``.
        previous: the previous day's segments, or None.

    Returns:
        (``[K]`` id of each new cluster, how it was matched: ``"users"``, ``"centroids"`` or ``"none"``).
    """
    k = len(centroids)
    if previous is None or not previous.centroids:
        return np.arange(k), "none"
    prev_ids, prev_centroids = previous.centroid_matrix()
    prev_of = dict(zip(previous.user_ids.tolist(), previous.segment_ids.tolist(), strict=True))
    shared = np.array([u in prev_of for u in user_ids.tolist()])
    if shared.any():
        # Maximize users kept in "their" segment: cost = -overlap of (new cluster, old segment).
        prev_col = {sid: j for j, sid in enumerate(prev_ids.tolist())}
        overlap = np.zeros((k, len(prev_ids)))
        old = np.array([prev_col[prev_of[u]] for u in user_ids[shared].tolist()])
        np.add.at(overlap, (labels[shared], old), 1.0)
        cost, how = -overlap, "users"
    elif prev_centroids.shape[1] == centroids.shape[1]:
        cost = ((centroids[:, None, :] - prev_centroids[None, :, :]) ** 2).sum(axis=2)
        how = "centroids"
    else:
        return np.arange(k), "none"
    rows, cols = linear_sum_assignment(cost)
    ids = np.full(k, -1, dtype=np.int64)
    ids[rows] = prev_ids[cols]
    fresh = iter(range(int(prev_ids.max()) + 1, int(prev_ids.max()) + 1 + k))
    ids[ids < 0] = [next(fresh) for _ in range(int((ids < 0).sum()))]
    return ids, how


def assign_segments(
    embeddings: UserEmbeddings, cfg: UsersConfig, previous: Segments | None = None
) -> Segments:
    """k-means segments of ``embeddings`` with ids matched to ``previous`` (see the module docstring)."""
    labels, centroids = kmeans(embeddings.embeddings, cfg.n_segments, cfg.seed, cfg.kmeans_restarts)
    ids, how = match_segment_ids(labels, centroids, embeddings.user_ids, previous)
    return Segments(
        user_ids=embeddings.user_ids,
        segment_ids=ids[labels].astype(np.int32),
        centroids={int(ids[c]): centroids[c] for c in range(len(centroids))},
        matched_by=how,
    )


def resegment_today(ds: str, every_days: int, previous: Segments | None, k: int, dim: int) -> bool:
    """Whether ``ds`` runs a full k-means: on schedule (every ``every_days`` days), or when nothing can be kept."""
    if previous is None or len(previous.centroids) != k or every_days <= 1:
        return True
    if any(c.shape != (dim,) for c in previous.centroids.values()):
        return True
    return dt.date.fromisoformat(ds).toordinal() % every_days == 0


def keep_segments(embeddings: UserEmbeddings, previous: Segments) -> Segments:
    """Yesterday's segments on today's embeddings: nearest centroid per user, then each centroid its users' mean.

    One k-means step from yesterday's centroids, ids unchanged; a segment left without users keeps
    yesterday's centroid.
    """
    ids, centroids = previous.centroid_matrix()
    vectors = embeddings.embeddings.astype(np.float32)
    # ||x - c||^2 up to the per-user constant ||x||^2: [U, K], never [U, K, D]
    labels = ((centroids**2).sum(axis=1)[None, :] - 2.0 * vectors @ centroids.T).argmin(axis=1)
    moved = {
        int(ids[c]): vectors[labels == c].mean(axis=0) if np.any(labels == c) else centroids[c]
        for c in range(len(ids))
    }
    return Segments(embeddings.user_ids, ids[labels].astype(np.int32), moved, matched_by="kept")


def load_segments(store: ObjectStore, ds: str) -> Segments:
    """The segments written for ``ds``."""
    assignments = layout.USER_SEGMENTS.read(store, ds)
    centroids = layout.SEGMENT_CENTROIDS.read(store, ds)
    return Segments(
        user_ids=np.asarray(assignments.column("user_id").to_pylist(), dtype=str),
        segment_ids=np.asarray(assignments.column("segment_id").to_pylist(), dtype=np.int32),
        centroids={
            int(s): np.asarray(c, dtype=np.float32)
            for s, c in zip(
                centroids.column("segment_id").to_pylist(),
                centroids.column("centroid").to_pylist(),
                strict=True,
            )
        },
        matched_by="stored",
    )


def load_user_embeddings(store: ObjectStore, ds: str) -> UserEmbeddings:
    """The embeddings written for ``ds``."""
    table = layout.USER_EMBEDDINGS.read(store, ds)
    versions = set(table.column("model_version").to_pylist())
    return UserEmbeddings(
        user_ids=np.asarray(table.column("user_id").to_pylist(), dtype=str),
        embeddings=np.asarray(table.column("embedding").to_pylist(), dtype=np.float32),
        model_version=versions.pop() if len(versions) == 1 else ",".join(sorted(versions)),
        source="stored",
    )


def previous_segments(store: ObjectStore, ds: str) -> tuple[str | None, Segments | None]:
    """The latest segments written for a day before ``ds``: (its ds, segments), or (None, None)."""
    earlier = [d for d in layout.SEGMENT_CENTROIDS.days(store) if d < ds]
    earlier = [d for d in earlier if layout.USER_SEGMENTS.exists(store, d)]
    return (earlier[-1], load_segments(store, earlier[-1])) if earlier else (None, None)
