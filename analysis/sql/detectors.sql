-- The silent-failure detectors' queries (analysis.detectors), one named block each.
--
-- Every query reads one window of the audit trail, chosen by created_at (the time inside
-- the transaction's UUIDv7 id and the partition key on PostgreSQL, so only the window's
-- partitions are read), and returns only the rows that show the problem: filtering and
-- aggregation happen here, pandas sees the matches. A block named NAME@postgresql or
-- NAME@sqlite is that dialect's variant of NAME.
--
-- Parameters (timestamps are computed in Python, so no date arithmetic differs by
-- dialect): :since, :now (the window), :baseline_start, :baseline_end (the window the
-- regressions compare with), and the cut-offs named below (:orphan_before = :now minus
-- orphan_grace, and so on). Status and kind values are literals: they are part of the
-- definition, not parameters.

-- name: window_size
-- How many audit records the window holds (live table and archive).
SELECT
    (SELECT count(*) FROM transactions
     WHERE created_at >= :since AND created_at <= :now)
  + (SELECT count(*) FROM transactions_archive
     WHERE created_at >= :since AND created_at <= :now) AS scanned

-- name: orphaned_claim_check
-- Stored, never fetched: still `stored` past its expiry or long after it was stored,
-- or archived as `expired` without a single fetch.
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND route = 'store' AND status = 'stored' AND fetch_count = 0
  AND (expires_at <= :now OR stored_at <= :orphan_before)
UNION ALL
SELECT id, tenant, tool FROM transactions_archive
WHERE created_at >= :since AND created_at <= :now
  AND route = 'store' AND status = 'expired' AND fetch_count = 0

-- name: checksum_mismatch
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND (status = 'corrupted' OR error_kind = 'checksum_mismatch')
UNION ALL
SELECT id, tenant, tool FROM transactions_archive
WHERE created_at >= :since AND created_at <= :now
  AND (status = 'corrupted' OR error_kind = 'checksum_mismatch')

-- name: stuck_pending
-- A store that never completed: still pending after :stuck_before, or failed by
-- crash recovery.
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND route = 'store'
  AND ((status = 'pending' AND created_at <= :stuck_before)
       OR (status = 'failed' AND error_kind = 'abandoned'))

-- name: lost_response
-- The call ran; the caller never got an answer.
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND route IN ('inline', 'fallback')
  AND ((status = 'pending' AND created_at <= :lost_before)
       OR error_kind IN ('send_failed', 'abandoned'))

-- name: fallback_oversize
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND error_kind = 'fallback_oversize'

-- name: empty_success
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND error_kind IN ('empty_result', 'error_text')
  AND status IN ('delivered', 'stored', 'fetched')

-- name: cleanup_lag
-- Expired more than cleanup_grace ago (:cleanup_before) and still holding its payload.
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND status IN ('stored', 'fetched') AND expires_at < :cleanup_before

-- name: compression_waste
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND route = 'store' AND compression <> 'none'
  AND size > 0 AND stored_size >= :waste_ratio * size

-- name: missing_trace
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND trace_id IS NULL AND status <> 'rejected'

-- name: duplicate_delivery
-- The same request (tenant, session, request id, tool) answered more than once. The
-- window function partitions NULL session ids and tools together, as GROUP BY would.
SELECT id, tenant, tool FROM (
    SELECT id, tenant, tool,
           count(*) OVER (PARTITION BY tenant, session_id, request_id, tool) AS answers
    FROM transactions
    WHERE created_at >= :since AND created_at <= :now
      AND request_id IS NOT NULL
      AND status IN ('delivered', 'stored', 'fetched')
) AS answered
WHERE answers > 1

-- name: breaker_transitions
-- Every breaker transition of the window (a small table: one row per state change).
SELECT breaker, daemon_id, at, to_state FROM breaker_events
WHERE at >= :since AND at <= :now
ORDER BY breaker, daemon_id, at

-- name: fallbacks_between
-- The fallbacks of one daemon (:daemon_id, that of the flapping breaker's events) in a
-- time range: another daemon on the same database falls back for reasons of its own.
-- Rows with no daemon_id (written before schema 3) count for every daemon, and events
-- with none (:daemon_id NULL) count every daemon's fallbacks.
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :start AND created_at <= :end
  AND route = 'fallback'
  AND (CAST(:daemon_id AS TEXT) IS NULL OR daemon_id IS NULL OR daemon_id = :daemon_id)

-- name: call_errors_by_tool
-- Tool calls and their failures (tool_error, timeout), per tool, in the current window
-- and the baseline window.
SELECT tool,
       sum(CASE WHEN created_at >= :since THEN 1 ELSE 0 END) AS current_calls,
       sum(CASE WHEN created_at >= :since AND status = 'failed'
                 AND error_kind IN ('tool_error', 'timeout') THEN 1 ELSE 0 END) AS current_errors,
       sum(CASE WHEN created_at < :baseline_end THEN 1 ELSE 0 END) AS baseline_calls,
       sum(CASE WHEN created_at < :baseline_end AND status = 'failed'
                 AND error_kind IN ('tool_error', 'timeout') THEN 1 ELSE 0 END) AS baseline_errors
FROM transactions
WHERE direction = 'result' AND tool IS NOT NULL
  AND ((created_at >= :baseline_start AND created_at < :baseline_end)
       OR (created_at >= :since AND created_at <= :now))
GROUP BY tool

-- name: call_errors
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND direction = 'result' AND tool IN :tools
  AND status = 'failed' AND error_kind IN ('tool_error', 'timeout')

-- name: latency_by_tool@postgresql
-- p95 of tool_ms per tool in each window, computed where the rows are.
SELECT tool,
       count(*) FILTER (WHERE created_at >= :since) AS current_calls,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY tool_ms)
           FILTER (WHERE created_at >= :since) AS current_p95,
       count(*) FILTER (WHERE created_at < :baseline_end) AS baseline_calls,
       percentile_cont(0.95) WITHIN GROUP (ORDER BY tool_ms)
           FILTER (WHERE created_at < :baseline_end) AS baseline_p95
FROM transactions
WHERE direction = 'result' AND tool IS NOT NULL AND tool_ms IS NOT NULL
  AND ((created_at >= :baseline_start AND created_at < :baseline_end)
       OR (created_at >= :since AND created_at <= :now))
GROUP BY tool

-- name: latency_by_tool@sqlite
-- SQLite has no percentile: the durations of both windows, for pandas to take the p95.
SELECT tool, CASE WHEN created_at >= :since THEN 1 ELSE 0 END AS is_current, tool_ms
FROM transactions
WHERE direction = 'result' AND tool IS NOT NULL AND tool_ms IS NOT NULL
  AND ((created_at >= :baseline_start AND created_at < :baseline_end)
       OR (created_at >= :since AND created_at <= :now))

-- name: slow_calls
SELECT id, tenant, tool FROM transactions
WHERE created_at >= :since AND created_at <= :now
  AND direction = 'result' AND tool = :tool AND tool_ms > :slower_than
