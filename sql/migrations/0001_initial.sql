-- bustrail schema, version 1.
--
-- Roles: the role that runs `bustrail db upgrade` owns every table and bypasses row-level
-- security (as owners do unless FORCE is set); it runs cleanup and analysis. Daemons
-- should connect as a separate, non-superuser role given access with
-- `SELECT bustrail_grant_app_role('NAME')`: that role sees only the rows of the tenant
-- named by the per-transaction setting `bustrail.tenant`.

CREATE TYPE tx_direction AS ENUM ('result', 'upload');
CREATE TYPE tx_route AS ENUM ('inline', 'store', 'fallback');
CREATE TYPE tx_status AS ENUM (
    'pending',    -- recorded, not yet answered
    'delivered',  -- pending -> delivered   (inline or fallback reached the client)
    'failed',     -- pending -> failed      (tool error, fallback_oversize, abandoned, ...)
    'stored',     -- pending -> stored      (claim check written)
    'fetched',    -- stored -> fetched      (fetched at least once)
    'expired',    -- stored|fetched -> expired (payload deleted, row archived)
    'rejected',   -- over MESSAGE_BUS_MAX_PAYLOAD_MB
    'corrupted'   -- a fetch found bytes that do not match the checksum
);
CREATE TYPE tx_compression AS ENUM ('none', 'gzip', 'zstd');
CREATE TYPE finding_severity AS ENUM ('info', 'warning', 'error', 'critical');
CREATE TYPE finding_status AS ENUM ('open', 'acknowledged', 'resolved');

-- One row per transaction. Partitioned by month on created_at, which is the timestamp
-- inside the UUIDv7 id, so a lookup by id names its partition.
CREATE TABLE transactions (
    id               uuid             NOT NULL,
    created_at       timestamptz      NOT NULL,
    tenant           text             NOT NULL,
    session_id       text,
    request_id       text,
    tool             text,
    mime_type        text,
    direction        tx_direction     NOT NULL DEFAULT 'result',
    route            tx_route         NOT NULL,
    status           tx_status        NOT NULL,
    size             bigint           NOT NULL DEFAULT 0,
    stored_size      bigint,
    compression      tx_compression   NOT NULL DEFAULT 'none',
    checksum         text,
    chunk_count      integer          NOT NULL DEFAULT 0,
    stored_at        timestamptz,
    delivered_at     timestamptz,
    first_fetched_at timestamptz,
    expires_at       timestamptz,
    fetch_count      integer          NOT NULL DEFAULT 0,
    tool_ms          double precision,
    store_ms         double precision,
    trace_id         text,
    span_id          text,
    error_kind       text,
    error            text,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);

CREATE TABLE transactions_default PARTITION OF transactions DEFAULT;

CREATE INDEX transactions_created_at_idx ON transactions (created_at);
CREATE INDEX transactions_tenant_created_at_idx ON transactions (tenant, created_at);
CREATE INDEX transactions_tool_created_at_idx ON transactions (tool, created_at);
CREATE INDEX transactions_pending_idx ON transactions (created_at) WHERE status = 'pending';
CREATE INDEX transactions_stored_expires_at_idx ON transactions (expires_at)
    WHERE status IN ('stored', 'fetched');
CREATE INDEX transactions_expires_at_idx ON transactions (expires_at)
    WHERE expires_at IS NOT NULL;
CREATE INDEX transactions_trace_id_idx ON transactions (trace_id) WHERE trace_id IS NOT NULL;

CREATE TABLE transactions_archive (
    id               uuid             NOT NULL,
    created_at       timestamptz      NOT NULL,
    tenant           text             NOT NULL,
    session_id       text,
    request_id       text,
    tool             text,
    mime_type        text,
    direction        tx_direction     NOT NULL DEFAULT 'result',
    route            tx_route         NOT NULL,
    status           tx_status        NOT NULL,
    size             bigint           NOT NULL DEFAULT 0,
    stored_size      bigint,
    compression      tx_compression   NOT NULL DEFAULT 'none',
    checksum         text,
    chunk_count      integer          NOT NULL DEFAULT 0,
    stored_at        timestamptz,
    delivered_at     timestamptz,
    first_fetched_at timestamptz,
    expires_at       timestamptz,
    fetch_count      integer          NOT NULL DEFAULT 0,
    tool_ms          double precision,
    store_ms         double precision,
    trace_id         text,
    span_id          text,
    error_kind       text,
    error            text,
    archived_at      timestamptz      NOT NULL,
    PRIMARY KEY (id, created_at)
);
CREATE INDEX transactions_archive_created_at_idx ON transactions_archive (created_at);
CREATE INDEX transactions_archive_tenant_idx ON transactions_archive (tenant, created_at);

-- Payload bytes, already compressed by the codec: STORAGE EXTERNAL keeps them out of
-- line without PostgreSQL compressing them a second time.
CREATE TABLE chunks (
    transaction_id uuid    NOT NULL,
    seq            integer NOT NULL,
    tenant         text    NOT NULL,
    checksum       text    NOT NULL,
    data           bytea   NOT NULL,
    PRIMARY KEY (transaction_id, seq)
);
ALTER TABLE chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- id is made by the daemon (UUIDv7), so replaying a spooled event twice is harmless.
CREATE TABLE breaker_events (
    id                   uuid        PRIMARY KEY,
    at                   timestamptz NOT NULL,
    breaker              text        NOT NULL,
    daemon_id            text,
    from_state           text        NOT NULL,
    to_state             text        NOT NULL,
    reason               text        NOT NULL,
    failure_rate         double precision,
    consecutive_failures integer
);
CREATE INDEX breaker_events_at_idx ON breaker_events (at);

CREATE TABLE findings (
    id                     bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    fingerprint            text             NOT NULL UNIQUE,
    kind                   text             NOT NULL,
    severity               finding_severity NOT NULL,
    status                 finding_status   NOT NULL,
    title                  text             NOT NULL,
    explanation            text             NOT NULL,
    remedy                 text             NOT NULL,
    tool                   text,
    tenant                 text,
    first_seen_at          timestamptz      NOT NULL,
    last_seen_at           timestamptz      NOT NULL,
    resolved_at            timestamptz,
    acknowledged_at        timestamptz,
    acknowledged_by        text,
    occurrences            bigint           NOT NULL DEFAULT 0,
    sample_transaction_ids jsonb            NOT NULL DEFAULT '[]',
    regression             boolean          NOT NULL DEFAULT false,
    reopened_count         integer          NOT NULL DEFAULT 0,
    last_run_id            bigint
);
CREATE INDEX findings_status_kind_idx ON findings (status, kind);

CREATE TABLE analysis_runs (
    id                   bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    started_at           timestamptz NOT NULL,
    finished_at          timestamptz,
    window_start         timestamptz,
    window_end           timestamptz,
    transactions_scanned bigint      NOT NULL DEFAULT 0,
    counts               jsonb       NOT NULL DEFAULT '{}',
    new_count            integer     NOT NULL DEFAULT 0,
    resolved_count       integer     NOT NULL DEFAULT 0,
    reopened_count       integer     NOT NULL DEFAULT 0,
    open_count           integer     NOT NULL DEFAULT 0
);
CREATE INDEX analysis_runs_started_at_idx ON analysis_runs (started_at);

-- Row-level security: a row is visible to, and writable by, its own tenant only.
-- The daemon sets the tenant for each database transaction with
--   SELECT set_config('bustrail.tenant', 'TENANT', true)
-- and with no tenant set, nothing is visible.
ALTER TABLE transactions ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions_default ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions_archive ENABLE ROW LEVEL SECURITY;
ALTER TABLE chunks ENABLE ROW LEVEL SECURITY;

CREATE POLICY tenant_select ON transactions FOR SELECT
    USING (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_insert ON transactions FOR INSERT
    WITH CHECK (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_update ON transactions FOR UPDATE
    USING (tenant = current_setting('bustrail.tenant', true))
    WITH CHECK (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_delete ON transactions FOR DELETE
    USING (tenant = current_setting('bustrail.tenant', true));

CREATE POLICY tenant_select ON transactions_archive FOR SELECT
    USING (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_insert ON transactions_archive FOR INSERT
    WITH CHECK (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_update ON transactions_archive FOR UPDATE
    USING (tenant = current_setting('bustrail.tenant', true))
    WITH CHECK (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_delete ON transactions_archive FOR DELETE
    USING (tenant = current_setting('bustrail.tenant', true));

CREATE POLICY tenant_select ON chunks FOR SELECT
    USING (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_insert ON chunks FOR INSERT
    WITH CHECK (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_update ON chunks FOR UPDATE
    USING (tenant = current_setting('bustrail.tenant', true))
    WITH CHECK (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_delete ON chunks FOR DELETE
    USING (tenant = current_setting('bustrail.tenant', true));

-- Monthly partitions from the month of p_from for p_months months. Each partition has
-- RLS enabled with no policy of its own, so reaching it directly (not through
-- `transactions`) shows a non-owner nothing.
CREATE FUNCTION bustrail_ensure_partitions(p_from timestamptz DEFAULT now(), p_months integer DEFAULT 3)
RETURNS integer
LANGUAGE plpgsql
AS $$
DECLARE
    -- Months are counted on the UTC wall clock (timestamp, not timestamptz): adding
    -- a month to a timestamptz follows the session's TimeZone and its DST shifts.
    first_month timestamp;
    month_start timestamptz;
    month_end   timestamptz;
    part_name   text;
    created     integer := 0;
BEGIN
    first_month := date_trunc('month', p_from AT TIME ZONE 'UTC');
    FOR i IN 0 .. p_months - 1 LOOP
        month_start := (first_month + make_interval(months => i)) AT TIME ZONE 'UTC';
        month_end := (first_month + make_interval(months => i + 1)) AT TIME ZONE 'UTC';
        part_name := format('transactions_y%sm%s',
                            to_char(month_start AT TIME ZONE 'UTC', 'YYYY'),
                            to_char(month_start AT TIME ZONE 'UTC', 'MM'));
        IF to_regclass(part_name) IS NULL THEN
            EXECUTE format(
                'CREATE TABLE %I PARTITION OF transactions FOR VALUES FROM (%L) TO (%L)',
                part_name, month_start, month_end);
            EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', part_name);
            created := created + 1;
        END IF;
    END LOOP;
    RETURN created;
END;
$$;

-- Retention is a partition drop: monthly partitions wholly before p_before go, rows
-- and all. Returns the names dropped.
CREATE FUNCTION bustrail_drop_partitions_before(p_before timestamptz)
RETURNS SETOF text
LANGUAGE plpgsql
AS $$
DECLARE
    part record;
BEGIN
    FOR part IN
        SELECT c.relname,
               (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'TO \(''([^'']+)''\)'))[1]::timestamptz AS upper_bound
        FROM pg_inherits i
        JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'transactions'::regclass AND c.relname <> 'transactions_default'
    LOOP
        IF part.upper_bound <= p_before THEN
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END;
$$;

-- Cleanup: stored payloads past expires_at move to transactions_archive (status
-- `expired`; a `corrupted` row keeps its status) and their chunks are deleted, in
-- batches of p_limit. Runs as the owner, across tenants.
CREATE FUNCTION bustrail_expire(p_now timestamptz DEFAULT now(), p_limit integer DEFAULT 10000)
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
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
            error_kind, error, archived_at)
        SELECT id, created_at, tenant, session_id, request_id, tool, mime_type, direction, route,
               CASE WHEN status = 'corrupted' THEN status ELSE 'expired'::tx_status END,
               size, stored_size, compression, checksum, chunk_count, stored_at, delivered_at,
               first_fetched_at, expires_at, fetch_count, tool_ms, store_ms, trace_id, span_id,
               error_kind, error, p_now
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

-- Crash recovery: transactions left pending longer than p_older_than fail as abandoned.
CREATE FUNCTION bustrail_abandon_pending(p_older_than interval, p_now timestamptz DEFAULT now())
RETURNS integer
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public
AS $$
DECLARE
    n integer;
BEGIN
    UPDATE transactions
    SET status = 'failed', error_kind = 'abandoned',
        error = 'left pending by a daemon that stopped before answering'
    WHERE status = 'pending' AND created_at < p_now - p_older_than;
    GET DIAGNOSTICS n = ROW_COUNT;
    DELETE FROM chunks c
    WHERE NOT EXISTS (
        SELECT 1 FROM transactions t
        WHERE t.id = c.transaction_id AND t.status IN ('pending', 'stored', 'fetched', 'corrupted'));
    RETURN n;
END;
$$;

-- Functions are executable by PUBLIC unless revoked: these two run as their owner,
-- across tenants, so only roles given them (bustrail_grant_app_role) may call them.
REVOKE EXECUTE ON FUNCTION bustrail_expire(timestamptz, integer) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION bustrail_abandon_pending(interval, timestamptz) FROM PUBLIC;

-- Give a (non-superuser) daemon role what it needs, and nothing that bypasses RLS.
CREATE FUNCTION bustrail_grant_app_role(p_role name)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON transactions, transactions_archive, chunks TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON breaker_events, findings, analysis_runs TO %I', p_role);
    EXECUTE format('GRANT SELECT ON schema_migrations TO %I', p_role);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION bustrail_expire(timestamptz, integer), bustrail_abandon_pending(interval, timestamptz) TO %I', p_role);
END;
$$;

SELECT bustrail_ensure_partitions(now() - interval '1 month', 4);
