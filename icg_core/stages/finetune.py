"""The finetune stage: stage 2 (:mod:`icg_core.training.stage2`) from the stage-1 generator of a day.

:func:`run_finetune` reads the day's catalog features, reference latents and segments, loads the
day's reward models, trains, and saves the generator as a new version: the day's *challenger*. It
does not touch ``_latest``, the production generator (the champion); the evaluate stage promotes the
challenger only when it beats the champion (:mod:`icg_core.evaluation.promotion`). The one exception
is the first fine-tune after the bootstrap, which replaces the untuned stage-1 champion at once. The version hashes the recipe (config, reward weights, reward and user
versions, base generator, ds) and spells out the weights, e.g. ``s2-a0.5-r1-p0-<hash>`` for a
w_p = 0 ablation; a version that exists is reused, not retrained. Summary and reward curves go to
``reports/ds=<ds>/finetune-<version>.json``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from icg_core import layout
from icg_core.config import ICGConfig, recipe_digest
from icg_core.evaluation.promotion import promote_over_untuned
from icg_core.models.bundle import ICGBundle, load_bundle, save_bundle
from icg_core.models.checkpoint import (
    checkpoint_config,
    checkpoint_exists,
    resolve_version,
)
from icg_core.models.users import load_segments
from icg_core.serving.features import compute_item_features, load_features
from icg_core.storage import ObjectStore
from icg_core.training.data import load_catalog_covers, read_catalog, split_items
from icg_core.training.stage1 import encode_latents
from icg_core.training.stage2 import (
    REWARD_NAMES,
    STATE_SUFFIX,
    LoggedCovers,
    RelevanceCollapse,
    Rewards,
    Stage2Data,
    Stage2Trainer,
    load_rewards,
)

log = logging.getLogger(__name__)

# Fields that change how a run executes, not what it learns: kept out of the version hash.
_NOT_RECIPE = {"checkpoint_every", "log_every"}


@dataclass
class FinetuneSummary:
    """What :func:`run_finetune` did (also written as ``reports/ds=<ds>/finetune-<version>.json``)."""

    ds: str
    generator_version: str
    base_version: str
    reused: bool  # the version existed: nothing trained
    challenger: bool  # saved (or found) and named the day's challenger
    reward_versions: dict[str, str]
    users_version: str
    items: dict[str, int]
    seconds: dict[str, float]
    promoted: bool = False  # made the champion at once: it replaced the untuned stage-1 generator
    result: dict[str, Any] = field(default_factory=dict)
    report: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def stage1_version(store: ObjectStore, generator_name: str) -> str:
    """The stage-1 generator stage 2 starts from: ``_latest``, or the base a stage-2 ``_latest`` names."""
    version = resolve_version(store, generator_name)
    config = checkpoint_config(store, generator_name, version)
    return str(config.get("stage2", {}).get("base_version", version))


def generator_version(
    cfg: ICGConfig, base_version: str, ds: str, reward_versions: dict[str, str], users_version: str
) -> str:
    """``s2-a<w_a>-r<w_r>-p<w_p>-<hash of the whole recipe>``: ablations are readable in the name."""
    w = cfg.rewards.weights
    recipe = {
        "finetune": cfg.finetune.model_dump(exclude=_NOT_RECIPE),
        "weights": w.model_dump(),
        "sampling": {"guidance_scale": cfg.models.guidance_scale, "scheduler": cfg.models.scheduler},
        "holdout_fraction": cfg.stage1.holdout_fraction,
    }
    digest = recipe_digest(recipe, base_version, ds, reward_versions, users_version, length=12)
    return f"s2-a{w.aesthetic:g}-r{w.relevance:g}-p{w.preference:g}-{digest}"


def load_stage2_data(
    store: ObjectStore,
    bundle: ICGBundle,
    ds: str,
    holdout_fraction: float,
    guard_items: int,
    with_logged: bool = True,
) -> tuple[Stage2Data, dict[str, int]]:
    """Features (from the cache), reference latents of training items, guard items, segments of ``ds``,
    and (``with_logged``) the training items' logged covers with their latents."""
    catalog = read_catalog(store, ds)
    item_ids = catalog.column("item_id").to_pylist()
    train_ids, held_ids = split_items(item_ids, holdout_fraction)
    if not train_ids or not held_ids:
        raise ValueError(f"holdout_fraction={holdout_fraction} leaves no training or no held-out items")
    rows = compute_item_features(bundle.encoder, catalog, store).table
    uri_of = dict(
        zip(rows.column("item_id").to_pylist(), rows.column("features_uri").to_pylist(), strict=True)
    )
    train = load_catalog_covers(
        store, ds, bundle.covers.image_size, item_ids=train_ids, with_variants=with_logged
    )
    guard_ids = held_ids[:guard_items]
    title_of = dict(zip(item_ids, catalog.column("title").to_pylist(), strict=True))
    # Encode every cover once; the references are each item's first cover (CatalogCovers' order).
    cover_mean, cover_std = encode_latents(bundle.covers, train.covers if with_logged else train.references)
    first = np.searchsorted(train.cover_item, np.arange(len(train))) if with_logged else slice(None)
    ref_mean, ref_std = cover_mean[first], cover_std[first]
    segments = load_segments(store, ds)
    segment_ids, centroids = segments.centroid_matrix()
    data = Stage2Data(
        titles=train.titles,
        features=load_features(store, [uri_of[i] for i in train.item_ids]),
        ref_mean=ref_mean,
        ref_std=ref_std,
        guard_titles=[title_of[i] for i in guard_ids],
        guard_item_ids=guard_ids,
        guard_features=load_features(store, [uri_of[i] for i in guard_ids]),
        segment_ids=segment_ids,
        centroids=torch.from_numpy(centroids).float(),
    )
    if with_logged:
        data.logged = LoggedCovers(train.covers, torch.from_numpy(train.cover_item), cover_mean, cover_std)
    return data, {
        "train": len(train_ids),
        "held_out": len(held_ids),
        "guard": len(guard_ids),
        "segments": len(segment_ids),
        "logged_covers": 0 if data.logged is None else len(data.logged.images),
    }


def run_finetune(
    store: ObjectStore,
    cfg: ICGConfig,
    ds: str,
    *,
    stop_after: int | None = None,
    rewards: Callable[[dict[int, np.ndarray]], Rewards] | None = None,
) -> FinetuneSummary:
    """The finetune stage for ``ds``: stage 2 from the stage-1 generator, saved as a new version.

    Args:
        store: the object store with the validated day, the users stage's segments and the rewards
            stage's models of ``ds``, and a stage-1 generator.
        cfg: the configuration (``finetune``, ``rewards.weights``, ``models``, ``stage1.holdout_fraction``).
        ds: the run's date.
        stop_after: stop after this many steps (state saved; a rerun resumes).
        rewards: build the reward fns from the segment centroids (tests); default the saved rewards of ``ds``.

    Returns:
        The summary. The version becomes the day's challenger only when training completed without a
        relevance collapse; ``_latest`` never moves here.

    Raises:
        RelevanceCollapse: the guard stopped training (report written, no generator saved).
    """
    started = time.perf_counter()
    # 1. Name the run: the version is a hash of the recipe and of every input's version.
    name = cfg.models.generator_name
    base_version = stage1_version(store, name)
    reward_versions = {n: resolve_version(store, f"reward_{n}", ds) for n in REWARD_NAMES}
    users_version = str(layout.USER_EMBEDDINGS.read(store, ds).column("model_version")[0])
    version = generator_version(cfg, base_version, ds, reward_versions, users_version)
    summary = FinetuneSummary(ds=ds, generator_version=version, base_version=base_version, reused=False,
                              challenger=False, reward_versions=reward_versions, users_version=users_version,
                              items={}, seconds={})  # fmt: skip
    # 2. Done before (only ever saved after a successful run): it is the day's challenger again.
    if checkpoint_exists(store, name, version):
        summary.reused = True
        _name_challenger(store, name, ds, summary)
        summary.seconds = {"total": round(time.perf_counter() - started, 2)}
        log.info("stage=finetune ds=%s version=%s exists: reused", ds, version)
        return summary
    # 3. Load the stage-1 generator, the day's training data and the reward fns.
    bundle = load_bundle(store, cfg.models, base_version)
    data, summary.items = load_stage2_data(store, bundle, ds, cfg.stage1.holdout_fraction, cfg.finetune.guard_items,
                                           with_logged=cfg.finetune.logged_pairs_per_step > 0)  # fmt: skip
    load_seconds = round(time.perf_counter() - started, 2)
    centroids = {int(s): c.numpy() for s, c in zip(data.segment_ids, data.centroids, strict=True)}
    reward_fns = rewards(centroids) if rewards is not None else load_rewards(store, ds, centroids)
    # 4. Train (resumable); a relevance collapse is reported and re-raised, nothing saved.
    trainer = Stage2Trainer(bundle, data, reward_fns, cfg.finetune, cfg.rewards.weights,
                            guidance_scale=cfg.models.guidance_scale, scheduler=cfg.models.scheduler,
                            store=store, version=version, state_name=name + STATE_SUFFIX)  # fmt: skip
    try:
        result = trainer.run(stop_after=stop_after)
    except RelevanceCollapse as collapse:
        summary.result = asdict(collapse.result) if collapse.result else {}
        summary.result["failure"] = str(collapse)
        summary.seconds = {"load": load_seconds, "total": round(time.perf_counter() - started, 2)}
        summary.report = _write_report(store, summary)
        raise
    # 5. Save the generator as the day's challenger, and the run's report.
    summary.result = asdict(result)
    if result.complete:
        lineage = {"base_version": base_version, "ds": ds, "reward_versions": reward_versions,
                   "users_version": users_version, "weights": cfg.rewards.weights.model_dump(),
                   "finetune": cfg.finetune.model_dump(), "guard": result.guard}  # fmt: skip
        save_bundle(store, bundle, name, version, {"stage2": lineage}, set_latest=False)
        _name_challenger(store, name, ds, summary)
    summary.seconds = {"load": load_seconds, **{f"train_{k}": v for k, v in result.seconds.items()},
                       "total": round(time.perf_counter() - started, 2)}  # fmt: skip
    summary.report = _write_report(store, summary)
    log.info(
        "stage=finetune ds=%s version=%s complete=%s seconds=%s",
        ds,
        version,
        result.complete,
        summary.seconds,
    )
    return summary


def _name_challenger(store: ObjectStore, name: str, ds: str, summary: FinetuneSummary) -> None:
    """Make the run the day's challenger (the champion at once if the champion was never fine-tuned)."""
    layout.set_challenger(store, name, summary.generator_version, ds)
    summary.challenger = True
    summary.promoted = promote_over_untuned(store, name, summary.generator_version, ds)


def _write_report(store: ObjectStore, summary: FinetuneSummary) -> str:
    """The summary with its reward curves, as ``reports/ds=<ds>/finetune-<version>.json``."""
    return store.put_json(layout.finetune_log(summary.ds, summary.generator_version), summary.to_dict())
