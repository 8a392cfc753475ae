-- Sotto relay schema, SQLite. Only INTEGER, TEXT and BLOB columns; times are Unix milliseconds.
-- Keys are stored as the base64url text they travel as, so bundles are served without re-encoding.

CREATE TABLE users (
    user_id            TEXT    PRIMARY KEY,
    identity_signing   TEXT    NOT NULL,
    identity_dh        TEXT    NOT NULL,
    identity_signature TEXT    NOT NULL,
    registered_at      INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE signed_prekeys (
    user_id    TEXT    PRIMARY KEY REFERENCES users (user_id) ON DELETE CASCADE,
    key_id     INTEGER NOT NULL,
    public_key TEXT    NOT NULL,
    created_at INTEGER NOT NULL,
    signature  TEXT    NOT NULL
) WITHOUT ROWID;

CREATE TABLE one_time_prekeys (
    user_id    TEXT    NOT NULL REFERENCES users (user_id) ON DELETE CASCADE,
    key_id     INTEGER NOT NULL,
    public_key TEXT    NOT NULL,
    PRIMARY KEY (user_id, key_id)
) WITHOUT ROWID;

-- The queue. A row is a message its recipient has not acknowledged yet; the acknowledgement
-- deletes it. Nothing else is kept: no content and no trace once delivered.
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    recipient   TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    client_id   TEXT    NOT NULL,
    envelope    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (sender, client_id)
);
CREATE INDEX messages_by_recipient ON messages (recipient, id);

-- Pairs of users who have exchanged messages (user_a < user_b): presence goes only to them.
CREATE TABLE contacts (
    user_a TEXT NOT NULL,
    user_b TEXT NOT NULL,
    PRIMARY KEY (user_a, user_b)
) WITHOUT ROWID;
CREATE INDEX contacts_by_b ON contacts (user_b, user_a);
