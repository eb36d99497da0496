-- The Circuit breaker page. A breaker is one (breaker, daemon_id): every daemon keeps
-- its own. Parameters: :start, :end (timestamps), :limit (rows).

-- name: breaker_events
-- The transitions inside the range, oldest first.
SELECT at, breaker, daemon_id, from_state, to_state, reason, failure_rate,
       consecutive_failures
FROM breaker_events
WHERE at >= :start AND at < :end
ORDER BY at
LIMIT :limit

-- name: breaker_state_before
-- Each breaker's state when the range starts: the target of its last earlier event.
SELECT e.breaker, e.daemon_id, e.to_state, e.at
FROM breaker_events e
JOIN (
    SELECT breaker, coalesce(daemon_id, '') AS daemon, max(at) AS at
    FROM breaker_events
    WHERE at < :start
    GROUP BY breaker, coalesce(daemon_id, '')
) last
  ON e.breaker = last.breaker AND coalesce(e.daemon_id, '') = last.daemon AND e.at = last.at

-- name: breaker_outages
-- One row per outage overlapping the range: from a trip (closed -> open) to the next
-- return to closed (NULL while still out), how often it opened in between (failed
-- probes re-open it), and the fallback traffic it caused. The audit rows carry no
-- daemon id, so fallbacks are counted across daemons.
WITH tripped AS (
    SELECT t.breaker, t.daemon_id, t.at AS started_at, t.reason,
           (SELECT min(c.at) FROM breaker_events c
             WHERE c.breaker = t.breaker
               AND coalesce(c.daemon_id, '') = coalesce(t.daemon_id, '')
               AND c.at > t.at AND c.to_state = 'closed') AS ended_at
    FROM breaker_events t
    WHERE t.from_state = 'closed' AND t.to_state = 'open' AND t.at < :end
),
outages AS (
    SELECT o.breaker, o.daemon_id, o.started_at, o.ended_at, o.reason,
           (SELECT count(*) FROM breaker_events r
             WHERE r.breaker = o.breaker
               AND coalesce(r.daemon_id, '') = coalesce(o.daemon_id, '')
               AND r.to_state = 'open' AND r.at >= o.started_at
               AND (o.ended_at IS NULL OR r.at < o.ended_at)) AS opened
    FROM tripped o
    WHERE o.ended_at IS NULL OR o.ended_at >= :start
    ORDER BY o.started_at DESC
    LIMIT :limit
),
fallbacks AS (
    SELECT created_at, status, error_kind FROM transactions
    WHERE route = 'fallback' AND created_at < :end
      AND created_at >= (SELECT min(started_at) FROM outages)
    UNION ALL
    SELECT created_at, status, error_kind FROM transactions_archive
    WHERE route = 'fallback' AND created_at < :end
      AND created_at >= (SELECT min(started_at) FROM outages)
)
SELECT o.breaker, o.daemon_id, o.started_at, o.ended_at, o.reason, o.opened,
       count(f.created_at) AS fallbacks,
       count(CASE WHEN f.status = 'delivered' THEN 1 END) AS fallback_delivered,
       count(CASE WHEN f.error_kind = 'fallback_oversize' THEN 1 END) AS fallback_oversize
FROM outages o
LEFT JOIN fallbacks f
  ON f.created_at >= o.started_at AND f.created_at < coalesce(o.ended_at, :end)
GROUP BY o.breaker, o.daemon_id, o.started_at, o.ended_at, o.reason, o.opened
ORDER BY o.started_at DESC
