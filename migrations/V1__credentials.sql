-- portcullis credential store (SPEC §10), version 1: what the credentials file holds
-- (roles, users, clients and API keys), pending approval requests and last-use times.
-- Every change to roles, users or credentials bumps portcullis_meta.generation and sends
-- NOTIFY portcullis (payload: '<table>:<name>'), so every replica hears it.

CREATE TABLE portcullis_meta (
    id         BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (id),
    generation BIGINT NOT NULL DEFAULT 0
);
INSERT INTO portcullis_meta (id, generation) VALUES (TRUE, 0);

CREATE TABLE portcullis_roles (
    name        TEXT PRIMARY KEY,
    permissions TEXT[] NOT NULL DEFAULT '{}'
);

CREATE TABLE portcullis_users (
    name        TEXT PRIMARY KEY,
    roles       TEXT[] NOT NULL DEFAULT '{}',
    permissions TEXT[] NOT NULL DEFAULT '{}',
    position    BIGSERIAL
);

CREATE TABLE portcullis_credentials (
    name        TEXT PRIMARY KEY,
    kind        TEXT NOT NULL CHECK (kind IN ('client', 'api_key')),
    -- secret_hash of a client, key_hash of an API key: never a secret
    hash        TEXT NOT NULL,
    -- [{"hash": …, "until": …}]: hashes replaced by a rotation with overlap
    previous    JSONB NOT NULL DEFAULT '[]',
    user_name   TEXT,
    roles       TEXT[] NOT NULL DEFAULT '{}',
    permissions TEXT[] NOT NULL DEFAULT '{}',
    -- NULL: every address
    allowed_ips TEXT[],
    expires     TEXT NOT NULL,
    disabled    BOOLEAN NOT NULL DEFAULT FALSE,
    description TEXT,
    notes       TEXT,
    created_at  TEXT,
    created_by  TEXT,
    -- the row version: a write names the version it read (409 when it changed)
    version     BIGINT NOT NULL DEFAULT 1,
    position    BIGSERIAL
);
CREATE UNIQUE INDEX portcullis_credentials_hash ON portcullis_credentials (hash) WHERE kind = 'api_key';

CREATE TABLE portcullis_requests (
    id      TEXT PRIMARY KEY,
    body    JSONB NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE portcullis_last_used (
    name TEXT PRIMARY KEY,
    at   TIMESTAMPTZ NOT NULL
);

-- One NOTIFY per changed row (a replica applies just that row) and one generation step
-- per statement; neither in a bulk load (`SET LOCAL portcullis.bulk = 'on'`: the importer
-- bumps the generation and sends one 'all:' itself).
CREATE FUNCTION portcullis_row_changed() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    n TEXT;
BEGIN
    IF coalesce(current_setting('portcullis.bulk', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'DELETE' THEN n := OLD.name; ELSE n := NEW.name; END IF;
    PERFORM pg_notify('portcullis', TG_TABLE_NAME || ':' || n);
    RETURN NULL;
END
$$;

CREATE FUNCTION portcullis_statement_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF coalesce(current_setting('portcullis.bulk', true), '') = 'on' THEN
        RETURN NULL;
    END IF;
    UPDATE portcullis_meta SET generation = generation + 1;
    RETURN NULL;
END
$$;

CREATE TRIGGER portcullis_roles_row AFTER INSERT OR UPDATE OR DELETE ON portcullis_roles
    FOR EACH ROW EXECUTE FUNCTION portcullis_row_changed();
CREATE TRIGGER portcullis_users_row AFTER INSERT OR UPDATE OR DELETE ON portcullis_users
    FOR EACH ROW EXECUTE FUNCTION portcullis_row_changed();
CREATE TRIGGER portcullis_credentials_row AFTER INSERT OR UPDATE OR DELETE ON portcullis_credentials
    FOR EACH ROW EXECUTE FUNCTION portcullis_row_changed();
CREATE TRIGGER portcullis_roles_statement AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON portcullis_roles
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_statement_changed();
CREATE TRIGGER portcullis_users_statement AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON portcullis_users
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_statement_changed();
CREATE TRIGGER portcullis_credentials_statement AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON portcullis_credentials
    FOR EACH STATEMENT EXECUTE FUNCTION portcullis_statement_changed();
