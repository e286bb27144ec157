"""How much a kept segment's drift matters: the preference model's click probability of its covers, before and after.

Usage::

    python benchmarks/segment_drift.py --root R --ds DS [--previous PREVIOUS] [--items N]

Between two days, a cover is carried over while its segment's centroid moved less than
``generate.segment_tolerance`` (cosine distance, :mod:`icg_core.serving.refresh`). This prints, per
segment, that cosine distance next to what it does to the covers drawn for the segment on
``PREVIOUS``: the preference model's (``DS``'s) click probability of each cover for the centroid of
``PREVIOUS`` and for that of ``DS``, with the mean and largest absolute change. A tolerance is well
chosen when the covers it keeps barely change in the model's eyes. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import logging

import numpy as np
import pyarrow.compute as pc

from icg_core import layout
from icg_core.config import load_config
from icg_core.data.images import read_images
from icg_core.rewards.preference import PreferenceModel, preference_reward_fn
from icg_core.serving.refresh import centroid_drift
from icg_core.stages.generate import read_centroids
from icg_core.storage import ObjectStore

IMAGE_SIZE = 64  # the preference model reads pixel attributes; any size of the covers works


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--ds", required=True, help="the day whose centroids and preference model judge")
    parser.add_argument(
        "--previous",
        default=None,
        help="the day the covers were drawn for (default: the day before ds with covers)",
    )
    parser.add_argument(
        "--items", type=int, default=None, help="first N items of each segment (default: all)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = load_config(root=args.root)
    store = ObjectStore.from_config(cfg.storage)
    previous = args.previous or max(d for d in layout.STAGED_COVERS.days(store) if d < args.ds)
    today, before = read_centroids(store, args.ds), read_centroids(store, previous)
    drift = centroid_drift(today, before)
    model = PreferenceModel.load(store, cfg.generate.reward_version)
    score_today = preference_reward_fn(model, today, standardize=False)
    score_before = preference_reward_fn(model, before, standardize=False)
    manifest = layout.STAGED_COVERS.read_columns(store, previous, ["item_id", "segment_id", "cover_uri"])
    rows = []
    print(
        f"covers of {previous} judged by the preference model of {args.ds}; tolerance {cfg.generate.segment_tolerance}"
    )
    print(
        f"{'segment':>8}{'cosine drift':>14}{'covers':>8}{'P(click) before':>17}{'P(click) now':>14}{'mean |change|':>15}{'max |change|':>14}"
    )
    for segment in sorted(set(today) & set(before)):
        covers = manifest.filter(pc.equal(manifest.column("segment_id"), segment))
        if args.items is not None:
            covers = covers.slice(0, args.items)
        images = read_images(store, covers.column("cover_uri").to_pylist(), IMAGE_SIZE)
        metadata = [{"segment_id": segment}] * len(images)
        p_before = score_before(images, [""] * len(images), metadata)[0]
        p_now = score_today(images, [""] * len(images), metadata)[0]
        change = np.abs(p_now - p_before)
        row = {
            "segment": segment, "cosine_drift": round(drift[segment], 5), "covers": len(images),
            "p_before": round(float(p_before.mean()), 4), "p_now": round(float(p_now.mean()), 4),
            "mean_abs_change": round(float(change.mean()), 5), "max_abs_change": round(float(change.max()), 5),
        }  # fmt: skip
        rows.append(row)
        print(f"{segment:>8}{row['cosine_drift']:>14.5f}{row['covers']:>8}{row['p_before']:>17.4f}{row['p_now']:>14.4f}"
              f"{row['mean_abs_change']:>15.5f}{row['max_abs_change']:>14.5f}")  # fmt: skip
    print(json.dumps({"ds": args.ds, "previous": previous, "segments": rows}))


if __name__ == "__main__":
    main()
