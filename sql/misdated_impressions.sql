-- A sample of misdated raw impressions (see raw_impressions_dates.sql), for the validation report.
--
-- Parameters (bound, never formatted in):
--   $limit  INTEGER, rows returned at most
SELECT
    raw.ds,
    raw.user_id,
    raw.item_id,
    raw.shown_at
FROM raw_impressions AS raw
WHERE raw.shown_at IS NULL
   OR raw.shown_at < CAST(raw.ds AS DATE) - INTERVAL '1' DAY
   OR raw.shown_at >= CAST(raw.ds AS DATE) + INTERVAL '1' DAY
ORDER BY raw.ds, raw.user_id, raw.item_id
LIMIT $limit
