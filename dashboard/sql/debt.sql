-- The Silent failures / debt page: the findings ledger and the analysis runs that
-- keep it. Parameters: :limit (rows).

-- name: debt_open_by_kind
-- Open debt (acknowledged findings included: someone owns them, they are not fixed).
SELECT kind, severity, status, count(*) AS findings,
       coalesce(sum(occurrences), 0) AS occurrences,
       count(CASE WHEN regression THEN 1 END) AS regressions
FROM findings
WHERE status IN ('open', 'acknowledged')
GROUP BY kind, severity, status
ORDER BY kind, severity, status

-- name: debt_findings
-- The findings themselves, worst and most recent first.
SELECT id, kind, severity, status, title, explanation, remedy, tool, tenant,
       first_seen_at, last_seen_at, resolved_at, acknowledged_at, acknowledged_by,
       occurrences, sample_transaction_ids, regression, reopened_count, last_run_id
FROM findings
ORDER BY CASE status WHEN 'open' THEN 0 WHEN 'acknowledged' THEN 1 ELSE 2 END,
         CASE severity WHEN 'critical' THEN 0 WHEN 'error' THEN 1
                       WHEN 'warning' THEN 2 ELSE 3 END,
         last_seen_at DESC, id
LIMIT :limit

-- name: debt_runs
-- The newest analysis runs: the burn-down of open debt.
SELECT id, started_at, finished_at, window_start, window_end, transactions_scanned,
       new_count, resolved_count, reopened_count, open_count
FROM analysis_runs
ORDER BY started_at DESC, id DESC
LIMIT :limit
