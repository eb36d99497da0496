-- bustrail schema, version 2: an hourly rollup of the audit trail, kept exact by triggers,
-- and the indexes that let the dashboard read latency percentiles by rank.
--
-- Three tables count, for every hour (UTC) of created_at, the transactions of BOTH
-- `transactions` and `transactions_archive` (an expired row moves from one to the other
-- and changes its status: the rollup follows it):
--   transactions_hourly         by tenant, route, status: count, bytes, latency sums
--   transactions_hourly_tools   by tenant, tool: count, failed, bytes, tool latency
--   transactions_hourly_errors  by tenant, error_kind (rows with one): count, failed
-- Three narrow tables rather than one by every column at once: the dashboard reads a
-- week of them about three times faster (a tenant's tools times its statuses is what
-- makes one wide table long). They are exact at every commit: statement triggers with
-- transition tables record the change of every INSERT, UPDATE, DELETE and COPY of either
-- table; TRUNCATE recounts. Not covered: writing a partition directly (not through
-- `transactions`) or detaching one; after such surgery `SELECT bustrail_hourly_rebuild()`
-- recounts everything. bustrail_drop_partitions_before takes the rows it drops out.
--
-- Concurrency: a statement's trigger does not touch the rollup. It appends its change,
-- aggregated, to transactions_hourly_pending (tagged with its transaction id) and arms a
-- deferred trigger, which at COMMIT merges everything the transaction changed: table
-- after table, each in one upsert sorted by key. So every writer locks rollup rows in
-- the same order, and only when it will wait for nothing else: no deadlock between
-- concurrent daemons whatever order their statements ran in (sorting each statement's
-- upsert alone would not do: a transaction runs several, and an upsert fires both an
-- INSERT and an UPDATE trigger), and a busy hour's rows stay locked only for a commit.
-- (A writer at REPEATABLE READ or SERIALIZABLE may get serialization failures on a busy
-- hour's rows; the daemon writes at READ COMMITTED.)
--
-- Privileges: the trigger functions are SECURITY DEFINER (they run as the owner, which
-- row-level security does not restrict) with a pinned search_path, so a daemon's role
-- needs no right on the rollup to write audit rows, and cannot forge its figures. It may
-- read its own tenant's rollup rows (bustrail_grant_app_role grants SELECT; RLS as on
-- the other tables).

CREATE TABLE transactions_hourly (
    hour          timestamptz      NOT NULL,  -- the hour's start (UTC), from created_at
    tenant        text             NOT NULL,
    route         tx_route         NOT NULL,
    status        tx_status        NOT NULL,
    transactions  bigint           NOT NULL,  -- count(*)
    bytes         bigint           NOT NULL,  -- sum(size)
    stored_bytes  bigint           NOT NULL,  -- sum(stored_size): bytes at rest
    tool_n        bigint           NOT NULL,  -- count(tool_ms)
    tool_ms_sum   double precision NOT NULL,  -- sum(tool_ms): mean = tool_ms_sum / tool_n
    store_n       bigint           NOT NULL,  -- count(store_ms)
    store_ms_sum  double precision NOT NULL,  -- sum(store_ms)
    PRIMARY KEY (hour, tenant, route, status)
);

CREATE TABLE transactions_hourly_tools (
    hour          timestamptz      NOT NULL,
    tenant        text             NOT NULL,
    tool          text,
    transactions  bigint           NOT NULL,
    failed        bigint           NOT NULL,  -- status failed, rejected or corrupted
    bytes         bigint           NOT NULL,
    tool_n        bigint           NOT NULL,
    tool_ms_sum   double precision NOT NULL,
    CONSTRAINT transactions_hourly_tools_key UNIQUE NULLS NOT DISTINCT (hour, tenant, tool)
);

-- Transactions with an error_kind only.
CREATE TABLE transactions_hourly_errors (
    hour          timestamptz      NOT NULL,
    tenant        text             NOT NULL,
    error_kind    text             NOT NULL,
    transactions  bigint           NOT NULL,
    failed        bigint           NOT NULL,
    PRIMARY KEY (hour, tenant, error_kind)
);

-- Changes not merged yet, at the finest grain (every column the three tables group by):
-- rows of transactions still running, gone at their commit (or with them on rollback).
-- UNLOGGED: after a crash there is no transaction left to merge.
CREATE UNLOGGED TABLE transactions_hourly_pending (
    xact          xid8             NOT NULL,
    hour          timestamptz      NOT NULL,
    tenant        text             NOT NULL,
    tool          text,
    route         tx_route         NOT NULL,
    status        tx_status        NOT NULL,
    error_kind    text,
    transactions  bigint           NOT NULL,
    bytes         bigint           NOT NULL,
    stored_bytes  bigint           NOT NULL,
    tool_n        bigint           NOT NULL,
    tool_ms_sum   double precision NOT NULL,
    store_n       bigint           NOT NULL,
    store_ms_sum  double precision NOT NULL
);
CREATE INDEX transactions_hourly_pending_xact_idx ON transactions_hourly_pending (xact);

-- One row per transaction with pending changes: its insert arms the deferred merge.
CREATE UNLOGGED TABLE transactions_hourly_flush (
    xact          xid8             PRIMARY KEY
);

ALTER TABLE transactions_hourly ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions_hourly_tools ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions_hourly_errors ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions_hourly_pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE transactions_hourly_flush ENABLE ROW LEVEL SECURITY;
CREATE POLICY tenant_select ON transactions_hourly FOR SELECT
    USING (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_select ON transactions_hourly_tools FOR SELECT
    USING (tenant = current_setting('bustrail.tenant', true));
CREATE POLICY tenant_select ON transactions_hourly_errors FOR SELECT
    USING (tenant = current_setting('bustrail.tenant', true));

-- A statement changed rows of `transactions` or `transactions_archive`: record its
-- change, aggregated by rollup key (old rows count negatively), for the merge at commit.
CREATE FUNCTION bustrail_hourly_track()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    added bigint := 0;
    n     bigint;
BEGIN
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO transactions_hourly_pending
        SELECT pg_current_xact_id(),
               date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
               tenant, tool, route, status, error_kind,
               count(*), sum(size), coalesce(sum(stored_size), 0),
               count(tool_ms), coalesce(sum(tool_ms), 0), count(store_ms), coalesce(sum(store_ms), 0)
        FROM new_rows
        GROUP BY 2, 3, 4, 5, 6, 7;
        GET DIAGNOSTICS n = ROW_COUNT;
        added := added + n;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO transactions_hourly_pending
        SELECT pg_current_xact_id(),
               date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
               tenant, tool, route, status, error_kind,
               -count(*), -sum(size), -coalesce(sum(stored_size), 0),
               -count(tool_ms), -coalesce(sum(tool_ms), 0), -count(store_ms), -coalesce(sum(store_ms), 0)
        FROM old_rows
        GROUP BY 2, 3, 4, 5, 6, 7;
        GET DIAGNOSTICS n = ROW_COUNT;
        added := added + n;
    END IF;
    IF added > 0 THEN
        INSERT INTO transactions_hourly_flush VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END;
$$;

-- At commit: merge the transaction's pending changes into the three tables, one table
-- after the other, each in key order; rows whose count came to zero go.
CREATE FUNCTION bustrail_hourly_flush()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    emptied tid[];
BEGIN
    WITH merged AS (
        INSERT INTO transactions_hourly AS h
        SELECT hour, tenant, route, status, sum(transactions), sum(bytes), sum(stored_bytes),
               sum(tool_n), sum(tool_ms_sum), sum(store_n), sum(store_ms_sum)
        FROM transactions_hourly_pending
        WHERE xact = NEW.xact
        GROUP BY hour, tenant, route, status
        HAVING (sum(transactions), sum(bytes), sum(stored_bytes), sum(tool_n), sum(tool_ms_sum),
                sum(store_n), sum(store_ms_sum)) IS DISTINCT FROM (0, 0, 0, 0, 0::float8, 0, 0::float8)
        ORDER BY hour, tenant, route, status
        ON CONFLICT (hour, tenant, route, status) DO UPDATE SET
            transactions = h.transactions + excluded.transactions,
            bytes        = h.bytes + excluded.bytes,
            stored_bytes = h.stored_bytes + excluded.stored_bytes,
            tool_n       = h.tool_n + excluded.tool_n,
            tool_ms_sum  = h.tool_ms_sum + excluded.tool_ms_sum,
            store_n      = h.store_n + excluded.store_n,
            store_ms_sum = h.store_ms_sum + excluded.store_ms_sum
        RETURNING h.ctid, h.transactions
    )
    SELECT array_agg(ctid) FILTER (WHERE transactions = 0) INTO emptied FROM merged;
    IF emptied IS NOT NULL THEN
        DELETE FROM transactions_hourly WHERE ctid = ANY (emptied);
    END IF;

    WITH merged AS (
        INSERT INTO transactions_hourly_tools AS h
        SELECT hour, tenant, tool, sum(transactions),
               coalesce(sum(transactions) FILTER (WHERE status IN ('failed', 'rejected', 'corrupted')), 0),
               sum(bytes), sum(tool_n), sum(tool_ms_sum)
        FROM transactions_hourly_pending
        WHERE xact = NEW.xact
        GROUP BY hour, tenant, tool
        HAVING (sum(transactions),
                coalesce(sum(transactions) FILTER (WHERE status IN ('failed', 'rejected', 'corrupted')), 0),
                sum(bytes), sum(tool_n), sum(tool_ms_sum)) IS DISTINCT FROM (0, 0, 0, 0, 0::float8)
        ORDER BY hour, tenant, tool
        ON CONFLICT ON CONSTRAINT transactions_hourly_tools_key DO UPDATE SET
            transactions = h.transactions + excluded.transactions,
            failed       = h.failed + excluded.failed,
            bytes        = h.bytes + excluded.bytes,
            tool_n       = h.tool_n + excluded.tool_n,
            tool_ms_sum  = h.tool_ms_sum + excluded.tool_ms_sum
        RETURNING h.ctid, h.transactions
    )
    SELECT array_agg(ctid) FILTER (WHERE transactions = 0) INTO emptied FROM merged;
    IF emptied IS NOT NULL THEN
        DELETE FROM transactions_hourly_tools WHERE ctid = ANY (emptied);
    END IF;

    WITH merged AS (
        INSERT INTO transactions_hourly_errors AS h
        SELECT hour, tenant, error_kind, sum(transactions),
               coalesce(sum(transactions) FILTER (WHERE status IN ('failed', 'rejected', 'corrupted')), 0)
        FROM transactions_hourly_pending
        WHERE xact = NEW.xact AND error_kind IS NOT NULL
        GROUP BY hour, tenant, error_kind
        HAVING (sum(transactions),
                coalesce(sum(transactions) FILTER (WHERE status IN ('failed', 'rejected', 'corrupted')), 0))
               IS DISTINCT FROM (0, 0)
        ORDER BY hour, tenant, error_kind
        ON CONFLICT (hour, tenant, error_kind) DO UPDATE SET
            transactions = h.transactions + excluded.transactions,
            failed       = h.failed + excluded.failed
        RETURNING h.ctid, h.transactions
    )
    SELECT array_agg(ctid) FILTER (WHERE transactions = 0) INTO emptied FROM merged;
    IF emptied IS NOT NULL THEN
        DELETE FROM transactions_hourly_errors WHERE ctid = ANY (emptied);
    END IF;

    DELETE FROM transactions_hourly_pending WHERE xact = NEW.xact;
    DELETE FROM transactions_hourly_flush WHERE xact = NEW.xact;
    RETURN NULL;
END;
$$;

-- Recount the rollup from the rows themselves (the migration's backfill; TRUNCATE; or
-- repair after writing partitions directly). Writers wait while it runs. Returns the
-- number of transactions counted.
CREATE FUNCTION bustrail_hourly_rebuild()
RETURNS bigint
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
DECLARE
    n bigint;
BEGIN
    LOCK TABLE transactions, transactions_archive IN SHARE MODE;
    -- Under those locks only this transaction can have changes pending, and the recount
    -- sees them: they must not be merged a second time.
    DELETE FROM transactions_hourly_pending WHERE xact = pg_current_xact_id();
    DELETE FROM transactions_hourly;
    DELETE FROM transactions_hourly_tools;
    DELETE FROM transactions_hourly_errors;
    INSERT INTO transactions_hourly_pending
    SELECT pg_current_xact_id(),
           date_bin('1 hour', created_at, timestamptz '2000-01-01 00:00:00+00'),
           tenant, tool, route, status, error_kind,
           count(*), sum(size), coalesce(sum(stored_size), 0),
           count(tool_ms), coalesce(sum(tool_ms), 0), count(store_ms), coalesce(sum(store_ms), 0)
    FROM (
        SELECT created_at, tenant, tool, route, status, error_kind, size, stored_size,
               tool_ms, store_ms
        FROM transactions
        UNION ALL
        SELECT created_at, tenant, tool, route, status, error_kind, size, stored_size,
               tool_ms, store_ms
        FROM transactions_archive
    ) audit
    GROUP BY 2, 3, 4, 5, 6, 7;
    SELECT coalesce(sum(transactions), 0) INTO n
    FROM transactions_hourly_pending WHERE xact = pg_current_xact_id();
    -- Merged at commit, like any other change.
    INSERT INTO transactions_hourly_flush VALUES (pg_current_xact_id()) ON CONFLICT DO NOTHING;
    RETURN n;
END;
$$;

CREATE FUNCTION bustrail_hourly_truncated()
RETURNS trigger
LANGUAGE plpgsql
SECURITY DEFINER
SET search_path = pg_catalog, public, pg_temp
AS $$
BEGIN
    PERFORM bustrail_hourly_rebuild();
    RETURN NULL;
END;
$$;

-- PostgreSQL allows transition tables on single-event triggers only: one per event.
CREATE TRIGGER transactions_hourly_insert AFTER INSERT ON transactions
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_track();
CREATE TRIGGER transactions_hourly_update AFTER UPDATE ON transactions
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_track();
CREATE TRIGGER transactions_hourly_delete AFTER DELETE ON transactions
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_track();
CREATE TRIGGER transactions_hourly_truncate AFTER TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_truncated();

CREATE TRIGGER transactions_hourly_insert AFTER INSERT ON transactions_archive
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_track();
CREATE TRIGGER transactions_hourly_update AFTER UPDATE ON transactions_archive
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_track();
CREATE TRIGGER transactions_hourly_delete AFTER DELETE ON transactions_archive
    REFERENCING OLD TABLE AS old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_track();
CREATE TRIGGER transactions_hourly_truncate AFTER TRUNCATE ON transactions_archive
    FOR EACH STATEMENT EXECUTE FUNCTION bustrail_hourly_truncated();

CREATE CONSTRAINT TRIGGER transactions_hourly_merge AFTER INSERT ON transactions_hourly_flush
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION bustrail_hourly_flush();

REVOKE EXECUTE ON FUNCTION bustrail_hourly_track(), bustrail_hourly_flush(),
    bustrail_hourly_rebuild(), bustrail_hourly_truncated() FROM PUBLIC;

-- Latency percentiles by rank: the value at rank k of a time range is read by walking
-- one of these indexes (from the nearer end) with index-only scans.
CREATE INDEX transactions_tool_ms_idx ON transactions (tool_ms, created_at)
    WHERE tool_ms IS NOT NULL;
CREATE INDEX transactions_store_ms_idx ON transactions (store_ms, created_at)
    WHERE store_ms IS NOT NULL;
CREATE INDEX transactions_archive_tool_ms_idx ON transactions_archive (tool_ms, created_at)
    WHERE tool_ms IS NOT NULL;
CREATE INDEX transactions_archive_store_ms_idx ON transactions_archive (store_ms, created_at)
    WHERE store_ms IS NOT NULL;

-- Retention stays a partition drop; the dropped rows leave the rollup first (through the
-- same pending changes, merged at commit).
CREATE OR REPLACE FUNCTION bustrail_drop_partitions_before(p_before timestamptz)
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
            EXECUTE format(
                'INSERT INTO transactions_hourly_pending
                 SELECT pg_current_xact_id(),
                        date_bin(''1 hour'', created_at, timestamptz ''2000-01-01 00:00:00+00''),
                        tenant, tool, route, status, error_kind,
                        -count(*), -sum(size), -coalesce(sum(stored_size), 0),
                        -count(tool_ms), -coalesce(sum(tool_ms), 0),
                        -count(store_ms), -coalesce(sum(store_ms), 0)
                 FROM %I
                 GROUP BY 2, 3, 4, 5, 6, 7', part.relname);
            INSERT INTO transactions_hourly_flush VALUES (pg_current_xact_id())
                ON CONFLICT DO NOTHING;
            EXECUTE format('DROP TABLE %I', part.relname);
            RETURN NEXT part.relname;
        END IF;
    END LOOP;
END;
$$;

-- Functions running as their owner look in pg_temp last (by default it comes first).
ALTER FUNCTION bustrail_expire(timestamptz, integer) SET search_path = pg_catalog, public, pg_temp;
ALTER FUNCTION bustrail_abandon_pending(interval, timestamptz)
    SET search_path = pg_catalog, public, pg_temp;

CREATE OR REPLACE FUNCTION bustrail_grant_app_role(p_role name)
RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    EXECUTE format('GRANT USAGE ON SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON transactions, transactions_archive, chunks TO %I', p_role);
    EXECUTE format('GRANT SELECT ON transactions_hourly, transactions_hourly_tools, transactions_hourly_errors TO %I', p_role);
    EXECUTE format('GRANT SELECT, INSERT, UPDATE ON breaker_events, findings, analysis_runs TO %I', p_role);
    EXECUTE format('GRANT SELECT ON schema_migrations TO %I', p_role);
    EXECUTE format('GRANT USAGE ON ALL SEQUENCES IN SCHEMA public TO %I', p_role);
    EXECUTE format('GRANT EXECUTE ON FUNCTION bustrail_expire(timestamptz, integer), bustrail_abandon_pending(interval, timestamptz) TO %I', p_role);
END;
$$;

-- Roles granted before this version may read their tenant's rollup too.
DO $$
DECLARE
    grantee name;
BEGIN
    FOR grantee IN
        SELECT DISTINCT g.grantee FROM information_schema.role_table_grants g
        WHERE g.table_schema = 'public' AND g.table_name = 'transactions'
          AND g.privilege_type = 'SELECT' AND g.grantee <> current_user
          AND g.grantee <> 'PUBLIC'
    LOOP
        EXECUTE format('GRANT SELECT ON transactions_hourly, transactions_hourly_tools, transactions_hourly_errors TO %I', grantee);
    END LOOP;
END;
$$;

-- The backfill: every row already there.
SELECT bustrail_hourly_rebuild();
