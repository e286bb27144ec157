"""The embedded world's hidden truth: who clicks which cover, and why (docs/architecture.md, "The embedded world and its oracle").

The oracle is the exact generative model of the simulator's clicks. For user ``u`` shown image ``x``::

    logit = base_click_logit + affinity[u] . category_scores(x)
            + taste_strength * taste[u] . (image_attributes(x) - attribute_mean) / attribute_std
    p     = (1 - click_noise) * sigmoid(logit) + click_noise * sigmoid(base_click_logit)

Everything about ``x`` is computed from its pixels, so the oracle scores any image, including
generated covers. Its state lives under the object prefix ``oracle/``, apart from the raw tables.

Only the simulator and evaluation code may import this module or read ``oracle/``: training,
rewards and segmentation must learn from the logs alone (``tests/icg_core/test_oracle_isolation.py``).
"""

from __future__ import annotations

import io
import logging
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world import drawing

log = logging.getLogger(__name__)

WORLD_FILE, USERS_FILE, CLASSIFIER_FILE = "world.json", "users.npz", "category_classifier.npz"
STATE_VERSION = 1
# Fresh renders per category the category classifier is fitted on.
CLASSIFIER_RENDERS_PER_CATEGORY = 160
_ORIENTATION_BINS = 12
_RADIAL_EDGES = np.array([0.02, 0.05, 0.09, 0.14, 0.21, 0.3, 0.45, 0.75, 1.5])  # fraction of Nyquist


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


# ------------------------------------------------------------------------- shape descriptor
def _principal_field(images: np.ndarray) -> np.ndarray:
    """Project each image's pixels on its main colour axis and standardize: ``float32 [B, S, S]``.

    The motif is two colours, so the first principal component of the pixel colours separates
    them whatever the palette (even iso-luminant ones): the field is colour-invariant.
    """
    pixels = images.astype(np.float32)
    centred = pixels - pixels.mean(axis=(1, 2), keepdims=True)
    cov = np.einsum("bhwc,bhwd->bcd", centred, centred)
    axis = np.linalg.eigh(cov)[1][:, :, -1]
    field = np.einsum("bhwc,bc->bhw", centred, axis)
    return field / np.maximum(field.std(axis=(1, 2), keepdims=True), 1e-3)


def _binned_sum(index: np.ndarray, weight: np.ndarray, n_bins: int) -> np.ndarray:
    """Per-image histograms: ``index``/``weight`` ``[B, P]`` -> ``[B, n_bins]``."""
    rows = len(index)
    flat = (index + n_bins * np.arange(rows)[:, None]).ravel()
    return np.bincount(flat, weights=weight.ravel(), minlength=rows * n_bins).reshape(rows, n_bins)


def _spectral_bins(size: int) -> np.ndarray:
    """Polar bin (orientation x radius) of every FFT frequency of a ``size`` image; -1 = excluded."""
    freq = np.fft.fftfreq(size)
    fy, fx = np.meshgrid(freq, freq, indexing="ij")
    radius = np.hypot(fx, fy) / 0.5
    angle = np.arctan2(fy, fx) % np.pi
    orientation = np.round(angle / (np.pi / _ORIENTATION_BINS)).astype(int) % _ORIENTATION_BINS
    ring = np.searchsorted(_RADIAL_EDGES, radius, side="right") - 1
    valid = (ring >= 0) & (ring < len(_RADIAL_EDGES) - 1)
    return np.where(valid, orientation * (len(_RADIAL_EDGES) - 1) + ring, -1)


def shape_descriptor(images: np.ndarray, batch: int = 256) -> np.ndarray:
    """Colour-invariant shape features of square images, ``float64 [B, F]``.

    Features: gradient-orientation histogram (magnitude-weighted, 12 bins over 180 degrees),
    orientation coherence for 2-, 4- and 6-fold symmetry, edge density, polar histogram of the
    windowed FFT power (12 orientations x 8 radial bands), spectral peakiness, and the shape of the
    field's value distribution (|skew|, kurtosis). Histograms enter as square roots (Hellinger).

    Args:
        images: ``uint8 [B, S, S, 3]``.
        batch: images processed at once (bounds memory).
    """
    size = images.shape[1]
    bins = _spectral_bins(size).ravel()
    n_polar = _ORIENTATION_BINS * (len(_RADIAL_EDGES) - 1)
    window = np.outer(np.hanning(size), np.hanning(size)).astype(np.float32)
    bin_angles = np.arange(_ORIENTATION_BINS) * np.pi / _ORIENTATION_BINS
    chunks = []
    for start in range(0, len(images), batch):
        field = _principal_field(images[start : start + batch])
        rows = len(field)
        gy = (field[:, 2:, 1:-1] - field[:, :-2, 1:-1]).reshape(rows, -1)
        gx = (field[:, 1:-1, 2:] - field[:, 1:-1, :-2]).reshape(rows, -1)
        magnitude = np.hypot(gx, gy)
        angle = np.arctan2(gy, gx) % np.pi
        orientation = np.round(angle / (np.pi / _ORIENTATION_BINS)).astype(int) % _ORIENTATION_BINS
        total = np.maximum(magnitude.sum(axis=1, keepdims=True), 1e-6)
        orientation_hist = _binned_sum(orientation, magnitude, _ORIENTATION_BINS) / total
        # Fourier coefficients of the orientation histogram: how 2-, 4-, 6-fold symmetric the edges are.
        coherence = np.abs(orientation_hist @ np.exp(2j * np.outer(bin_angles, [1, 2, 3])))
        spectrum = np.fft.fft2(field * window)
        power = spectrum.real**2 + spectrum.imag**2
        power = power.reshape(rows, -1)[:, bins >= 0]
        polar = _binned_sum(np.broadcast_to(bins[bins >= 0], power.shape), power, n_polar)
        polar /= np.maximum(polar.sum(axis=1, keepdims=True), 1e-9)
        top_k = max(1, power.shape[1] // 100)
        top = np.partition(power, -top_k, axis=1)[:, -top_k:].sum(axis=1)
        peakiness = top / np.maximum(power.sum(axis=1), 1e-9)
        values = field.reshape(rows, -1)
        squared = values * values
        skew = np.abs((squared * values).mean(axis=1))
        kurtosis = (squared * squared).mean(axis=1)
        chunks.append(
            np.column_stack(
                [
                    np.sqrt(orientation_hist),
                    coherence,
                    magnitude.mean(axis=1),
                    np.sqrt(polar),
                    peakiness,
                    skew,
                    kurtosis,
                ]
            )
        )
    if not chunks:
        return np.zeros((0, _ORIENTATION_BINS + 3 + 1 + n_polar + 3))
    return np.concatenate(chunks).astype(np.float64)


# ------------------------------------------------------------------------- category classifier
@dataclass(frozen=True)
class CategoryClassifier:
    """Multinomial logistic regression on :func:`shape_descriptor` features.

    Attributes:
        feature_mean, feature_scale: ``[F]`` standardization of the features.
        coef: ``[C, F]`` weights; intercept: ``[C]``.
    """

    feature_mean: np.ndarray
    feature_scale: np.ndarray
    coef: np.ndarray
    intercept: np.ndarray

    @classmethod
    def fit(cls, n_categories: int, image_size: int, rng: np.random.Generator) -> CategoryClassifier:
        """Fit on fresh renders of the first ``n_categories`` motifs.

        Training renders use wider jitter than the logged variants, and about a third of them are
        drawn at another resolution (0.75x, 1.5x, 2x), resized back and given pixel noise, so scores
        hold up on covers that come back from a generator blurred, noisy or at another size.
        """
        from sklearn.linear_model import LogisticRegression  # here: loading an oracle needs no sklearn

        per = CLASSIFIER_RENDERS_PER_CATEGORY
        motif = np.repeat(np.arange(n_categories), per)
        rng.shuffle(motif)
        params = drawing.sample_cover_params(rng, motif)
        factors = rng.choice([1.0, 0.75, 1.5, 2.0], size=len(motif), p=[0.64, 0.12, 0.12, 0.12])
        images = np.zeros((len(motif), image_size, image_size, 3), dtype=np.uint8)
        for factor in np.unique(factors):
            pick = np.flatnonzero(factors == factor)
            drawn = drawing.render_covers(params.take(pick), max(16, int(round(image_size * factor))))
            if factor != 1.0:
                drawn = drawing.resize_images(drawn, image_size).astype(np.float32)
                drawn = np.clip(np.round(drawn + rng.normal(0.0, 4.0, drawn.shape)), 0, 255).astype(np.uint8)
            images[pick] = drawn
        images = drawing.apply_jitter(images, drawing.sample_jitter(rng, len(motif), scale=1.3))
        features = shape_descriptor(images)
        mean, scale = features.mean(axis=0), np.maximum(features.std(axis=0), 1e-6)
        model = LogisticRegression(C=1.0, max_iter=3000)
        model.fit((features - mean) / scale, motif)
        log.info(
            "stage=world fitted category classifier categories=%d renders=%d train_accuracy=%.3f",
            n_categories,
            len(motif),
            model.score((features - mean) / scale, motif),
        )
        return cls(mean, scale, model.coef_.astype(np.float64), model.intercept_.astype(np.float64))

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        """Category probabilities ``[B, C]`` from descriptor features ``[B, F]``."""
        logits = ((features - self.feature_mean) / self.feature_scale) @ self.coef.T + self.intercept
        logits -= logits.max(axis=1, keepdims=True)
        expd = np.exp(logits)
        return expd / expd.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------- users
def sample_taste_groups(world: WorldConfig, rng: np.random.Generator) -> np.ndarray:
    """Unit-norm taste-group centres ``[G, n_attrs]`` spanning both directions of every attribute.

    For each attribute a random half of the groups likes it high and the rest low (so with any
    ``G >= 2`` some group prefers dark, some muted, some low-contrast, some cool covers), with
    magnitudes in [0.4, 1] before normalization.
    """
    groups, n_attrs = world.n_taste_groups, len(drawing.ATTRIBUTES)
    signs = np.ones((groups, n_attrs))
    for attr in range(n_attrs):
        signs[rng.permutation(groups)[: groups // 2], attr] = -1.0
    centres = signs * rng.uniform(0.4, 1.0, (groups, n_attrs))
    return centres / np.linalg.norm(centres, axis=1, keepdims=True)


# ------------------------------------------------------------------------- the oracle
@dataclass(frozen=True, eq=False, repr=False)
class Oracle:
    """Hidden users and the click model of one embedded world.

    Attributes:
        user_ids: ``[U]`` ids; taste: ``[U, A]`` taste vectors over :data:`drawing.ATTRIBUTES`;
        user_group: ``[U]`` latent taste group of each user;
        affinity: ``[U, C]`` category affinities (logits);
        group_centres: ``[G, A]``; attribute_mean, attribute_std: ``[A]`` standardization fixed per world
        (over every logged cover variant); categories: category names, in classifier order;
        classifier: pixels -> category probabilities; image_size: side images are scored at.
    """

    user_ids: np.ndarray
    taste: np.ndarray
    user_group: np.ndarray
    affinity: np.ndarray
    group_centres: np.ndarray
    attribute_mean: np.ndarray
    attribute_std: np.ndarray
    categories: tuple[str, ...]
    classifier: CategoryClassifier
    image_size: int
    base_click_logit: float
    taste_strength: float
    click_noise: float
    _index: dict[str, int] = field(init=False)  # user id -> row

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {uid: i for i, uid in enumerate(self.user_ids.tolist())})

    def __repr__(self) -> str:
        return (
            f"Oracle(users={len(self.user_ids)}, taste_groups={len(self.group_centres)}, "
            f"categories={len(self.categories)}, image_size={self.image_size})"
        )

    @classmethod
    def create(
        cls,
        world: WorldConfig,
        *,
        user_ids: Sequence[str],
        categories: Sequence[str],
        classifier: CategoryClassifier,
        variant_attributes: np.ndarray,
        rng: np.random.Generator,
    ) -> Oracle:
        """Draw the hidden users of a world.

        Args:
            world: the world's knobs (taste groups, spread, affinity scale, click model).
            user_ids: ``U`` user ids.
            categories: category names in classifier order.
            classifier: the fitted category classifier.
            variant_attributes: ``[V, A]`` raw attributes of every logged cover variant; their mean
                and std standardize attributes for this world, once and for all.
            rng: source of randomness for the users.
        """
        n_users = len(user_ids)
        centres = sample_taste_groups(world, rng)
        share = rng.dirichlet(np.full(world.n_taste_groups, 4.0))  # mildly unequal group sizes
        group = rng.choice(world.n_taste_groups, size=n_users, p=share)
        taste = centres[group] + rng.normal(0.0, world.taste_spread, (n_users, centres.shape[1]))
        affinity = rng.normal(0.0, world.category_affinity_scale, (n_users, len(categories)))
        return cls(
            user_ids=np.asarray(user_ids, dtype=str),
            taste=taste,
            user_group=group.astype(np.int64),
            affinity=affinity,
            group_centres=centres,
            attribute_mean=variant_attributes.mean(axis=0),
            attribute_std=np.maximum(variant_attributes.std(axis=0), 1e-6),
            categories=tuple(categories),
            classifier=classifier,
            image_size=world.image_size,
            base_click_logit=world.base_click_logit,
            taste_strength=world.taste_strength,
            click_noise=world.click_noise,
        )

    # ------------------------------------------------------------------ persistence
    def save(self, store: ObjectStore) -> list[str]:
        """Write the state under ``oracle/``; returns the keys written."""
        meta = {
            "version": STATE_VERSION,
            "attributes": list(drawing.ATTRIBUTES),
            "categories": list(self.categories),
            "motifs": list(drawing.MOTIFS[: len(self.categories)]),
            "image_size": self.image_size,
            "base_click_logit": self.base_click_logit,
            "taste_strength": self.taste_strength,
            "click_noise": self.click_noise,
            "attribute_mean": self.attribute_mean.tolist(),
            "attribute_std": self.attribute_std.tolist(),
        }
        users = {
            "user_ids": self.user_ids,
            "taste": self.taste,
            "user_group": self.user_group,
            "affinity": self.affinity,
            "group_centres": self.group_centres,
        }
        classifier = {
            name: getattr(self.classifier, name) for name in CategoryClassifier.__dataclass_fields__
        }
        keys = [
            layout.oracle(WORLD_FILE),
            layout.oracle(USERS_FILE),
            layout.oracle(CLASSIFIER_FILE),
        ]
        store.put_bytes(keys[1], _npz_bytes(users))
        store.put_bytes(keys[2], _npz_bytes(classifier))
        store.put_json(keys[0], meta)  # last: its presence means the state is complete
        return keys

    @staticmethod
    def exists(store: ObjectStore) -> bool:
        """Whether ``store``'s root holds an embedded world's oracle (real data has none)."""
        return store.exists(layout.oracle(WORLD_FILE))

    @classmethod
    def load(cls, store: ObjectStore) -> Oracle:
        """Read the oracle of the world generated under ``store``'s root."""
        meta = store.get_json(layout.oracle(WORLD_FILE))
        if meta.get("version") != STATE_VERSION or meta.get("attributes") != list(drawing.ATTRIBUTES):
            raise ValueError(
                f"oracle state under {store.root} has version/attributes this code cannot read: {meta}"
            )
        users = _npz_load(store.get_bytes(layout.oracle(USERS_FILE)))
        classifier = CategoryClassifier(**_npz_load(store.get_bytes(layout.oracle(CLASSIFIER_FILE))))
        return cls(
            user_ids=users["user_ids"],
            taste=users["taste"],
            user_group=users["user_group"],
            affinity=users["affinity"],
            group_centres=users["group_centres"],
            attribute_mean=np.asarray(meta["attribute_mean"]),
            attribute_std=np.asarray(meta["attribute_std"]),
            categories=tuple(meta["categories"]),
            classifier=classifier,
            image_size=int(meta["image_size"]),
            base_click_logit=float(meta["base_click_logit"]),
            taste_strength=float(meta["taste_strength"]),
            click_noise=float(meta["click_noise"]),
        )

    # ------------------------------------------------------------------ users
    def user_index(self, user_ids: Sequence[str]) -> np.ndarray:
        """Row of each user id in the state arrays; raises KeyError naming an unknown id."""
        try:
            return np.array([self._index[str(uid)] for uid in user_ids], dtype=np.int64)
        except KeyError as exc:
            raise KeyError(
                f"user {exc.args[0]!r} is not a user of this world ({len(self._index)} users)"
            ) from None

    def taste_group(self, user_ids: Sequence[str]) -> np.ndarray:
        """Latent taste group of each user, ``int64 [B]``."""
        return self.user_group[self.user_index(user_ids)]

    def taste_vectors(self, user_ids: Sequence[str]) -> np.ndarray:
        """Hidden taste ``[B, A]`` of each user over :data:`drawing.ATTRIBUTES`."""
        return self.taste[self.user_index(user_ids)]

    # ------------------------------------------------------------------ images
    def image_attributes(self, images: Any) -> np.ndarray:
        """Raw attributes ``[B, A]`` (units: :func:`drawing.image_attributes`), resized to ``image_size``."""
        return drawing.image_attributes(drawing.as_image_batch(images, self.image_size))

    def standardized_attributes(self, images: Any) -> np.ndarray:
        """Attributes ``[B, A]`` in standard deviations of this world's cover variants."""
        return (self.image_attributes(images) - self.attribute_mean) / self.attribute_std

    def category_scores(self, images: Any) -> np.ndarray:
        """Category probabilities ``[B, C]`` from pixels alone, after resizing to ``image_size``."""
        batch = drawing.as_image_batch(images, self.image_size)
        return self.classifier.predict_proba(shape_descriptor(batch))

    def _features(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(standardized attributes ``[B, A]``, category scores ``[B, C]``) of a prepared batch."""
        attributes = (drawing.image_attributes(batch) - self.attribute_mean) / self.attribute_std
        return attributes, self.classifier.predict_proba(shape_descriptor(batch))

    # ------------------------------------------------------------------ clicks
    def click_probability_from_features(
        self, user_index: np.ndarray, standardized_attributes: np.ndarray, category_scores: np.ndarray
    ) -> np.ndarray:
        """Click probability ``[B]`` of user rows ``user_index`` on images with precomputed features.

        Args:
            user_index: ``[B]`` rows (see :meth:`user_index`).
            standardized_attributes: ``[B, A]``.
            category_scores: ``[B, C]``.
        """
        logit = (
            self.base_click_logit
            + np.einsum("bc,bc->b", self.affinity[user_index], category_scores)
            + self.taste_strength * np.einsum("ba,ba->b", self.taste[user_index], standardized_attributes)
        )
        floor = self.click_noise * float(_sigmoid(np.asarray(self.base_click_logit, np.float64)))
        return (1.0 - self.click_noise) * _sigmoid(logit) + floor

    def click_probability(self, user_ids: Sequence[str], images: Any) -> np.ndarray:
        """Click probability ``[B]`` of ``user_ids[i]`` shown ``images[i]``.

        Args:
            user_ids: ``B`` user ids.
            images: ``uint8 [B, H, W, 3]`` (or float in [0, 1]) or a list of ``B`` PIL images / arrays.
        """
        batch = drawing.as_image_batch(images, self.image_size)
        if len(batch) != len(user_ids):
            raise ValueError(f"{len(user_ids)} users but {len(batch)} images: pairs are elementwise")
        return self.click_probability_from_features(self.user_index(user_ids), *self._features(batch))

    def expected_ctr(self, user_ids: Sequence[str], image: Any) -> float:
        """Mean click probability of ``user_ids`` (e.g. a segment's users) on one image."""
        batch = drawing.as_image_batch(image, self.image_size)
        if len(batch) != 1:
            raise ValueError(f"expected one image, got {len(batch)}")
        rows = self.user_index(user_ids)
        if not len(rows):
            return float("nan")
        attributes, scores = self._features(batch)
        probability = self.click_probability_from_features(
            rows, np.repeat(attributes, len(rows), axis=0), np.repeat(scores, len(rows), axis=0)
        )
        return float(probability.mean())


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    """An ``.npz`` archive with fixed member timestamps, so equal arrays give equal bytes."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, array in arrays.items():
            member = io.BytesIO()
            np.lib.format.write_array(member, np.asarray(array), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, member.getvalue())
    return buf.getvalue()


def _npz_load(data: bytes) -> dict[str, np.ndarray]:
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        return {name: npz[name] for name in npz.files}
