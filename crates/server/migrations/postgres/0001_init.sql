-- Sotto relay schema, PostgreSQL. The same tables as the SQLite schema, so one set of
-- statements serves both; times are Unix milliseconds, keys base64url text.

CREATE TABLE users (
    user_id            TEXT   PRIMARY KEY,
    identity_signing   TEXT   NOT NULL,
    identity_dh        TEXT   NOT NULL,
    identity_signature TEXT   NOT NULL,
    registered_at      BIGINT NOT NULL
);

CREATE TABLE signed_prekeys (
    user_id    TEXT   PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    key_id     BIGINT NOT NULL,
    public_key TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    signature  TEXT   NOT NULL
);

CREATE TABLE one_time_prekeys (
    user_id    TEXT   NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    key_id     BIGINT NOT NULL,
    public_key TEXT   NOT NULL,
    PRIMARY KEY (user_id, key_id)
);

-- The queue: a row per message not yet acknowledged; the acknowledgement deletes it.
CREATE TABLE messages (
    id          BIGSERIAL PRIMARY KEY,
    recipient   TEXT   NOT NULL,
    sender      TEXT   NOT NULL,
    client_id   TEXT   NOT NULL,
    envelope    TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    UNIQUE (sender, client_id)
);
CREATE INDEX messages_by_recipient ON messages (recipient, id);

CREATE TABLE contacts (
    user_a TEXT NOT NULL,
    user_b TEXT NOT NULL,
    PRIMARY KEY (user_a, user_b)
);
CREATE INDEX contacts_by_b ON contacts (user_b, user_a);
