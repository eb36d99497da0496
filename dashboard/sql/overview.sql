-- The Overview page. Every query reads the audit trail of one time range: the live
-- table and the archive (expired payloads' rows move there). Parameters: :start, :end
-- (timestamps), and where named :bucket (seconds), :cap or :limit (rows).
--
-- On PostgreSQL the page reads overview_summary (the hourly rollup for the whole hours
-- of the range, the rows themselves for the partial hours at its edges) and the
-- percentiles by rank (overview_*_rank_*); the queries over the rows alone serve SQLite,
-- buckets shorter than an hour, and ranges too narrow a share of the table for the
-- rank walks to pay.

-- name: overview_summary@postgresql
-- Everything but the percentiles, exact and from few rows: the whole hours of the range,
-- [:hours_start, :hours_end), from the hourly rollup (transactions_hourly, _tools,
-- _errors); the partial hours at its edges from the rows themselves (both equal :end
-- when the range holds no whole hour). One row per group, part naming what it is:
-- 'volume' (by hour, route and status), 'tool', 'tenant', 'error_kind' (ranked, the
-- first :limit kept), 'total' (the one row of sums).
WITH edges AS (
    SELECT created_at, tenant, tool, route, status, error_kind, size, stored_size, tool_ms,
           store_ms
    FROM transactions
    WHERE created_at >= :start AND created_at < :hours_start
       OR created_at >= :hours_end AND created_at < :end
    UNION ALL
    SELECT created_at, tenant, tool, route, status, error_kind, size, stored_size, tool_ms,
           store_ms
    FROM transactions_archive
    WHERE created_at >= :start AND created_at < :hours_start
       OR created_at >= :hours_end AND created_at < :end
), statuses AS (
    SELECT hour, tenant, route, status, transactions, bytes, stored_bytes, tool_n, store_n
    FROM transactions_hourly
    WHERE hour >= :hours_start AND hour < :hours_end
    UNION ALL
    SELECT date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'), tenant, route,
           status, 1, size, coalesce(stored_size, 0), (tool_ms IS NOT NULL)::int,
           (store_ms IS NOT NULL)::int
    FROM edges
), tools AS (
    SELECT tool, transactions, failed, bytes, tool_n, tool_ms_sum
    FROM transactions_hourly_tools
    WHERE hour >= :hours_start AND hour < :hours_end
    UNION ALL
    SELECT tool, 1, (status IN ('failed', 'rejected', 'corrupted'))::int, size,
           (tool_ms IS NOT NULL)::int, coalesce(tool_ms, 0)
    FROM edges
), errors AS (
    SELECT error_kind, transactions, failed
    FROM transactions_hourly_errors
    WHERE hour >= :hours_start AND hour < :hours_end
    UNION ALL
    SELECT error_kind, 1, (status IN ('failed', 'rejected', 'corrupted'))::int
    FROM edges
    WHERE error_kind IS NOT NULL
), grouped AS (
    SELECT CASE WHEN GROUPING(hour) = 0 THEN 'volume'
                WHEN GROUPING(tenant) = 0 THEN 'tenant'
                ELSE 'total' END AS part,
           extract(epoch FROM hour)::bigint AS hour, route::text AS route,
           status::text AS status, tenant AS label, sum(transactions) AS transactions,
           coalesce(sum(transactions) FILTER (WHERE status IN ('failed', 'rejected', 'corrupted')), 0)
               AS failed,
           sum(bytes) AS bytes, sum(stored_bytes) AS stored_bytes, sum(tool_n) AS tool_n,
           NULL::float8 AS tool_ms_sum, sum(store_n) AS store_n
    FROM statuses
    GROUP BY GROUPING SETS ((hour, route, status), (tenant), ())
    UNION ALL
    SELECT 'tool', NULL, NULL, NULL, coalesce(tool, '(none)'), sum(transactions), sum(failed),
           sum(bytes), NULL, sum(tool_n), sum(tool_ms_sum), NULL
    FROM tools
    GROUP BY tool
    UNION ALL
    SELECT 'error_kind', NULL, NULL, NULL, error_kind, sum(transactions), sum(failed), NULL,
           NULL, NULL, NULL, NULL
    FROM errors
    GROUP BY error_kind
), ranked AS (
    SELECT *, row_number() OVER (PARTITION BY part ORDER BY transactions DESC, label) AS rank
    FROM grouped
)
SELECT part, hour, route, status, label, transactions, failed, bytes, stored_bytes, tool_n,
       tool_ms_sum, store_n
FROM ranked
WHERE part IN ('volume', 'total') OR rank <= :limit
ORDER BY part, rank

-- name: overview_rows_estimate@postgresql
-- About how many rows both tables hold (the planner's statistics): only to choose how
-- to read percentiles, never shown.
SELECT coalesce(sum(greatest(c.reltuples, 0)), 0) AS estimate
FROM pg_class c
WHERE c.oid IN (SELECT relid FROM pg_partition_tree('transactions') WHERE isleaf)
   OR c.oid = 'transactions_archive'::regclass

-- name: overview_rank_walk@postgresql
-- :take values of {column} (tool_ms or store_ms) from the range after skipping the
-- :offset first in {order} (ASC from the smallest, DESC from the largest), walking the
-- ({column}, created_at) indexes with index-only scans, both tables merged. {column} and
-- {order} are filled in by dashboard.queries from those fixed choices: identifiers and
-- keywords cannot be bound parameters, and each walk wants its own plan.
SELECT v FROM (
    (SELECT {column} AS v FROM transactions
     WHERE {column} IS NOT NULL AND created_at >= :start AND created_at < :end
     ORDER BY {column} {order} LIMIT :offset + :take)
    UNION ALL
    (SELECT {column} FROM transactions_archive
     WHERE {column} IS NOT NULL AND created_at >= :start AND created_at < :end
     ORDER BY {column} {order} LIMIT :offset + :take)
) walked
ORDER BY v {order} OFFSET :offset LIMIT :take

-- name: overview_volume@postgresql
-- Transactions per time bucket (epoch seconds), by route and status, with their bytes,
-- from the rows (buckets shorter than an hour): the totals are added up from these.
-- Grouped on the enums first, named after: a third faster than grouping on text.
WITH audit AS (
    SELECT created_at, route, status, size, stored_size FROM transactions
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT created_at, route, status, size, stored_size FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
), grouped AS (
    SELECT date_bin(make_interval(secs => :bucket), created_at,
                    timestamptz '2000-01-01 00:00:00+00') AS bucket,
           route, status, count(*) AS transactions, coalesce(sum(size), 0) AS bytes,
           coalesce(sum(stored_size), 0) AS stored_bytes
    FROM audit
    GROUP BY 1, 2, 3
)
SELECT extract(epoch FROM bucket)::bigint AS bucket, route::text AS route,
       status::text AS status, transactions, bytes, stored_bytes
FROM grouped
ORDER BY 1, 2, 3

-- name: overview_volume@sqlite
WITH audit AS (
    SELECT created_at, route, status, size, stored_size FROM transactions
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT created_at, route, status, size, stored_size FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
)
SELECT (CAST(strftime('%s', created_at) AS INTEGER) / :bucket) * :bucket AS bucket,
       route, status, count(*) AS transactions, coalesce(sum(size), 0) AS bytes,
       coalesce(sum(stored_size), 0) AS stored_bytes
FROM audit
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3

-- name: overview_latency@postgresql
-- p50, p95, p99 of tool and store latency (ms), continuous (interpolated) percentiles,
-- sorting the range's rows (for ranges too narrow for the walks to pay).
WITH audit AS (
    SELECT tool_ms, store_ms FROM transactions
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT tool_ms, store_ms FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
)
SELECT count(tool_ms) AS tool_n,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY tool_ms) AS tool_ms,
       count(store_ms) AS store_n,
       percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY store_ms) AS store_ms
FROM audit

-- name: overview_latency_sample@sqlite
-- SQLite has no percentile aggregate: the newest :cap latencies of the range, from
-- which pandas computes the same interpolated percentiles.
WITH audit AS (
    SELECT created_at, tool_ms, store_ms FROM transactions
    WHERE created_at >= :start AND created_at < :end
      AND (tool_ms IS NOT NULL OR store_ms IS NOT NULL)
    UNION ALL
    SELECT created_at, tool_ms, store_ms FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
      AND (tool_ms IS NOT NULL OR store_ms IS NOT NULL)
)
SELECT tool_ms, store_ms FROM audit ORDER BY created_at DESC LIMIT :cap

-- name: overview_errors
-- Why transactions failed (or looked like failures), most frequent first.
WITH audit AS (
    SELECT error_kind, status FROM transactions
    WHERE created_at >= :start AND created_at < :end AND error_kind IS NOT NULL
    UNION ALL
    SELECT error_kind, status FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end AND error_kind IS NOT NULL
)
SELECT error_kind, count(*) AS transactions,
       count(CASE WHEN status IN ('failed', 'rejected', 'corrupted') THEN 1 END) AS failed
FROM audit
GROUP BY error_kind
ORDER BY transactions DESC, error_kind
LIMIT :limit

-- name: overview_tools
-- The busiest tools.
WITH audit AS (
    SELECT tool, status, size, tool_ms FROM transactions
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT tool, status, size, tool_ms FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
)
SELECT coalesce(tool, '(none)') AS tool, count(*) AS transactions,
       count(CASE WHEN status IN ('failed', 'rejected', 'corrupted') THEN 1 END) AS failed,
       coalesce(sum(size), 0) AS bytes, avg(tool_ms) AS mean_tool_ms
FROM audit
GROUP BY 1
ORDER BY transactions DESC, tool
LIMIT :limit

-- name: overview_tenants
-- The tenants with the most transactions.
WITH audit AS (
    SELECT tenant, status, size FROM transactions
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT tenant, status, size FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
)
SELECT tenant, count(*) AS transactions,
       count(CASE WHEN status IN ('failed', 'rejected', 'corrupted') THEN 1 END) AS failed,
       coalesce(sum(size), 0) AS bytes
FROM audit
GROUP BY tenant
ORDER BY transactions DESC, tenant
LIMIT :limit
