-- Sotto client store. One file holds one local identity. Private keys and session state are
-- here, so the file is created 0600 in a 0700 folder (SQLite gives its WAL and SHM files the
-- database file's permissions). Times are Unix milliseconds unless named otherwise.

CREATE TABLE identity (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    user_id        TEXT    NOT NULL,
    server         TEXT    NOT NULL,
    signing_secret BLOB    NOT NULL,
    dh_secret      BLOB    NOT NULL,
    created_at     INTEGER NOT NULL,
    -- Prekey ids are never reused, even after the keys are used up and deleted.
    next_prekey_id INTEGER NOT NULL DEFAULT 1
);

-- created_at is Unix seconds: it is signed as part of the prekey (PROTOCOL.md §4.1).
CREATE TABLE signed_prekeys (
    key_id     INTEGER PRIMARY KEY,
    secret     BLOB    NOT NULL,
    created_at INTEGER NOT NULL,
    current    INTEGER NOT NULL
);

CREATE TABLE one_time_prekeys (
    key_id INTEGER PRIMARY KEY,
    secret BLOB    NOT NULL
);

CREATE TABLE sessions (
    peer   TEXT PRIMARY KEY,
    record BLOB NOT NULL
);

-- A contact's accepted identity, and a different one seen since (pending_*) that the user has
-- not accepted yet: while pending, sending is blocked.
CREATE TABLE contacts (
    peer              TEXT    PRIMARY KEY,
    signing           TEXT    NOT NULL,
    dh                TEXT    NOT NULL,
    signature         TEXT    NOT NULL,
    verified          INTEGER NOT NULL DEFAULT 0,
    pending_signing   TEXT,
    pending_dh        TEXT,
    pending_signature TEXT,
    changed_at        INTEGER,
    added_at          INTEGER NOT NULL
);

-- Per-conversation counters (PROTOCOL.md §7.3): what we sent, what we received (contiguous
-- prefix plus counters seen above it), the digest of the last record received, and how far the
-- peer says it has received ours.
CREATE TABLE conversations (
    peer                TEXT    PRIMARY KEY,
    sent_counter        INTEGER NOT NULL DEFAULT 0,
    received_contiguous INTEGER NOT NULL DEFAULT 0,
    received_above      TEXT    NOT NULL DEFAULT '',
    last_counter        INTEGER NOT NULL DEFAULT 0,
    last_digest         BLOB,
    peer_received       INTEGER NOT NULL DEFAULT 0,
    unread              INTEGER NOT NULL DEFAULT 0,
    updated_at          INTEGER NOT NULL DEFAULT 0
);

-- History. status: sending, stored, delivered (outgoing); received, undecryptable (incoming).
CREATE TABLE messages (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    peer        TEXT    NOT NULL,
    outgoing    INTEGER NOT NULL,
    body        TEXT,
    counter     INTEGER,
    sent_at     INTEGER NOT NULL,
    received_at INTEGER,
    client_id   TEXT,
    server_id   INTEGER,
    status      TEXT    NOT NULL,
    -- Whether the user has been shown this message (recv printed it, or the chat displayed it).
    seen        INTEGER NOT NULL DEFAULT 0
);
CREATE UNIQUE INDEX messages_incoming ON messages (peer, server_id) WHERE outgoing = 0;
CREATE INDEX messages_by_peer ON messages (peer, id);
CREATE INDEX messages_outgoing ON messages (server_id) WHERE outgoing = 1;

-- Messages not yet stored by the relay. envelope is set once encrypted (with the session
-- state, in one transaction), so a resend after a crash sends the very same envelope.
CREATE TABLE outbox (
    client_id  TEXT    PRIMARY KEY,
    peer       TEXT    NOT NULL,
    message_id INTEGER NOT NULL,
    envelope   TEXT,
    created_at INTEGER NOT NULL
);
