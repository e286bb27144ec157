-- Impressions of the data interval: every row with shown_at in [$window_start, $window_end), where
-- the nightly run for ds binds window_end = ds 00:00 UTC and window_start = window_end - lookback days.
-- Half-open: a row shown exactly at window_end belongs to the next run, one at window_start to this.
--
-- Parameters (bound, never formatted in):
--   $window_start  TIMESTAMP WITH TIME ZONE, inclusive
--   $window_end    TIMESTAMP WITH TIME ZONE, exclusive
-- Input relation:
--   raw_impressions  the committed raw impression partitions whose ds lies in
--                    [date(window_start), date(window_end)] (a dump never holds rows shown after its
--                    day, and the ds = window_end dump may still carry late rows of the last day).
--
-- No deduplication here: a repeated impression is a fact of the log, not an extraction error.
-- Rows with a null shown_at fall outside every window and are not extracted.
SELECT
    raw.user_id,
    raw.item_id,
    raw.cover_uri,
    raw.shown_at,
    raw.clicked
FROM raw_impressions AS raw
WHERE raw.shown_at >= $window_start
  AND raw.shown_at < $window_end
ORDER BY raw.shown_at, raw.user_id, raw.item_id
