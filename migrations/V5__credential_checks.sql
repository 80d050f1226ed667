-- Agents' tokens checked in one statement, without a transaction of its own.
--
-- For each (tenant, agent, session) given, the agent's stored role, kind, credential
-- version, whether it is active and whether the session was logged out; an agent
-- absent from its tenant gives no row. Before reading a tenant's rows it scopes the
-- (implicit) transaction to that tenant (`app.tenant_id`, as `core_api::db::tenant_tx`
-- does), so row-level security applies as to every other statement; the setting ends
-- with the transaction. Each token is one probe of each primary key, both columns
-- bound, so the plan does not depend on statistics. Not SECURITY DEFINER: it runs as
-- the caller.
CREATE FUNCTION relaydesk_agent_credentials(p_tenants uuid[], p_agents uuid[], p_sids uuid[])
    RETURNS TABLE (tenant_id uuid, agent_id uuid, sid uuid, role text, kind text,
                   credential_version integer, active boolean, logged_out boolean)
    LANGUAGE plpgsql VOLATILE
AS $$
#variable_conflict use_column
DECLARE
    t uuid;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_agents, 1), 0) LOOP
        IF t IS DISTINCT FROM p_tenants[i] THEN
            t := p_tenants[i];
            PERFORM set_config('app.tenant_id', t::text, true);
        END IF;
        RETURN QUERY
            SELECT a.tenant_id, a.id, p_sids[i], a.role, a.kind, a.credential_version,
                   a.deactivated_at IS NULL,
                   EXISTS (SELECT 1 FROM revoked_sessions r
                            WHERE r.tenant_id = t AND r.sid = p_sids[i])
              FROM agents a
             WHERE a.tenant_id = t AND a.id = p_agents[i];
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION relaydesk_agent_credentials(uuid[], uuid[], uuid[]) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION relaydesk_agent_credentials(uuid[], uuid[], uuid[]) TO relaydesk_app;
