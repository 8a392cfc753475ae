-- Message ids are handed out by the relay from blocks it reserves here, instead of by
-- AUTOINCREMENT, which read and rewrote sqlite_sequence for every message inserted (a B-tree
-- update per message, and one more log page per commit). Every id below `reserved_end` may
-- have been handed out; ids are never handed out twice, so a client can drop a message whose
-- id it already has.
CREATE TABLE message_ids (
    only_row     INTEGER PRIMARY KEY CHECK (only_row = 1),
    reserved_end INTEGER NOT NULL
);
INSERT INTO message_ids (only_row, reserved_end)
    SELECT 1, max(
        coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0),
        coalesce((SELECT max(id) FROM messages), 0)
    ) + 1;

-- The same table without AUTOINCREMENT (SQLite cannot drop it in place).
CREATE TABLE messages_by_id (
    id          INTEGER PRIMARY KEY,
    recipient   TEXT    NOT NULL,
    sender      TEXT    NOT NULL,
    client_id   TEXT    NOT NULL,
    envelope    TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    UNIQUE (sender, client_id)
);
INSERT INTO messages_by_id (id, recipient, sender, client_id, envelope, created_at)
    SELECT id, recipient, sender, client_id, envelope, created_at FROM messages;
DROP TABLE messages;
ALTER TABLE messages_by_id RENAME TO messages;
CREATE INDEX messages_by_recipient ON messages (recipient, id);
