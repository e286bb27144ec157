"""Are stage-1 covers of held-out items recognizably their category? (evaluation code: reads the oracle)

Usage::

    python benchmarks/eval_stage1.py --root /tmp/icg_default [--version latest] [--ds DS] [--no-untrained]

For every held-out item (the same item_id-hash split stage 1 used) one cover is generated with the
null user from the item's cached features, and the world's oracle classifier scores it; top-1
accuracy against the item's category is compared with chance (1 / n_categories), with the
reference covers themselves (the ceiling), and with an untrained generator of the same
architecture (fresh UNet, VAE, meta tokens, refiner and adapter around the same base VLM).
Prints one JSON document.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from icg_core.config import load_config
from icg_core.data.images import decode_image
from icg_core.models.bundle import ICGBundle, build_bundle, load_bundle
from icg_core.models.generator import seed_for
from icg_core.models.tiny import build_tiny_sd
from icg_core.runtime import torch_threads
from icg_core.serving.features import compute_item_features, load_features
from icg_core.storage import ObjectStore
from icg_core.training.data import latest_validated_ds, read_catalog, split_items, to_square
from icg_core.world.oracle import Oracle


def generate_for(
    bundle: ICGBundle, store: ObjectStore, items: pa.Table, models, *, cached: bool = True
) -> np.ndarray:
    """One null-user cover per item (uint8 [B, S, S, 3]).

    Features come from the item-feature cache (``cached``), else straight from the encoder (so an
    untrained encoder leaves nothing in the store).
    """
    if cached:
        rows = compute_item_features(bundle.encoder, items, store).table
        features = load_features(store, rows.column("features_uri").to_pylist())
    else:
        images = [decode_image(store.read_object(u)) for u in items.column("reference_image_uri").to_pylist()]
        with torch.no_grad():
            features = bundle.encoder(items.column("title").to_pylist(), images)
    seeds = [
        seed_for(item_id, -1, bundle.version or "untrained")
        for item_id in items.column("item_id").to_pylist()
    ]
    return bundle.generate(
        features,
        seeds,
        steps=models.sample_steps,
        guidance_scale=models.guidance_scale,
        scheduler=models.scheduler,
    )


def accuracy(oracle: Oracle, images: np.ndarray, labels: np.ndarray) -> dict:
    predicted = oracle.category_scores(images).argmax(axis=1)
    per_category = {
        name: round(float((predicted[labels == c] == c).mean()), 3)
        for c, name in enumerate(oracle.categories)
        if (labels == c).any()
    }
    counts = np.bincount(predicted, minlength=len(oracle.categories)).tolist()
    return {
        "top1": round(float((predicted == labels).mean()), 4),
        "per_category": per_category,
        "predicted_counts": counts,
    }


def untrained_bundle(store: ObjectStore, trained: ICGBundle, cfg, tmp: Path) -> ICGBundle:
    """The same architecture with fresh weights (the trained bundle's base VLM, a new random tiny SD)."""
    models = cfg.models
    sd = build_tiny_sd(
        tmp / "sd",
        models.tiny_sd_kind,
        sample_size=trained.covers.image_size,
        cross_attention_dim=models.tiny_sd_cross_attention_dim,
        seed=cfg.stage1.seed,
        block_out_channels=tuple(models.tiny_sd_block_out_channels),
        prediction_type=models.tiny_sd_prediction_type,
    )
    bundle = build_bundle(
        store, {"vlm": trained.base["vlm"], "sd": {"path": str(sd)}}, models, seed=cfg.stage1.seed
    )
    return bundle.eval()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--root", required=True)
    parser.add_argument("--config", default=None)
    parser.add_argument("--ds", default=None)
    parser.add_argument("--version", default="latest")
    parser.add_argument("--no-untrained", action="store_true", help="skip the untrained baseline")
    parser.add_argument("--out", default=None, help="also write the JSON here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = load_config(args.config, root=args.root)
    with torch_threads(cfg.models.cpu_threads):
        report = evaluate(cfg, args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


def evaluate(cfg, args: argparse.Namespace) -> dict:
    """The report: held-out top-1 category accuracy of references, trained and untrained covers."""
    store = ObjectStore.from_config(cfg.storage)
    ds = args.ds or latest_validated_ds(store)
    catalog = read_catalog(store, ds)
    _, held_ids = split_items(catalog.column("item_id").to_pylist(), cfg.stage1.holdout_fraction)
    items = catalog.filter(pc.is_in(catalog.column("item_id"), pa.array(held_ids, pa.string())))
    oracle = Oracle.load(store)
    labels = np.array([oracle.categories.index(c) for c in items.column("category").to_pylist()])

    started = time.perf_counter()
    trained = load_bundle(store, cfg.models, args.version)
    covers = generate_for(trained, store, items, cfg.models)
    seconds = time.perf_counter() - started
    size = trained.covers.image_size
    references = np.stack(
        [
            to_square(decode_image(store.read_object(u)), size)
            for u in items.column("reference_image_uri").to_pylist()
        ]
    )
    report = {
        "ds": ds,
        "generator_version": trained.version,
        "held_out_items": len(held_ids),
        "chance": round(1 / len(oracle.categories), 4),
        "references": accuracy(oracle, references, labels),
        "trained": accuracy(oracle, covers, labels),
        "sampling": {
            "scheduler": cfg.models.scheduler,
            "steps": cfg.models.sample_steps,
            "guidance_scale": cfg.models.guidance_scale,
            "seconds": round(seconds, 2),
        },
    }
    report["trained_over_chance"] = round(report["trained"]["top1"] / report["chance"], 2)
    if not args.no_untrained:
        with tempfile.TemporaryDirectory(prefix="icg-untrained-") as tmp:
            baseline = untrained_bundle(store, trained, cfg, Path(tmp))
            report["untrained"] = accuracy(
                oracle, generate_for(baseline, store, items, cfg.models, cached=False), labels
            )
        report["untrained_over_chance"] = round(report["untrained"]["top1"] / report["chance"], 2)
    return report


if __name__ == "__main__":
    main()
