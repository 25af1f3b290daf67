-- Events a projection could not apply after its retries (DESIGN §5): the projection moved
-- on; `hybridlive dlq retry` (projections::DeadLetters::retry) applies them again once the
-- cause is fixed and deletes the rows that succeed.
CREATE TABLE dead_letters (
    projection       text        NOT NULL,
    event_id         uuid        NOT NULL,
    global_position  bigint      NOT NULL,
    error            text        NOT NULL,
    attempts         integer     NOT NULL CHECK (attempts >= 1),
    dead_lettered_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT dead_letters_pkey PRIMARY KEY (projection, event_id)
);
