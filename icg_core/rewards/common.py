"""What the reward models share: standardization statistics and versioned save/load.

A reward is only comparable to another after standardization: ``(raw - mean) / std`` with ``mean``
and ``std`` measured once over a reference set (catalog covers, logged impressions) when the reward
model is built, and saved with it. ``R = w_a*aesthetic + w_r*relevance + w_p*preference`` then
weighs rewards in the same units, whatever each raw score's scale.

Reward models are saved with :mod:`icg_core.models.checkpoint` (one safetensors object per module,
``config.json``, ``_SUCCESS``) under ``models/reward_<kind>/<version>/``; the config carries the
model's own settings, its standardization statistics and the metrics it was accepted with.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from icg_core.models.checkpoint import (
    LATEST_VERSION,
    load_module_checkpoint,
    resolve_version,
    save_module_checkpoint,
)
from icg_core.storage import ObjectStore

log = logging.getLogger(__name__)

# fn(images, prompts, metadata) -> (rewards float32 [B], info)
RewardFn = Callable[[Any, Sequence[str], Sequence[Mapping[str, Any]]], tuple[np.ndarray, dict[str, Any]]]


def model_name(kind: str) -> str:
    """Checkpoint name of a reward kind (``"aesthetic"`` -> ``"reward_aesthetic"``)."""
    return f"reward_{kind}"


def resolve_device(device: str) -> torch.device:
    """``"auto"`` -> CUDA when present, else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


# ----------------------------------------------------------------------------- standardization
@dataclass(frozen=True)
class RewardStats:
    """Mean and std of a raw reward over a reference set; ``standardize`` maps raw scores to z-scores."""

    mean: float
    std: float
    count: int
    reference: str  # what the reference set was, e.g. "catalog reference covers"

    @classmethod
    def from_values(cls, values: np.ndarray, reference: str) -> RewardStats:
        values = np.asarray(values, dtype=np.float64)
        if values.size == 0 or not np.isfinite(values).all():
            raise ValueError(f"reward statistics need finite values over the reference set ({reference})")
        # A floor on std keeps a constant reward from dividing by ~0 (it then standardizes to ~0).
        return cls(float(values.mean()), float(max(values.std(), 1e-6)), int(values.size), reference)

    def standardize(self, raw: np.ndarray) -> np.ndarray:
        return ((np.asarray(raw, dtype=np.float64) - self.mean) / self.std).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RewardStats:
        return cls(float(data["mean"]), float(data["std"]), int(data["count"]), str(data["reference"]))


def finish(
    raw: np.ndarray, stats: RewardStats | None, info: dict[str, Any]
) -> tuple[np.ndarray, dict[str, Any]]:
    """The ``(rewards, info)`` pair of a reward fn: standardized when ``stats`` is given, raw otherwise."""
    raw = np.asarray(raw, dtype=np.float32)
    info = {"raw": raw, "standardized": stats is not None, **info}
    return (stats.standardize(raw) if stats is not None else raw), info


# ----------------------------------------------------------------------------- save / load
def save_reward_model(
    store: ObjectStore,
    kind: str,
    version: str,
    *,
    modules: Mapping[str, torch.nn.Module | Mapping[str, torch.Tensor]],
    config: Mapping[str, Any],
    stats: RewardStats,
    metrics: Mapping[str, Any] | None = None,
) -> str:
    """Save a reward model as ``models/reward_<kind>/<version>/`` and move its ``_latest``.

    Args:
        store: the object store.
        kind: ``"aesthetic"``, ``"relevance"`` or ``"preference"``.
        version: version string (the run's ds, usually).
        modules: module name -> module or tensors (may be empty for a weight-free proxy).
        config: JSON-serializable settings needed to rebuild the model.
        stats: standardization statistics of the raw reward.
        metrics: the evaluation the model was accepted with.

    Returns:
        The checkpoint's URI prefix.
    """
    payload = {
        "kind": kind,
        "settings": dict(config),
        "stats": stats.to_dict(),
        "metrics": dict(metrics or {}),
    }
    uri = save_module_checkpoint(store, model_name(kind), version, modules, payload)
    log.info(
        "stage=rewards saved kind=%s version=%s stats=(%.4g, %.4g)", kind, version, stats.mean, stats.std
    )
    return uri


@dataclass
class BuiltReward:
    """What building a reward model for a day produced (every reward builder returns one).

    Attributes:
        kind: ``"aesthetic"``, ``"relevance"`` or ``"preference"``.
        version: the saved checkpoint's version (the run's ds, usually).
        uri: where it was saved.
        stats: the raw reward's standardization statistics.
        metrics: how it was judged (held-out numbers), as saved with it.
        model: the fitted model, for callers that go on using it (None for a statistics-only reward).
    """

    kind: str
    version: str
    uri: str
    stats: RewardStats
    metrics: dict[str, Any]
    model: Any = None


@dataclass
class LoadedReward:
    """A reward checkpoint as read back: tensors per module, settings, statistics, metrics."""

    kind: str
    version: str
    states: dict[str, dict[str, torch.Tensor]]
    settings: dict[str, Any]
    stats: RewardStats
    metrics: dict[str, Any]


def load_reward_model(store: ObjectStore, kind: str, version: str = LATEST_VERSION) -> LoadedReward:
    """Read a reward model written by :func:`save_reward_model` (``version`` may be ``"latest"``)."""
    resolved = resolve_version(store, model_name(kind), version)
    states, payload = load_module_checkpoint(store, model_name(kind), resolved)
    if payload.get("kind") != kind:
        raise ValueError(f"checkpoint {model_name(kind)}/{resolved} holds a {payload.get('kind')!r} reward")
    return LoadedReward(
        kind,
        resolved,
        states,
        dict(payload["settings"]),
        RewardStats.from_dict(payload["stats"]),
        dict(payload.get("metrics", {})),
    )
