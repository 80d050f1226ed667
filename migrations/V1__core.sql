-- Relaydesk core schema.
--
-- Every table's primary key leads with tenant_id, so a distributed PostgreSQL can shard
-- by tenant. Every tenant table has row-level security keyed on the per-transaction
-- setting app.tenant_id, FORCEd so that even the owner is filtered; services connect as
-- relaydesk_app, which owns nothing.

DO $$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'relaydesk_app') THEN
        CREATE ROLE relaydesk_app LOGIN;
    END IF;
END
$$;

CREATE TABLE tenants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    site_key        text NOT NULL UNIQUE,
    identity_secret text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE api_keys (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    id         uuid NOT NULL,
    key_hash   bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, key_hash)
);

CREATE TABLE agents (
    tenant_id      uuid NOT NULL REFERENCES tenants (id),
    id             uuid NOT NULL,
    name           text NOT NULL,
    email          text NOT NULL,
    password_hash  text NOT NULL,
    role           text NOT NULL CHECK (role IN ('agent', 'supervisor', 'admin')),
    kind           text NOT NULL CHECK (kind IN ('human', 'bot')),
    max_concurrent integer NOT NULL DEFAULT 5 CHECK (max_concurrent >= 0),
    status         text NOT NULL DEFAULT 'offline' CHECK (status IN ('online', 'away', 'offline')),
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    UNIQUE (tenant_id, email)
);

CREATE TABLE visitors (
    tenant_id   uuid NOT NULL REFERENCES tenants (id),
    id          uuid NOT NULL,
    external_id text,
    name        text,
    email       text,
    verified    boolean NOT NULL DEFAULT false,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id)
);
CREATE UNIQUE INDEX visitors_external ON visitors (tenant_id, external_id) WHERE external_id IS NOT NULL;

CREATE TABLE support_types (
    tenant_id          uuid NOT NULL REFERENCES tenants (id),
    key                text NOT NULL,
    name               text NOT NULL,
    routing            text NOT NULL DEFAULT 'capacity' CHECK (routing IN ('round_robin', 'capacity')),
    resolution_reasons text[] NOT NULL DEFAULT ARRAY['solved'],
    created_at         timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, key)
);

CREATE TABLE conversations (
    tenant_id    uuid NOT NULL REFERENCES tenants (id),
    id           uuid NOT NULL,
    visitor_id   uuid NOT NULL,
    support_type text NOT NULL,
    subject      text,
    status       text NOT NULL CHECK (status IN ('queued', 'assigned', 'resolved', 'snoozed')),
    assignee_id  uuid,
    -- The seq of the newest message: seqs are allocated under this row's lock, so they
    -- are gapless and strictly increasing per conversation.
    last_seq     bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, id),
    FOREIGN KEY (tenant_id, visitor_id) REFERENCES visitors (tenant_id, id),
    FOREIGN KEY (tenant_id, support_type) REFERENCES support_types (tenant_id, key),
    FOREIGN KEY (tenant_id, assignee_id) REFERENCES agents (tenant_id, id)
);
CREATE INDEX conversations_visitor ON conversations (tenant_id, visitor_id);
CREATE INDEX conversations_assignee ON conversations (tenant_id, assignee_id) WHERE status = 'assigned';

CREATE TABLE messages (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    seq             bigint NOT NULL,
    id              uuid NOT NULL,
    sender_id       uuid NOT NULL,
    sender_role     text NOT NULL,
    sender_name     text,
    client_msg_id   text NOT NULL,
    kind            text NOT NULL,
    body            jsonb NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, conversation_id, seq),
    -- At-least-once delivery from clients becomes exactly-once storage here.
    UNIQUE (tenant_id, conversation_id, sender_id, client_msg_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);

-- Per-participant delivered and read positions (wire `ack` and `read`).
CREATE TABLE receipts (
    tenant_id       uuid NOT NULL,
    conversation_id uuid NOT NULL,
    principal_id    uuid NOT NULL,
    delivered_seq   bigint NOT NULL DEFAULT 0,
    read_seq        bigint NOT NULL DEFAULT 0,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, conversation_id, principal_id),
    FOREIGN KEY (tenant_id, conversation_id) REFERENCES conversations (tenant_id, id)
);

-- Row-level security: the second wall behind the application's own tenant checks.
ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['api_keys', 'agents', 'visitors', 'support_types', 'conversations', 'messages', 'receipts']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = NULLIF(current_setting(''app.tenant_id'', true), '''')::uuid)',
            t);
    END LOOP;
END
$$;

GRANT USAGE ON SCHEMA public TO relaydesk_app;
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants, api_keys, agents, visitors, support_types, conversations, messages, receipts TO relaydesk_app;

-- /readyz checks the applied version.
GRANT SELECT ON refinery_schema_history TO relaydesk_app;
