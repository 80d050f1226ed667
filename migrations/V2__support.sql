-- The support domain: routing, assignment history, participants, teams, visitor
-- tracking, webhooks and blasts.
--
-- Same rules as V1: every primary key leads with tenant_id; every table has FORCEd
-- row-level security on app.tenant_id; relaydesk_app owns nothing.

-- Support types: how a kind of conversation is routed and closed.
ALTER TABLE support_types
    ADD COLUMN prefer_previous_agent boolean NOT NULL DEFAULT true,
    ADD COLUMN priority              integer NOT NULL DEFAULT 0,
    ADD COLUMN tier                  integer NOT NULL DEFAULT 1,
    ADD COLUMN reopen_window_secs    integer NOT NULL DEFAULT 604800 CHECK (reopen_window_secs >= 0),
    ADD COLUMN escalation_target     text,
    ADD COLUMN business_hours        jsonb,
    -- A bot that takes every new conversation of this type first (it hands off to humans).
    ADD COLUMN bot_id                uuid,
    ADD FOREIGN KEY (tenant_id, bot_id) REFERENCES agents (tenant_id, id);

-- Agents: capacity bookkeeping for race-free routing. `open_count` is the number of
-- conversations assigned to the agent (status assigned or snoozed); it only changes
-- under the agent's row lock, in the transaction that assigns or releases.
ALTER TABLE agents
    ADD COLUMN open_count        integer NOT NULL DEFAULT 0 CHECK (open_count >= 0),
    ADD COLUMN last_assigned_at  timestamptz,
    ADD COLUMN status_changed_at timestamptz NOT NULL DEFAULT now();

CREATE TABLE teams (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    id         uuid NOT NULL,
    name       text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, name)
);

CREATE TABLE team_members (
    tenant_id uuid NOT NULL,
    team_id   uuid NOT NULL,
    agent_id  uuid NOT NULL,
    PRIMARY KEY (tenant_id, team_id, agent_id),
    FOREIGN KEY (tenant_id, team_id) REFERENCES teams (tenant_id, id) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id)
);

-- Who may take a support type: listed agents (their skills) and members of listed teams.
-- A support type with neither is open to every human agent of the tenant.
CREATE TABLE support_type_agents (
    tenant_id    uuid NOT NULL,
    support_type text NOT NULL,
    agent_id     uuid NOT NULL,
    PRIMARY KEY (tenant_id, support_type, agent_id),
    FOREIGN KEY (tenant_id, support_type) REFERENCES support_types (tenant_id, key) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id)
);

CREATE TABLE support_type_teams (
    tenant_id    uuid NOT NULL,
    support_type text NOT NULL,
    team_id      uuid NOT NULL,
    PRIMARY KEY (tenant_id, support_type, team_id),
    FOREIGN KEY (tenant_id, support_type) REFERENCES support_types (tenant_id, key) ON DELETE CASCADE,
    FOREIGN KEY (tenant_id, team_id) REFERENCES teams (tenant_id, id) ON DELETE CASCADE
);

-- Visitors: attributes and tracking.
ALTER TABLE visitors
    ADD COLUMN attributes    jsonb NOT NULL DEFAULT '{}'::jsonb,
    ADD COLUMN first_seen_at timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN last_seen_at  timestamptz NOT NULL DEFAULT now(),
    ADD COLUMN current_page  text,
    ADD COLUMN user_agent    text;
CREATE INDEX visitors_attributes ON visitors USING gin (attributes);
CREATE INDEX visitors_last_seen ON visitors (tenant_id, last_seen_at DESC, id);

CREATE TABLE page_views (
    tenant_id  uuid NOT NULL,
    visitor_id uuid NOT NULL,
    id         uuid NOT NULL,
    url        text NOT NULL,
    title      text,
    referrer   text,
    at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, visitor_id, id),
    FOREIGN KEY (tenant_id, visitor_id) REFERENCES visitors (tenant_id, id)
);

-- Conversations: the queue, the lifecycle and its timestamps.
ALTER TABLE conversations
    ADD COLUMN priority              integer NOT NULL DEFAULT 0,
    -- When the conversation (last) entered the queue; the queue is priority, then FIFO.
    ADD COLUMN queued_at             timestamptz,
    ADD COLUMN tags                  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN resolution_reason     text,
    ADD COLUMN resolved_at           timestamptz,
    ADD COLUMN first_response_at     timestamptz,
    ADD COLUMN snoozed_until         timestamptz,
    ADD COLUMN previous_assignee_id  uuid,
    ADD COLUMN csat_score            integer CHECK (csat_score BETWEEN 1 AND 5),
    ADD COLUMN csat_comment          text,
    ADD COLUMN csat_at               timestamptz;
UPDATE conversations SET queued_at = created_at WHERE status = 'queued';
CREATE INDEX conversations_queue ON conversations (tenant_id, priority DESC, queued_at, id)
    WHERE status = 'queued';
CREATE INDEX conversations_tenant_updated ON conversations (tenant_id, updated_at DESC, id);

-- Agents taking part in a conversation: the assignee, supervisors who joined, and those
-- who left it (transferred away, or a bot that handed off: `left_reason`).
CREATE TABLE participants (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    agent_id        uuid NOT NULL,
    joined_at       timestamptz NOT NULL DEFAULT now(),
    left_at         timestamptz,
    left_reason     text,
    PRIMARY KEY (tenant_id, conversation_id, agent_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id),
    FOREIGN KEY (tenant_id, agent_id) REFERENCES agents (tenant_id, id)
);

-- Every routing decision, with the candidates considered and why each was skipped.
CREATE TABLE assignments (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    id              uuid NOT NULL,
    at              timestamptz NOT NULL DEFAULT now(),
    action          text NOT NULL,
    strategy        text,
    agent_id        uuid,
    actor_id        uuid,
    reason          text,
    candidates      jsonb NOT NULL DEFAULT '[]'::jsonb,
    PRIMARY KEY (tenant_id, conversation_id, id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);

-- Webhooks and their transactional outbox: an event row is written in the transaction
-- that made the change, and delivered (signed, retried with backoff) afterwards.
CREATE TABLE webhooks (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    id         uuid NOT NULL,
    url        text NOT NULL,
    events     text[] NOT NULL,
    secret     text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

CREATE TABLE webhook_deliveries (
    tenant_id       uuid NOT NULL,
    webhook_id      uuid NOT NULL,
    event_id        uuid NOT NULL,
    event           text NOT NULL,
    payload         jsonb NOT NULL,
    attempts        integer NOT NULL DEFAULT 0,
    next_attempt_at timestamptz NOT NULL DEFAULT now(),
    delivered_at    timestamptz,
    failed          boolean NOT NULL DEFAULT false,
    last_status     integer,
    last_error      text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, webhook_id, event_id),
    FOREIGN KEY (tenant_id, webhook_id) REFERENCES webhooks (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX webhook_deliveries_due ON webhook_deliveries (next_attempt_at)
    WHERE delivered_at IS NULL AND NOT failed;

CREATE TABLE blasts (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    id         uuid NOT NULL,
    body       jsonb NOT NULL,
    segment    jsonb NOT NULL,
    recipients integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['teams', 'team_members', 'support_type_agents', 'support_type_teams',
                             'page_views', 'participants', 'assignments', 'webhooks',
                             'webhook_deliveries', 'blasts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END
$$;

GRANT SELECT, INSERT, UPDATE, DELETE ON teams, team_members, support_type_agents, support_type_teams,
    page_views, participants, assignments, webhooks, webhook_deliveries, blasts TO relaydesk_app;

-- The webhook sender must find due deliveries of every tenant, which row-level security
-- hides from relaydesk_app. This function (running as the owning role, which a policy
-- lets see every delivery) returns only the ids of tenants with due deliveries; the
-- sender then reads each tenant's rows in a tenant-scoped transaction as usual.
CREATE POLICY owner_scan ON webhook_deliveries TO CURRENT_USER USING (true);

CREATE FUNCTION relaydesk_due_webhook_tenants(max_tenants integer)
    RETURNS TABLE (tenant_id uuid)
    LANGUAGE sql STABLE SECURITY DEFINER
    SET search_path = public, pg_temp
AS $$
    SELECT DISTINCT d.tenant_id
      FROM webhook_deliveries d
     WHERE d.delivered_at IS NULL AND NOT d.failed AND d.next_attempt_at <= now()
     LIMIT max_tenants
$$;
REVOKE ALL ON FUNCTION relaydesk_due_webhook_tenants(integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION relaydesk_due_webhook_tenants(integer) TO relaydesk_app;
