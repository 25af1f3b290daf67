-- The audit listing (store::audit) pages in the log's read order, (transaction_id,
-- global_position), instead of by position alone: positions are taken before commit, so a
-- cursor over positions could pass an event that commits later. The two filters that hold
-- many events each get their index in that order, replacing the position-ordered ones of
-- 20261123000005_audit.sql (nothing else reads those): with them a page is an index range
-- scan from the cursor, without them every page would scan all of the filter's events, or
-- all of the log, after the cursor. Same number of indexes; each key is 8 bytes wider.
-- Plain CREATE INDEX blocks appends while it builds; on a large live log run these by hand
-- first as CREATE INDEX CONCURRENTLY and DROP INDEX CONCURRENTLY (IF [NOT] EXISTS then skips
-- them here).
CREATE INDEX IF NOT EXISTS events_event_type_commit_order_idx
    ON events (event_type, transaction_id, global_position);
CREATE INDEX IF NOT EXISTS events_actor_commit_order_idx
    ON events ((metadata ->> 'actor'), transaction_id, global_position);
DROP INDEX IF EXISTS events_event_type_idx;
DROP INDEX IF EXISTS events_actor_idx;
