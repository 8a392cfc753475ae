-- What lets the client check the peer's word about our records (PROTOCOL.md §7.3): the digest
-- of each record we sealed, and when the relay said it was delivered (our clock).
ALTER TABLE messages ADD COLUMN digest BLOB;
ALTER TABLE messages ADD COLUMN delivered_at INTEGER;
