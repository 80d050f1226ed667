-- Revocable credentials. An agent's tokens carry the agent's credential version when
-- minted; a role change, deactivation, password change or log-out-everywhere bumps it,
-- so every earlier token stops working. A deactivated agent cannot log in.
ALTER TABLE agents
    ADD COLUMN credential_version integer NOT NULL DEFAULT 0 CHECK (credential_version >= 0),
    ADD COLUMN deactivated_at timestamptz;

-- A short, non-secret part of each API key, shown when keys are listed.
ALTER TABLE api_keys ADD COLUMN prefix text NOT NULL DEFAULT '';

-- Sessions ended by a logout, until their tokens (and the connection tokens minted
-- with them) have expired; expired rows are swept by the next logout of the tenant.
CREATE TABLE revoked_sessions (
    tenant_id  uuid NOT NULL REFERENCES tenants (id),
    sid        uuid NOT NULL,
    expires_at timestamptz NOT NULL,
    PRIMARY KEY (tenant_id, sid)
);
CREATE INDEX revoked_sessions_expiry ON revoked_sessions (tenant_id, expires_at);

ALTER TABLE revoked_sessions ENABLE ROW LEVEL SECURITY;
ALTER TABLE revoked_sessions FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON revoked_sessions
    USING (tenant_id = NULLIF(current_setting('app.tenant_id', true), '')::uuid);
GRANT SELECT, INSERT, DELETE ON revoked_sessions TO relaydesk_app;
