-- Logged-out sessions are kept until no token of theirs can still be valid; then a
-- periodic sweep of core-api deletes them, across tenants, a bounded number at a time
-- (`relaydesk_sweep_revoked_sessions`), oldest expiry first, by the expiry index.
CREATE INDEX revoked_sessions_expired ON revoked_sessions (expires_at);

-- Row-level security hides other tenants' sessions from relaydesk_app; this function
-- runs as the owning role, which this policy lets see every row, and only deletes
-- expired ones.
CREATE POLICY owner_sweep ON revoked_sessions TO CURRENT_USER USING (true);

CREATE FUNCTION relaydesk_sweep_revoked_sessions(max_rows integer)
    RETURNS integer
    LANGUAGE sql VOLATILE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
    WITH expired AS (
        SELECT tenant_id, sid FROM revoked_sessions
         WHERE expires_at < now()
         ORDER BY expires_at
         LIMIT max_rows
           FOR UPDATE SKIP LOCKED
    ), gone AS (
        DELETE FROM revoked_sessions r USING expired e
         WHERE r.tenant_id = e.tenant_id AND r.sid = e.sid
        RETURNING 1
    )
    SELECT count(*)::integer FROM gone
$$;
REVOKE ALL ON FUNCTION relaydesk_sweep_revoked_sessions(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION relaydesk_sweep_revoked_sessions(integer) TO relaydesk_app;
