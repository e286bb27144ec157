"""Stage publish: check the day's staged covers manifest and make it the one readers see.

Expected rows are the day's validated catalog items x the day's user segments. Both tables must
exist for ``ds``; a missing one is a clear error before anything is read or written. The checks and
the atomic commit are :func:`icg_core.publish.publish_day`.
"""

from __future__ import annotations

import dataclasses

from pipelines.runtime import ConfigOpt, DsOpt, JsonOpt, RootOpt, StageFailed, main, open_stage, print_summary

# Producers' areas: icg_core.validation.VALIDATED_AREA and icg_core.users.USERS_AREA (not imported:
# those modules pull in great-expectations and torch, which publishing does not need).
CATALOG_AREA, CATALOG_TABLE = "validated", "catalog_items"
SEGMENTS_AREA, SEGMENTS_TABLE = "users", "segment_centroids"


def publish(ds: DsOpt, root: RootOpt = None, config: ConfigOpt = None, json: JsonOpt = False) -> None:
    """Validate the staged covers manifest for DS and publish it (manifests/covers, _latest)."""
    from icg_core.publish import publish_day

    cfg, store = open_stage("publish", config, root)
    for area, table, producer in (
        (CATALOG_AREA, CATALOG_TABLE, "validate"),
        (SEGMENTS_AREA, SEGMENTS_TABLE, "users"),
    ):
        if not store.has_partition(table, ds=ds, area=area):
            where = store.uri(store.partition_prefix(area, table, ds))
            raise StageFailed(
                f"{table} for ds={ds} is missing ({where}); run the {producer} stage first. Nothing published."
            )
    item_ids = store.read_table(CATALOG_TABLE, ds=ds, area=CATALOG_AREA).column("item_id").to_pylist()
    segment_ids = store.read_table(SEGMENTS_TABLE, ds=ds, area=SEGMENTS_AREA).column("segment_id").to_pylist()
    summary = publish_day(
        store,
        ds,
        expected_item_ids=item_ids,
        expected_segment_ids=segment_ids,
        max_image_bytes=cfg.validation.max_image_bytes,
        max_image_pixels=cfg.validation.max_image_pixels,
    )
    print_summary(dataclasses.asdict(summary), json)


if __name__ == "__main__":
    main(publish)
