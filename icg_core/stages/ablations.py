"""Ablations are real fine-tuning runs: stage 2 again with one reward weight set to zero.

Each ablation trains under its own generator name (``<generator_name>-no_preference``,
``<generator_name>-no_aesthetic``), so its run never moves the production generator's ``_latest``.
It starts from the same stage-1 generator as the production run, with the same steps and seeds
(the whole ``finetune`` section is unchanged); its version spells the weights
(``s2-a0.25-r0.5-p0-<hash>``). The stage-1 checkpoint is copied under the ablation's name (a few
small objects: the base checkpoints are referenced, not copied) and its ``_latest`` pointed at it
before every run, so :func:`icg_core.stages.finetune.run_finetune` resumes or reuses as usual.
"""

from __future__ import annotations

import logging

from icg_core import layout
from icg_core.config import ICGConfig
from icg_core.models.checkpoint import checkpoint_prefix
from icg_core.stages.finetune import FinetuneSummary, run_finetune
from icg_core.storage import SUCCESS, ObjectStore

log = logging.getLogger(__name__)

# Ablation variant -> the reward weight it sets to zero.
ABLATIONS = {"icg_no_preference": "preference", "icg_no_aesthetic": "aesthetic"}


def ablation_generator_name(generator_name: str, variant: str) -> str:
    """The checkpoint name an ablation trains under, e.g. ``icg_generator-no_preference``."""
    return f"{generator_name}-{variant.removeprefix('icg_')}"


def ablation_config(cfg: ICGConfig, variant: str) -> ICGConfig:
    """``cfg`` with the ablated reward weight at zero and the ablation's generator name."""
    ablated = cfg.model_copy(deep=True)
    setattr(ablated.rewards.weights, ABLATIONS[variant], 0.0)
    ablated.models.generator_name = ablation_generator_name(cfg.models.generator_name, variant)
    return ablated


def seed_from_stage1(store: ObjectStore, source_name: str, target_name: str, stage1_version: str) -> None:
    """Copy the stage-1 checkpoint ``source_name/stage1_version`` under ``target_name`` and point its ``_latest`` there."""
    source, target = (
        checkpoint_prefix(source_name, stage1_version),
        checkpoint_prefix(target_name, stage1_version),
    )
    if not store.exists(layout.model_marker(target_name, stage1_version)):
        keys = store.list(source)
        for key in sorted(keys, key=lambda k: k.endswith(SUCCESS)):  # the marker last
            store.put_bytes(target + key[len(source) :], store.get_bytes(key))
        log.info(
            "stage=evaluate ablation %s seeded from %s/%s (%d objects)",
            target_name,
            source_name,
            stage1_version,
            len(keys),
        )
    layout.set_latest(store, target_name, stage1_version)


def run_ablation(
    store: ObjectStore, cfg: ICGConfig, ds: str, variant: str, stage1_version: str
) -> tuple[ICGConfig, FinetuneSummary]:
    """Fine-tune the ablation ``variant`` for ``ds`` from ``stage1_version``: (its config, the run's summary).

    Raises:
        KeyError: an unknown ablation variant.
        RelevanceCollapse: the ablated run tripped the held-out relevance guard (nothing saved).
    """
    ablated = ablation_config(cfg, variant)
    seed_from_stage1(store, cfg.models.generator_name, ablated.models.generator_name, stage1_version)
    summary = run_finetune(store, ablated, ds)
    log.info(
        "stage=evaluate ablation %s version=%s reused=%s", variant, summary.generator_version, summary.reused
    )
    return ablated, summary
