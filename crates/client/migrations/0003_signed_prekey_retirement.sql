-- When each signed prekey stopped being the current one (Unix seconds; NULL while current).
-- A replaced key is kept for 30 days after its replacement (PROTOCOL.md §4.2), not after its
-- creation: a key created long ago may have been handed out until the moment it was replaced,
-- for example when its owner comes back after weeks away. Keys replaced before this column
-- existed count as replaced now, so each gets its full 30 days.
ALTER TABLE signed_prekeys ADD COLUMN retired_at INTEGER;
UPDATE signed_prekeys SET retired_at = CAST(strftime('%s', 'now') AS INTEGER) WHERE current = 0;
