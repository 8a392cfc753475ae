-- What each arriving message checks of our records (PROTOCOL.md §7.3) found its rows by
-- scanning the whole conversation, and each login scanned every message for those waiting
-- for a delivery report: with 20,000 messages with one peer, 2.5 to 3.6 ms per query. These find
-- them by counter and by status (microseconds), whatever the length of the history.
CREATE INDEX messages_ours_by_counter ON messages (peer, counter) WHERE outgoing = 1;
CREATE INDEX messages_ours_by_status ON messages (status, peer, counter) WHERE outgoing = 1;
