-- Replays of read models (the `replay` crate): one row per model, the run in progress or
-- the last one. A replay builds into `target_schema`, keeps its checkpoint as
-- `projection:replay:<model>`, and swaps the rebuilt tables in when done.
CREATE TABLE replays (
    model         text        NOT NULL PRIMARY KEY,
    target_schema text        NOT NULL,
    -- The range applied (inclusive; NULL = open).
    from_position bigint,
    to_position   bigint,
    started_at    timestamptz NOT NULL DEFAULT now(),
    -- It read its whole range.
    finished_at   timestamptz,
    swapped_at    timestamptz
);
