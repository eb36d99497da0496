-- bustrail schema, version 3: which daemon recorded each transaction.
--
-- `daemon_id` is the same value as `breaker_events.daemon_id` (host:pid of the daemon),
-- so the audit trail can tell daemons apart when several share this database: which
-- daemon answered a call, and whose fallbacks happened while whose breaker flapped.
-- Rows written before this version keep NULL (nobody knows any more).
--
-- Adding a nullable column without a default only changes the catalog: no table rewrite,
-- no long lock, whatever the number of rows. On the partitioned `transactions` it
-- reaches every partition, the default one included.

ALTER TABLE transactions ADD COLUMN daemon_id text;
ALTER TABLE transactions_archive ADD COLUMN daemon_id text;

-- Expiry names the archive's columns one by one: it must carry daemon_id too. Otherwise
-- as in version 1, with the pinned search_path of version 2 (CREATE OR REPLACE resets
-- what it does not state; ownership and grants stay).
CREATE OR REPLACE FUNCTION bustrail_expire(p_now timestamptz DEFAULT now(), p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    moved integer;
BEGIN
    WITH due AS (
        SELECT id, created_at FROM transactions
        WHERE status IN ('stored', 'fetched', 'corrupted') AND expires_at <= p_now
        ORDER BY expires_at
        LIMIT p_limit
        FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM transactions t USING due
        WHERE t.id = due.id AND t.created_at = due.created_at
        RETURNING t.*
    ), archived AS (
        INSERT INTO transactions_archive (
            id, created_at, tenant, session_id, request_id, tool, mime_type, direction, route, status,
            size, stored_size, compression, checksum, chunk_count, stored_at, delivered_at,
            first_fetched_at, expires_at, fetch_count, tool_ms, store_ms, trace_id, span_id,
            error_kind, error, daemon_id, archived_at)
        SELECT id, created_at, tenant, session_id, request_id, tool, mime_type, direction, route,
               CASE WHEN status = 'corrupted' THEN status ELSE 'expired'::tx_status END,
               size, stored_size, compression, checksum, chunk_count, stored_at, delivered_at,
               first_fetched_at, expires_at, fetch_count, tool_ms, store_ms, trace_id, span_id,
               error_kind, error, daemon_id, p_now
        FROM gone
        ON CONFLICT (id, created_at) DO NOTHING
        RETURNING id
    ), dropped AS (
        DELETE FROM chunks c USING gone WHERE c.transaction_id = gone.id
    )
    SELECT count(*) INTO moved FROM gone;
    RETURN moved;
END;
$$;
