"""One typed configuration for every stage, loaded from YAML with environment overrides.

Resolution order (later wins):
  1. the defaults below (identical to ``configs/embedded.yaml``),
  2. a YAML file (``--config FILE``, or the ``ICG_CONFIG`` environment variable),
  3. environment variables ``ICG__<SECTION>__<FIELD>=value`` (value parsed as YAML),
     e.g. ``ICG__STORAGE__ROOT=s3://bucket/icg`` or ``ICG__WORLD__N_ITEMS=50``,
  4. explicit command-line options such as ``--root``.

Nothing here names a bucket, host or secret: S3 credentials come from the environment
(``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``) or an IAM role, never from config.
"""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

ENV_PREFIX = "ICG__"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StorageConfig(_Section):
    root: str = "./data"  # object root: a local path, file:///abs/path or s3://bucket/prefix
    s3_endpoint_url: str | None = None  # S3-compatible endpoint (MinIO, SeaweedFS); None = AWS
    s3_region: str = "us-east-1"  # region passed to the S3 client


class WorldConfig(_Section):
    seed: int = 0  # seeds every random draw of the simulator
    n_items: int = 300  # catalog size
    n_categories: int = 8  # categories, each with its own visual motif and title vocabulary
    n_users: int = 2000  # users with a hidden visual taste
    n_taste_groups: int = 6  # latent taste groups the users' tastes are drawn around
    days: int = 14  # days of impression logs
    impressions_per_day: int = 7200  # ~100k impressions over 14 days
    start_date: dt.date = dt.date(2026, 11, 1)  # first day of logs; the first nightly ds is start + days
    image_size: int = 64  # side of the square covers, pixels
    variants_per_item: int = 8  # jittered cover variants shown in impressions, per item
    taste_strength: float = 1.5  # how much cover attributes move the click logit
    taste_spread: float = 0.35  # std of a user's taste around its group centre
    category_affinity_scale: float = 0.6  # std of per-user category affinity (logit units)
    click_noise: float = 0.1  # share of clicks that ignore the cover (p mixes toward the base rate)
    base_click_logit: float = -1.2  # intercept of the click model (sets the overall CTR)
    daily_title_update_fraction: float = 0.01  # share of items whose title changes each day


class ExtractConfig(_Section):
    lookback_days: int = 14  # impressions window is [ds - lookback_days, ds)


class ValidationConfig(_Section):
    title_min_chars: int = 1  # shortest acceptable title
    title_max_chars: int = 200  # longest acceptable title
    max_image_bytes: int = 10_000_000  # larger image objects are rejected before decoding
    max_image_pixels: int = 16_000_000  # larger images are rejected from the header (decompression bombs)
    min_image_side: int = 16  # smaller images are rejected
    sample_rows: int = 5  # failing rows printed per expectation


class ICGConfig(_Section):
    storage: StorageConfig = Field(default_factory=StorageConfig)
    world: WorldConfig = Field(default_factory=WorldConfig)
    extract: ExtractConfig = Field(default_factory=ExtractConfig)
    validation: ValidationConfig = Field(default_factory=ValidationConfig)


def _set_nested(tree: dict[str, Any], dotted: list[str], value: Any) -> None:
    for part in dotted[:-1]:
        tree = tree.setdefault(part, {})
    tree[dotted[-1]] = value


def env_overrides(environ: dict[str, str] | None = None) -> dict[str, Any]:
    """``ICG__SECTION__FIELD=value`` variables as a nested dict (values parsed as YAML scalars)."""
    environ = dict(os.environ if environ is None else environ)
    tree: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX):
            continue
        dotted = [p.lower() for p in name[len(ENV_PREFIX) :].split("__") if p]
        if dotted:
            _set_nested(tree, dotted, yaml.safe_load(raw) if raw != "" else None)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def load_config(
    path: str | Path | None = None,
    *,
    root: str | None = None,
    environ: dict[str, str] | None = None,
) -> ICGConfig:
    """Load the configuration.

    Args:
        path: YAML file; defaults to ``$ICG_CONFIG`` when set, else built-in defaults.
        root: object root overriding ``storage.root`` (the ``--root`` option of every stage).
        environ: environment to read overrides from (defaults to ``os.environ``).
    """
    env = dict(os.environ if environ is None else environ)
    path = path or env.get("ICG_CONFIG") or None
    data: dict[str, Any] = {}
    if path:
        text = Path(path).read_text(encoding="utf-8")
        data = yaml.safe_load(text) or {}
        if not isinstance(data, dict):
            raise ValueError(f"config {path}: expected a mapping at top level, got {type(data).__name__}")
    data = _merge(data, env_overrides(env))
    if root is not None:
        data = _merge(data, {"storage": {"root": root}})
    return ICGConfig.model_validate(data)
