-- Which process saved a received message and is about to show it (its process id). `recv`
-- shows at start what an earlier run saved but never printed; without this it also printed
-- what a process running beside it had just saved and was printing itself, so two receivers
-- on one store showed a message twice. NULL for rows saved before this column existed.
ALTER TABLE messages ADD COLUMN saved_by INTEGER;
