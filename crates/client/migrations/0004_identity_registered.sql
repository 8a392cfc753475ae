-- Whether the relay has confirmed the identity's registration. The identity is saved before
-- it is registered (a key the relay hands out must exist here, and an answer lost on the way
-- must not lose the id); `sotto register` finishes an unconfirmed one. Identities saved
-- before this column existed were saved only once registered.
ALTER TABLE identity ADD COLUMN registered INTEGER NOT NULL DEFAULT 1;
