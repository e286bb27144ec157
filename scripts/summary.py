"""Print what a nightly run left for people: covers, segments, headline metrics, where things are.

Usage: ``python scripts/summary.py --root ROOT --ds DATE`` (the main job's last step).
"""

from __future__ import annotations

import argparse

from icg_core import layout
from icg_core.stages.publish import read_published
from icg_core.storage import ObjectStore

HEADLINE = ("oracle_ctr", "preference", "relevance", "item_recall_1", "aesthetic", "category_top1")


def _number(value: object) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _with_interval(values: dict, metric: str) -> str:
    ci = values.get(f"{metric}_ci") or [None, None]
    return f"{_number(values.get(metric))} [{_number(ci[0])}, {_number(ci[1])}]"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--ds", required=True)
    args = parser.parse_args()
    store = ObjectStore(args.root)

    manifest = read_published(store, args.ds)
    segments = sorted(set(manifest.column("segment_id").to_pylist()))
    items = len(set(manifest.column("item_id").to_pylist()))
    print(f"  covers published:        {manifest.num_rows} ({items} items x {len(segments)} segments)")
    print(f"  manifest (readers):      {layout.PUBLISHED_COVERS.uri(store, args.ds)}/")
    print(f"  user -> segment:         {layout.PUBLISHED_USER_SEGMENTS.uri(store, args.ds)}/")
    print("  how to read them:        docs/consumers.md (or: icg cover --user U --item I)")
    print(f"  latest published day:    {layout.PUBLISHED_COVERS.latest(store)}")
    if store.exists(layout.metrics(args.ds)):
        metrics = store.get_json(layout.metrics(args.ds))
        variants = metrics["variants"]
        verdict = metrics.get("verdict") or {}
        print(f"  verdict:                 {verdict.get('outcome', 'n/a')} ({verdict.get('reason', '')})")
        print(f"  held-out metrics ({metrics.get('run', {}).get('items')} items, 95% intervals):")
        print(f"    {'variant':<22}{'oracle_ctr':>24}" + "".join(f"{m:>14}" for m in HEADLINE[1:]))
        for name, values in variants.items():
            print(
                f"    {name:<22}{_with_interval(values, 'oracle_ctr'):>24}"
                + "".join(f"{_number(values.get(m)):>14}" for m in HEADLINE[1:])
            )
    print(f"  report:                  {store.uri(layout.report_page(args.ds))}")


if __name__ == "__main__":
    main()
