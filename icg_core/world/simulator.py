"""The embedded world's simulator: writes the raw tables and images a platform would have.

``generate_world`` draws, from ``WorldConfig.seed`` alone:
  - a catalog of items in categories, each category a visual motif plus a title vocabulary;
  - one procedural reference cover per item (``raw/images/reference/<item_id>.png``) and
    ``variants_per_item`` attribute-jittered variants (``raw/images/variants/<item_id>/<k>.png``);
  - hidden users (taste vectors around taste groups, category affinities): the oracle, written
    under ``oracle/`` (see :mod:`icg_core.world.oracle`);
  - ``days`` days of impressions from ``start_date``: which user saw which variant, and whether
    they clicked, drawn from the oracle's click model evaluated on the variant's pixels.

Tables (area ``raw``): ``catalog_items`` partition ``ds=start_date`` holds every item (updated the
day before); each later day's partition holds only the items whose title changed during the
previous day, so the catalog "as of ds" is the latest row per item with ``updated_at < ds``.
``impressions`` partition ``ds=D`` holds the impressions shown during day D (UTC).

Each random stream is seeded by (seed, stream name[, day]), so e.g. adding days does not change the
items, and rerunning a config on the same root rewrites identical tables and image bytes. A rerun
also removes what an earlier, different config left (partitions, images, oracle objects).
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
import time
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from icg_core import layout
from icg_core.config import WorldConfig
from icg_core.storage import ObjectStore
from icg_core.world import drawing
from icg_core.world.oracle import CategoryClassifier, Oracle, shape_descriptor

log = logging.getLogger(__name__)

_DAY = dt.timedelta(days=1)
_IMAGE_CHUNK = 256  # items rendered, encoded and scored at once (bounds memory for big worlds)
_WRITE_THREADS = 8  # object writes in flight (I/O bound; matters on S3)

# Category names and title vocabularies, in motif order (drawing.MOTIFS): the category "space" is
# drawn as concentric rings, "ocean" as horizontal stripes, and so on.
CATEGORY_VOCABULARY: dict[str, tuple[str, ...]] = {
    "space": tuple(
        "nebula orbit comet galaxy star planet rocket lunar cosmic "
        "eclipse astronaut meteor quasar solar voyage gravity horizon signal".split()
    ),
    "ocean": tuple(
        "tide harbor reef wave coral sailor lighthouse current island "
        "anchor drift lagoon shore whale pearl voyage deep".split()
    ),
    "forest": tuple(
        "pine grove fern moss timber trail cedar birch canopy "
        "acorn hollow ranger owl meadow willow bark thicket fox".split()
    ),
    "games": tuple(
        "chess puzzle quest dice arcade rook gambit level "
        "pixel board knight score champion token strategy rival".split()
    ),
    "sports": tuple(
        "sprint goal match league striker court marathon racket "
        "medal coach relay derby finish victory tackle arena".split()
    ),
    "kitchen": tuple(
        "recipe spice bakery pantry kettle citrus harvest supper "
        "pastry garlic honey skillet bread feast saffron".split()
    ),
    "mountains": tuple(
        "summit ridge peak glacier alpine canyon boulder cliff "
        "valley basecamp avalanche pass ascent crag snow".split()
    ),
    "health": tuple(
        "clinic remedy pulse wellness care healing vital therapy "
        "nurse balance breath recovery cure fitness herbal".split()
    ),
    "music": tuple(
        "melody rhythm chorus ballad tempo harmony guitar vinyl "
        "encore anthem jazz echo lullaby sonata drum".split()
    ),
    "travel": tuple(
        "journey passport compass atlas route postcard border caravan "
        "nomad ticket station voyage destination road harbor".split()
    ),
    "architecture": tuple(
        "tower arch facade column atrium bridge vault skyline "
        "dome plaza brick blueprint gallery corridor mosaic".split()
    ),
    "fashion": tuple(
        "silk couture velvet runway denim tailor linen collar "
        "stitch pattern boutique satin cashmere jacket vogue".split()
    ),
}
SHARED_VOCABULARY: tuple[str, ...] = tuple(
    "classic modern little great hidden golden silent last "
    "first secret daily complete essential wild bright".split()
)
CATEGORIES: tuple[str, ...] = tuple(CATEGORY_VOCABULARY)


@dataclass
class WorldSummary:
    """What ``generate_world`` wrote."""

    root: str
    seed: int
    n_items: int
    n_users: int
    n_categories: int
    n_images: int  # references + variants
    table_rows: dict[str, int]  # rows written per raw table, all partitions
    days: int
    ds_list: list[str]  # partitions written (both tables)
    first_nightly_ds: str  # start_date + days: the first day the nightly pipeline runs for
    seconds: float
    mean_ctr: float  # empirical click-through rate of the logged impressions
    mean_click_probability: float  # mean oracle click probability of the logged impressions
    category_accuracy: float  # oracle classifier top-1 accuracy on the reference covers
    removed_stale: dict[str, int] = field(default_factory=dict)  # leftovers of an earlier config, removed

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for the CLI's summary)."""
        return asdict(self)


def check_world(world: WorldConfig) -> None:
    """Raise ValueError naming the knob when a world cannot be generated as configured."""
    problems = []
    if not 2 <= world.n_categories <= len(drawing.MOTIFS):
        problems.append(
            f"n_categories={world.n_categories}: must be in [2, {len(drawing.MOTIFS)}] "
            f"(one distinct motif per category: {', '.join(drawing.MOTIFS)})"
        )
    if world.n_taste_groups < 2:
        problems.append(f"n_taste_groups={world.n_taste_groups}: must be >= 2 so tastes span both directions")
    for name in ("n_items", "n_users", "days", "variants_per_item"):
        if getattr(world, name) < 1:
            problems.append(f"{name}={getattr(world, name)}: must be >= 1")
    if world.impressions_per_day < 0:
        problems.append(f"impressions_per_day={world.impressions_per_day}: must be >= 0")
    if world.image_size < 32:
        problems.append(f"image_size={world.image_size}: must be >= 32 for motifs to stay recognizable")
    for name in ("click_noise", "daily_title_update_fraction"):
        if not 0.0 <= getattr(world, name) <= 1.0:
            problems.append(f"{name}={getattr(world, name)}: must be in [0, 1]")
    for name in ("taste_spread", "category_affinity_scale", "taste_strength"):
        if getattr(world, name) < 0:
            problems.append(f"{name}={getattr(world, name)}: must be >= 0")
    if problems:
        raise ValueError("invalid world config: " + "; ".join(problems))


def _rng(seed: int, stream: str, *extra: int) -> np.random.Generator:
    """An independent generator per (seed, stream[, day]); stable across Python runs (crc32, not hash)."""
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), *extra])


@functools.lru_cache(maxsize=4)
def _category_classifier(seed: int, n_categories: int, image_size: int) -> CategoryClassifier:
    """The world's category classifier, fitted once per process for these three inputs.

    Fitting is a pure function of them, so a process generating several worlds (tests, notebooks,
    sweeps over other knobs) reuses the fit instead of repeating it.
    """
    return CategoryClassifier.fit(n_categories, image_size, _rng(seed, "classifier"))


def _timestamps(day: dt.date, seconds: np.ndarray) -> pa.Array:
    """UTC timestamps ``day 00:00 + seconds`` (microsecond precision)."""
    base = np.datetime64(day.isoformat(), "us")
    values = base + np.round(seconds * 1e6).astype("timedelta64[us]")
    return pa.array(values).cast(pa.timestamp("us", tz="UTC"))


def _titles(rng: np.random.Generator, categories: np.ndarray, avoid: list[str] | None = None) -> list[str]:
    """A 2-4 word title-cased title per item, from its category's vocabulary plus shared words."""
    titles = []
    for i, category in enumerate(categories):
        words = CATEGORY_VOCABULARY[CATEGORIES[category]]
        while True:
            n_words = int(rng.integers(2, 5))
            n_shared = int(rng.random() < 0.35)
            picked = [str(w) for w in rng.choice(words, n_words - n_shared, replace=False)]
            if n_shared:
                picked.insert(0, str(rng.choice(SHARED_VOCABULARY)))
            title = " ".join(w.capitalize() for w in picked)
            if avoid is None or title != avoid[i]:
                titles.append(title)
                break
    return titles


def _render_and_store(
    store: ObjectStore,
    world: WorldConfig,
    item_ids: list[str],
    params: drawing.CoverParams,
    classifier: CategoryClassifier,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Draw, write and score every reference cover and variant, a chunk of items at a time.

    Returns:
        variant attributes ``[N*V, A]`` (raw), variant category scores ``[N*V, C]``, and reference
        category scores ``[N, C]``; variant row ``i * V + k`` is variant ``k`` of item ``i``.
    """
    size, n_variants = world.image_size, world.variants_per_item
    jitter_rng = _rng(world.seed, "variants")
    attributes, scores, reference_scores = [], [], []
    with ThreadPoolExecutor(_WRITE_THREADS) as pool:
        for start in tqdm(
            range(0, len(item_ids), _IMAGE_CHUNK), desc="world images", unit="chunk", disable=None
        ):
            rows = np.arange(start, min(start + _IMAGE_CHUNK, len(item_ids)))
            references = drawing.render_covers(params.take(rows), size)
            variants = drawing.apply_jitter(
                np.repeat(references, n_variants, axis=0),
                drawing.sample_jitter(jitter_rng, len(rows) * n_variants),
            )
            writes = []
            for j, row in enumerate(rows):
                item = item_ids[row]
                writes.append((layout.reference_image(item), references[j]))
                writes.extend(
                    (layout.variant_image(item, k), variants[j * n_variants + k]) for k in range(n_variants)
                )
            list(pool.map(lambda kv: store.put_bytes(kv[0], drawing.encode_png(kv[1])), writes))
            attributes.append(drawing.image_attributes(variants))
            scores.append(classifier.predict_proba(shape_descriptor(variants)))
            reference_scores.append(classifier.predict_proba(shape_descriptor(references)))
    return np.concatenate(attributes), np.concatenate(scores), np.concatenate(reference_scores)


def _catalog_partitions(
    store: ObjectStore,
    world: WorldConfig,
    item_ids: list[str],
    item_category: np.ndarray,
    ds_list: list[dt.date],
) -> dict[str, pa.Table]:
    """The catalog partition of every day: all items on day 0, then each day's title changes."""
    reference_uris = [layout.reference_image(item) for item in item_ids]
    category_names = [CATEGORIES[c] for c in item_category]
    titles = _titles(_rng(world.seed, "titles"), item_category)
    partitions = {}
    for day, ds in enumerate(ds_list):
        rng = _rng(world.seed, "title_updates", day)
        if day == 0:
            changed = np.arange(len(item_ids))
        else:
            changed = np.flatnonzero(rng.random(len(item_ids)) < world.daily_title_update_fraction)
            new_titles = _titles(rng, item_category[changed], avoid=[titles[i] for i in changed])
            for i, title in zip(changed, new_titles, strict=True):
                titles[i] = title
        # Rows dumped on ds were updated during the previous day: updated_at in [ds - 1 day, ds).
        partitions[ds.isoformat()] = pa.table(
            {
                "item_id": pa.array([item_ids[i] for i in changed], pa.string()),
                "title": pa.array([titles[i] for i in changed], pa.string()),
                "category": pa.array([category_names[i] for i in changed], pa.string()),
                "reference_image_uri": pa.array([reference_uris[i] for i in changed], pa.string()),
                "updated_at": _timestamps(ds - _DAY, rng.uniform(0, 86400 - 1e-3, len(changed))),
            }
        )
    return partitions


def _impressions(
    world: WorldConfig,
    day: int,
    ds: dt.date,
    oracle: Oracle,
    activity: np.ndarray,
    item_ids: np.ndarray,
    variant_uris: np.ndarray,
    variant_attributes: np.ndarray,
    variant_scores: np.ndarray,
) -> tuple[pa.Table, np.ndarray]:
    """One day of impressions (sorted by ``shown_at``) and their click probabilities."""
    rng = _rng(world.seed, "impressions", day)
    n = int(rng.poisson(world.impressions_per_day))
    users = rng.choice(len(activity), size=n, p=activity)
    variant = rng.integers(len(variant_uris), size=n)  # uniform over (item, variant) pairs
    seconds = rng.uniform(0, 86400 - 1e-3, n)
    probability = oracle.click_probability_from_features(
        users, variant_attributes[variant], variant_scores[variant]
    )
    clicked = rng.random(n) < probability
    order = np.argsort(seconds, kind="stable")
    users, variant, seconds = users[order], variant[order], seconds[order]
    clicked, probability = clicked[order], probability[order]
    n_variants = world.variants_per_item
    table = pa.table(
        {
            "user_id": pa.array(oracle.user_ids[users].tolist(), pa.string()),
            "item_id": pa.array(item_ids[variant // n_variants].tolist(), pa.string()),
            "cover_uri": pa.array(variant_uris[variant].tolist(), pa.string()),
            "shown_at": _timestamps(ds, seconds),
            "clicked": pa.array(clicked, pa.bool_()),
        }
    )
    return table, probability


def _remove_stale(
    store: ObjectStore, keep_ds: set[str], keep_images: set[str], keep_oracle: set[str]
) -> dict[str, int]:
    """Delete what an earlier config left under this root: other days, items' images, oracle objects."""
    removed = {"partitions": 0, "images": 0, "oracle": 0}
    for table in (layout.RAW_CATALOG, layout.RAW_IMPRESSIONS):
        for ds in table.days(store):
            if ds not in keep_ds:
                table.drop(store, ds)
                removed["partitions"] += 1
    for prefix in (layout.reference_images(), layout.variant_images()):
        for key in store.list(prefix):
            if key not in keep_images:
                store.delete(key)
                removed["images"] += 1
    for key in store.list(layout.oracle_root()):
        if key not in keep_oracle:
            store.delete(key)
            removed["oracle"] += 1
    return removed


def _write_days(
    store: ObjectStore,
    world: WorldConfig,
    ds_list: list[dt.date],
    catalog: dict[str, pa.Table],
    oracle: Oracle,
    item_ids: list[str],
    standardized: np.ndarray,
    variant_scores: np.ndarray,
) -> tuple[dict[str, int], int, float]:
    """Write each day's raw impressions, then its catalog (which marks the day complete).

    Returns:
        (rows written per table, clicks, the sum of click probabilities).
    """
    n_variants = world.variants_per_item
    variant_uris = np.array(
        [layout.variant_image(item, k) for item in item_ids for k in range(n_variants)],
        dtype=object,
    )
    activity = _rng(world.seed, "activity").lognormal(
        0.0, 0.5, world.n_users
    )  # mild skew: some users are busier
    activity /= activity.sum()
    item_id_array = np.array(item_ids, dtype=object)
    rows = {"catalog_items": 0, "impressions": 0}
    clicks, probability_sum = 0, 0.0
    for day, ds in enumerate(tqdm(ds_list, desc="world days", unit="day", disable=None)):
        impressions, probability = _impressions(
            world, day, ds, oracle, activity, item_id_array, variant_uris, standardized, variant_scores
        )
        layout.RAW_IMPRESSIONS.write(store, impressions, ds.isoformat())
        layout.RAW_CATALOG.write(store, catalog[ds.isoformat()], ds.isoformat())
        rows["impressions"] += impressions.num_rows
        rows["catalog_items"] += catalog[ds.isoformat()].num_rows
        clicks += int(np.asarray(impressions.column("clicked")).sum())
        probability_sum += float(probability.sum())
    return rows, clicks, probability_sum


def generate_world(store: ObjectStore, world: WorldConfig) -> WorldSummary:
    """Generate the embedded world under ``store``: images, oracle, then the raw tables.

    Idempotent: the same config on the same root rewrites identical content, and leftovers of an
    earlier config (other days, other items' images) are removed, so nothing is duplicated.

    Args:
        store: object store of the root to write.
        world: the world's knobs.

    Returns:
        A :class:`WorldSummary` of what was written.
    """
    started = time.perf_counter()
    check_world(world)
    log.info("stage=world root=%s seed=%d items=%d users=%d days=%d",
             store.root, world.seed, world.n_items, world.n_users, world.days)  # fmt: skip
    n_variants = world.variants_per_item
    item_ids = [f"item_{i:05d}" for i in range(world.n_items)]
    user_ids = [f"user_{i:05d}" for i in range(world.n_users)]
    categories = CATEGORIES[: world.n_categories]

    # Categories are dealt round-robin and shuffled, so every category has items even in tiny worlds.
    item_rng = _rng(world.seed, "items")
    item_category = item_rng.permutation(np.arange(world.n_items) % world.n_categories)
    params = drawing.sample_cover_params(item_rng, item_category)

    classifier = _category_classifier(world.seed, world.n_categories, world.image_size)
    variant_attributes, variant_scores, reference_scores = _render_and_store(
        store, world, item_ids, params, classifier
    )
    category_accuracy = float((reference_scores.argmax(axis=1) == item_category).mean())
    log.info(
        "stage=world images=%d category_accuracy=%.3f", world.n_items * (1 + n_variants), category_accuracy
    )

    oracle = Oracle.create(
        world,
        user_ids=user_ids,
        categories=categories,
        classifier=classifier,
        variant_attributes=variant_attributes,
        rng=_rng(world.seed, "users"),
    )
    oracle_keys = oracle.save(store)
    standardized = (variant_attributes - oracle.attribute_mean) / oracle.attribute_std

    # The logs: every day's impressions (clicks drawn by the oracle), then its catalog partition.
    ds_list = [world.start_date + day * _DAY for day in range(world.days)]
    catalog = _catalog_partitions(store, world, item_ids, item_category, ds_list)
    rows, clicks, probability_sum = _write_days(
        store, world, ds_list, catalog, oracle, item_ids, standardized, variant_scores
    )

    keep_images = {layout.reference_image(item) for item in item_ids}
    keep_images |= {layout.variant_image(item, k) for item in item_ids for k in range(n_variants)}
    removed = _remove_stale(store, {ds.isoformat() for ds in ds_list}, keep_images, set(oracle_keys))
    n_impressions = max(rows["impressions"], 1)
    summary = WorldSummary(
        root=store.root,
        seed=world.seed,
        n_items=world.n_items,
        n_users=world.n_users,
        n_categories=world.n_categories,
        n_images=world.n_items * (1 + n_variants),
        table_rows=rows,
        days=world.days,
        ds_list=[ds.isoformat() for ds in ds_list],
        first_nightly_ds=(world.start_date + world.days * _DAY).isoformat(),
        seconds=time.perf_counter() - started,
        mean_ctr=clicks / n_impressions,
        mean_click_probability=probability_sum / n_impressions,
        category_accuracy=category_accuracy,
        removed_stale=removed,
    )
    log.info("stage=world done seconds=%.1f catalog_rows=%d impressions=%d mean_ctr=%.4f removed=%s",
             summary.seconds, rows["catalog_items"], rows["impressions"], summary.mean_ctr, removed)  # fmt: skip
    return summary
