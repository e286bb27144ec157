"""Time and peak memory of the nightly stages as the catalog grows, with each stage's growth exponent.

Usage::

    python benchmarks/scale_curve.py --models-from ROOT [--sizes 300,3000,9000] [--users-per-item 2]
        [--impressions-per-item 8] [--segments 4] [--sample-steps 2] [--work DIR] [--out FILE]

For every size N it makes an embedded world of N items, ``users-per-item * N`` users and
``impressions-per-item * N`` impressions a day (users and impressions scale with the catalog), copies
the bootstrapped generator of ``--models-from`` (the bootstrap is a one-time cost, not a nightly
one), and runs the nightly's data and serving stages as the CLI runs them, one process each:
extract, validate, train-users, train-rewards, features, generate, publish.

Generate draws every (item, segment) cover, so publish has a complete day to check, but with a
cheap sampler (``--sample-steps`` DDIM steps, no reward guidance, no base candidate): the curve
measures the stage's plumbing (requests, actors, PNGs, sidecars, the manifest), whose cost grows
with the catalog; the sampler's cost per cover is measured by ``bench_generate.py`` and priced by
``cost_model.py``.

Each stage's wall time and peak RSS are measured from outside: the stage's process tree (Ray's
processes included) is polled every 0.1 s. ``peak_mb`` is the largest single process, ``tree_mb``
the largest sum over the tree. The growth exponent ``b`` fits ``cost ~ N^b`` between the smallest and
the largest size: 1 is linear; memory near 0 is flat.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import psutil

DS = "2026-11-15"  # the first nightly day of the embedded world (start 2026-11-01 + 14 days)
STAGES = ("extract", "validate", "train-users", "train-rewards", "features", "generate", "publish")
# The bootstrapped models the stages need; rewards and users are trained by the stages themselves.
MODELS = ("base-sd", "base-vlm", "icg_generator", "icg_generator-vae")
POLL_S = 0.1


@dataclass
class StageRun:
    """One stage on one world: wall seconds and peak RSS (largest process, and the whole tree)."""

    stage: str
    items: int
    seconds: float
    peak_mb: float
    tree_mb: float


def run_measured(command: list[str], env: dict[str, str], log_path: Path) -> tuple[float, float, float]:
    """Run ``command``; (seconds, largest process RSS MB, largest tree RSS MB). Raises on a non-zero exit."""
    started = time.perf_counter()
    peak, tree = 0.0, 0.0
    with log_path.open("w") as log:
        process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        root = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                members = [root, *root.children(recursive=True)]
            except psutil.NoSuchProcess:
                break
            sizes = []
            for member in members:
                try:
                    sizes.append(member.memory_info().rss / 2**20)
                except psutil.NoSuchProcess:
                    continue
            if sizes:
                peak, tree = max(peak, max(sizes)), max(tree, sum(sizes))
            time.sleep(POLL_S)
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited {process.returncode}; see {log_path}")
    return seconds, peak, tree


def make_world(root: Path, items: int, args: argparse.Namespace, env: dict[str, str]) -> None:
    """A fresh world of ``items`` items under ``root``, with the bootstrapped models copied in."""
    shutil.rmtree(root, ignore_errors=True)
    command = [
        *icg(), "world", "--out", str(root), "--items", str(items),
        "--users", str(round(args.users_per_item * items)),
        "--impressions-per-day", str(round(args.impressions_per_item * items)),
    ]  # fmt: skip
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for name in MODELS:
        shutil.copytree(Path(args.models_from) / "models" / name, root / "models" / name)


def icg() -> list[str]:
    return [sys.executable, "-m", "pipelines.cli"]


def exponent(small: float, large: float, n_small: int, n_large: int) -> float:
    """``b`` in ``cost ~ N^b`` through two points."""
    return math.log(max(large, 1e-9) / max(small, 1e-9)) / math.log(n_large / n_small)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models-from", required=True, help="a bootstrapped root (e.g. after make run)")
    parser.add_argument("--sizes", default="300,3000,9000", help="catalog sizes, comma-separated")
    parser.add_argument("--users-per-item", type=float, default=2.0)
    parser.add_argument("--impressions-per-item", type=float, default=8.0, help="impressions a day per item")
    parser.add_argument("--segments", type=int, default=4, help="user segments (covers = items x segments)")
    parser.add_argument("--sample-steps", type=int, default=2, help="DDIM steps of generate's covers")
    parser.add_argument("--work", type=Path, default=Path("/tmp/icg-scale"))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    env = {
        **os.environ,
        "ICG__USERS__N_SEGMENTS": str(args.segments),
        "ICG__MODELS__SAMPLE_STEPS": str(args.sample_steps),
        "ICG__GUIDANCE__STEPS": "0",
        "ICG__GUIDANCE__BASE_CANDIDATE": "false",
        "ICG__REWARDS__PREFERENCE__AUC_FLOOR": "0",  # the curve measures cost, not the click model's quality
    }
    runs: list[StageRun] = []
    for items in sizes:
        root = args.work / f"items{items}"
        started = time.perf_counter()
        make_world(root, items, args, env)
        print(f"items={items}: world in {time.perf_counter() - started:.0f}s", flush=True)
        for stage in STAGES:
            command = [*icg(), stage, "--root", str(root), "--ds", DS, "--json"]
            seconds, peak, tree = run_measured(command, env, args.work / f"items{items}-{stage}.log")
            runs.append(StageRun(stage, items, round(seconds, 1), round(peak), round(tree)))
            print(f"items={items} {stage}: {seconds:.1f}s peak {peak:.0f} MB tree {tree:.0f} MB", flush=True)
    report(runs, sizes, args)


def report(runs: list[StageRun], sizes: list[int], args: argparse.Namespace) -> None:
    """Print the curve as a markdown table (README) and write it as JSON (``--out``)."""
    at = {(r.stage, r.items): r for r in runs}
    small, large = sizes[0], sizes[-1]
    header = " | ".join(f"{n:,} items: s / peak MB" for n in sizes)
    print(f"\n| stage | {header} | b time | b peak | peak {large:,} / {small:,} |")
    print("|---|" + "---:|" * (len(sizes) + 3))
    for stage in STAGES:
        cells = " | ".join(f"{at[stage, n].seconds:g} / {at[stage, n].peak_mb:g}" for n in sizes)
        a, b = at[stage, small], at[stage, large]
        time_b = exponent(a.seconds, b.seconds, small, large)
        peak_b = exponent(a.peak_mb, b.peak_mb, small, large)
        print(f"| {stage} | {cells} | {time_b:.2f} | {peak_b:.2f} | {b.peak_mb / a.peak_mb:.2f}x |")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: v for k, v in vars(args).items() if k not in ("out", "work")}
        args.out.write_text(
            json.dumps(
                {"settings": {**settings, "work": str(args.work)}, "runs": [asdict(r) for r in runs]},
                indent=1,
            )
        )


if __name__ == "__main__":
    main()
