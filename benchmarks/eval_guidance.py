"""How covers are made, measured: reward guidance, candidates and the sampler against selection and the ceiling.

Usage::

    python benchmarks/eval_guidance.py --root R [--ds DS] [--steps 0,1,2,4] [--candidates 1]
        [--no-base-candidate] [--samplers ddim:20,dpm:10] [--strengths "1;0.6;0.4,0.7"]
        [--item-rank K] [--items N] [--out FILE]

On every held-out item x segment of ``ds`` (the evaluate stage's items, segments and seeds), with
the production generator: ``reference``, ``selection``, ``base``, ``oracle_best`` (the ceiling),
then the cover policy (:mod:`icg_core.serving.policy`) at each number of guidance steps and each
sampler (``scheduler:steps``; default the config's) and each list of strengths (how far from the
item's reference each group of candidates starts; ``;`` between lists). For each it prints the preference model's
score next to the oracle CTR, so over-optimization of the learned reward shows as preference rising
while the oracle CTR stalls or falls, and the seconds per cover, so a cheaper sampler's price in
quality is read off one table. Evaluation code: reads the oracle. Prints a table and writes JSON
(``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import logging
from dataclasses import replace
from pathlib import Path

from icg_core.config import load_config
from icg_core.evaluation.ceiling import oracle_best_covers
from icg_core.evaluation.measures import by_segment, measure_covers, per_item_measures, variant_metrics
from icg_core.evaluation.stats import resample_indices
from icg_core.evaluation.variants import generate_covers, reference_covers, select_covers
from icg_core.models.bundle import load_bundle
from icg_core.runtime import torch_threads
from icg_core.serving.policy import Sampling
from icg_core.stages.evaluate import load_setup
from icg_core.storage import ObjectStore
from icg_core.training.data import latest_validated_ds

COLUMNS = (
    "oracle_ctr",
    "preference",
    "relevance",
    "item_recall_1",
    "category_top1",
    "aesthetic",
    "aesthetic_heldout",
    "diversity",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--ds", default=None, help="default: the latest validated day")
    parser.add_argument("--steps", default="0,1,2,4", help="steer steps to measure, comma-separated")
    parser.add_argument("--candidates", type=int, default=None, help="default: the config's")
    parser.add_argument("--no-base-candidate", action="store_true")
    parser.add_argument(
        "--samplers", default=None, help="scheduler:steps pairs, e.g. ddim:20,dpm:10 (default: the config's)"
    )
    parser.add_argument(
        "--strengths", default=None, help='strength lists, e.g. "1;0.6;0.4,0.7" (default: the config\'s)'
    )
    parser.add_argument(
        "--item-rank", type=int, default=None, help="the item guard's k (0 = off; default: the config's)"
    )
    parser.add_argument("--items", type=int, default=None, help="first N held-out items (default: all)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    cfg = load_config(root=args.root)
    store = ObjectStore.from_config(cfg.storage)
    ds = args.ds or latest_validated_ds(store)
    with torch_threads(cfg.models.cpu_threads):
        setup = load_setup(store, cfg, ds, args.items)
        oracle, segments, judges, rewards = setup.oracle, setup.segments, setup.judges, setup.rewards
        bundle, items, seeds = setup.bundle, setup.items, setup.seeds
        sampling = Sampling.from_config(cfg)
        if args.candidates is not None:
            sampling = replace(sampling, candidates=args.candidates)
        if args.no_base_candidate:
            sampling = replace(sampling, base_candidate=False)
        if args.item_rank is not None:
            sampling = replace(sampling, item_rank=args.item_rank)
        plain = Sampling(sampling.steps, sampling.guidance_scale, sampling.scheduler)
        samplers = _samplers(args.samplers, sampling)
        covers = {
            "reference": reference_covers(items, len(segments)),
            "selection": select_covers(items, segments, judges.preference),
        }
        base_bundle = load_bundle(store, cfg.models, setup.base_version)
        covers["base"] = generate_covers(
            base_bundle, items, segments, seeds, plain, personalized=False, batch_size=64
        )
        if oracle is not None:
            covers["oracle_best"] = oracle_best_covers(items, segments, oracle, seed=cfg.evaluate.seed)
        strength_lists = _strengths(args.strengths, sampling)
        for (scheduler, sample_steps), strengths in itertools.product(samplers, strength_lists):
            sampler = {"scheduler": scheduler, "steps": sample_steps, "strengths": strengths}
            suffix = "" if len(samplers) == 1 else f"_{scheduler}{sample_steps}"
            suffix += "" if len(strength_lists) == 1 else "_s" + "+".join(f"{v:g}" for v in strengths)
            for steps in [int(s) for s in args.steps.split(",")]:
                policy = (
                    replace(sampling, reward_steps=steps, **sampler)
                    if steps
                    else replace(
                        plain, candidates=sampling.candidates, item_rank=sampling.item_rank, **sampler
                    )
                )
                name = (f"icg_steps{steps}" if steps else "icg_unguided") + suffix
                covers[name] = generate_covers(bundle, items, segments, seeds, policy, personalized=True,
                                               batch_size=64, rewards=rewards)  # fmt: skip
                print(f"measured {name}", flush=True)
        indices = resample_indices(len(items), cfg.evaluate.bootstrap_samples, cfg.evaluate.seed)
        results = {}
        for name, made in covers.items():
            measures = measure_covers(made.images, items, segments, judges)
            per_item = per_item_measures(measures, made.images, len(items), segments.sizes)
            results[name] = variant_metrics(
                per_item, made, indices, by_segment(measures, segments, len(items))
            )
    print(
        f"ds={ds} items={len(items)} segments={len(segments)} generator={setup.icg_version} sampling={sampling}"
    )
    print(
        f"{'variant':<34}"
        + "".join(f"{c:>26}" for c in COLUMNS)
        + f"{'fallback':>10}{'ref':>7}{'s/cover':>9}"
    )
    for name, m in results.items():
        cells = "".join(
            f"{'-':>26}" if m[c] is None else f"{m[c]:>9.4f} [{m[c + '_ci'][0]:.3f}, {m[c + '_ci'][1]:.3f}]"
            for c in COLUMNS
        )
        fallback = "-" if m["fallback_rate"] is None else f"{m['fallback_rate']:.3f}"
        kept_reference = "-" if m["reference_rate"] is None else f"{m['reference_rate']:.3f}"
        print(f"{name:<34}{cells}{fallback:>10}{kept_reference:>7}{m['seconds_per_cover']:>9.3f}")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            json.dumps(
                {"ds": ds, "root": args.root, "sampling": str(sampling), "variants": results}, indent=1
            )
        )


def _strengths(spec: str | None, sampling: Sampling) -> list[tuple[float, ...]]:
    """Strength lists from ``"1;0.6;0.4,0.7"``; the config's list without a spec."""
    if not spec:
        return [sampling.strengths]
    return [tuple(float(v) for v in part.split(",")) for part in spec.split(";")]


def _samplers(spec: str | None, sampling: Sampling) -> list[tuple[str, int]]:
    """``[(scheduler, steps)]`` from ``"ddim:20,dpm:10"``; the config's sampler without a spec."""
    if not spec:
        return [(sampling.scheduler, sampling.steps)]
    pairs = [part.split(":") for part in spec.split(",")]
    return [(name.strip(), int(steps)) for name, steps in pairs]


if __name__ == "__main__":
    main()
