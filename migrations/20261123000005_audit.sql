-- The audit queries of API.md (`GET /v1/audit/events?…`, store::audit): indexes for the
-- filters the existing ones do not serve. Every index is paid for on every append, so only
-- these four:
-- - (stream_type, stream_id) is served by events_stream_version_key already;
-- - event types and actors hold many events each and are paged by position, hence the
--   position as second key;
-- - a correlation id names one request, a handful of events: no second key needed;
-- - recorded_at grows with the log, so a BRIN index (a few pages for millions of rows,
--   nearly free to maintain) narrows a time range to the right blocks.
-- Plain CREATE INDEX blocks appends while it builds; on a large live log create them
-- CONCURRENTLY by hand first (IF NOT EXISTS then skips them here).
CREATE INDEX IF NOT EXISTS events_event_type_idx ON events (event_type, global_position);
CREATE INDEX IF NOT EXISTS events_correlation_id_idx ON events ((metadata ->> 'correlation_id'));
CREATE INDEX IF NOT EXISTS events_actor_idx ON events ((metadata ->> 'actor'), global_position);
CREATE INDEX IF NOT EXISTS events_recorded_at_idx ON events USING brin (recorded_at);
