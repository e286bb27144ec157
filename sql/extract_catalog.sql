-- Catalog snapshot for the nightly run of ds: each item's latest version as of the END of the
-- data interval, i.e. the newest row with updated_at < $snapshot_end (= ds 00:00 UTC). The run for ds
-- therefore sees the same catalog its impressions window [ds - lookback, ds) ended on.
--
-- Parameters (bound, never formatted in):
--   $snapshot_end  TIMESTAMP WITH TIME ZONE, exclusive upper bound on updated_at
-- Input relation:
--   raw_catalog_items  the committed raw catalog partitions with partition ds <= ds, with every
--                      contract column plus the optional description and tags (null where absent).
--
-- Kept ANSI enough for Trino/Postgres: the window function runs in a subquery (no QUALIFY) and
-- nulls are ordered explicitly (engines differ in their default).
--
-- rank(), not row_number(): two rows of one item with the same updated_at both survive, so
-- validation reports the item as a duplicate instead of this query silently picking one.
-- Rows without item_id cannot be versioned; all of them are kept so validation reports each one.
-- Rows without updated_at are kept only when an item has no dated row (they rank last), so
-- validation reports the missing timestamp rather than the item vanishing from the snapshot.
SELECT
    item_id,
    title,
    category,
    reference_image_uri,
    updated_at,
    description,
    tags
FROM (
    SELECT
        raw.item_id,
        raw.title,
        raw.category,
        raw.reference_image_uri,
        raw.updated_at,
        raw.description,
        raw.tags,
        rank() OVER (PARTITION BY raw.item_id ORDER BY raw.updated_at DESC NULLS LAST) AS version_rank
    FROM raw_catalog_items AS raw
    WHERE raw.updated_at < $snapshot_end
       OR raw.updated_at IS NULL
) AS ranked
WHERE ranked.version_rank = 1
   OR ranked.item_id IS NULL
ORDER BY item_id, updated_at
