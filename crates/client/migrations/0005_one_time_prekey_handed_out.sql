-- When this client first learnt that the relay had handed a one-time prekey out (Unix seconds;
-- NULL while the relay still holds it). Handed-out keys whose prekey message never came are
-- forgotten 30 days later (PROTOCOL.md §4.2), as replaced signed prekeys are.
ALTER TABLE one_time_prekeys ADD COLUMN handed_out_at INTEGER;
