-- The counters above a gap in the peer's records are capped (MAX_RECEIVED_ABOVE): a record
-- that never arrives would otherwise make every later one grow `received_above` for good.
-- Past the cap, the oldest gaps are given up on and counted here, still reported missing.
ALTER TABLE conversations ADD COLUMN missing_for_good INTEGER NOT NULL DEFAULT 0;
