-- How well each raw impressions partition read by the nightly run for ds agrees with its own day.
--
-- A dump for day P holds impressions shown on day P, plus late rows of day P - 1. Anything else (a
-- timestamp in 2099 or 1960, a null) is misdated: the window's SQL would drop it silently, so the
-- extract counts it here and validate refuses the day when too many rows are misdated.
--
-- Input relation:
--   raw_impressions  the committed raw impression partitions the run reads, with their ds (string).
-- Output: one row per partition: ds, rows_read, misdated.
SELECT
    raw.ds,
    count(*) AS rows_read,
    count(*) FILTER (
        WHERE raw.shown_at IS NULL
           OR raw.shown_at < CAST(raw.ds AS DATE) - INTERVAL '1' DAY
           OR raw.shown_at >= CAST(raw.ds AS DATE) + INTERVAL '1' DAY
    ) AS misdated
FROM raw_impressions AS raw
GROUP BY raw.ds
ORDER BY raw.ds
