-- Presence is shared one way: a user's presence goes to the users they have written to, never
-- to someone who merely wrote to them (anyone can write to anyone, so that would let a stranger
-- watch when a user comes and goes). A row is (sender, recipient) of at least one message.
CREATE TABLE contacts_directed (
    sender TEXT NOT NULL,
    recipient TEXT NOT NULL,
    PRIMARY KEY (sender, recipient)
) WITHOUT ROWID;
CREATE INDEX contacts_by_recipient ON contacts_directed (recipient, sender);

-- The old table did not say who wrote first: keep each pair in both directions, which is what
-- its users were already shown.
INSERT INTO contacts_directed (sender, recipient)
    SELECT user_a, user_b FROM contacts
    UNION SELECT user_b, user_a FROM contacts;
DROP TABLE contacts;
ALTER TABLE contacts_directed RENAME TO contacts;
