-- The Overview page. Every query reads the audit trail of one time range: the live
-- table and the archive (expired payloads' rows move there), each through its
-- created_at index. Parameters: :start, :end (timestamps), and where named :bucket
-- (seconds) or :cap (rows).

-- overview_volume@postgresql --
-- Transactions per time bucket (epoch seconds), by route and status, with their bytes:
-- the totals are added up from these few rows, which saves a scan of the range.
WITH audit AS (
    SELECT created_at, route::text AS route, status::text AS status, size, stored_size
    FROM transactions
    WHERE created_at >= :start AND created_at < :end
    UNION ALL
    SELECT created_at, route::text, status::text, size, stored_size FROM transactions_archive
    WHERE created_at >= :start AND created_at < :end
)
SELECT extract(epoch FROM date_bin(make_interval(secs => :bucket), created_at,
                                   timestamptz '2000-01-01 00:00:00+00'))::bigint AS bucket,
       route, status, count(*) AS transactions, coalesce(sum(size), 0) AS bytes,
       coalesce(sum(stored_size), 0) AS stored_bytes
FROM audit
GROUP BY 1, 2, 3
ORDER BY 1, 2, 3

-- overview_volume@sqlite --
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

-- overview_latency@postgresql --
-- p50, p95, p99 of tool and store latency (ms), continuous (interpolated) percentiles.
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

-- overview_latency_sample@sqlite --
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

-- overview_errors --
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

-- overview_tools --
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

-- overview_tenants --
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
