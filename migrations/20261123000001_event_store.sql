-- The event store (DESIGN §3): the immutable log, stream heads, unique claims, snapshots
-- and reader checkpoints.

-- One row per stream. Every append's FIRST write is the upsert of this row: it takes the
-- stream's lock before any other write, so the writing transactions of one stream get
-- increasing transaction ids and a stream's events are in version order in the
-- (transaction_id, global_position) order readers use.
CREATE TABLE streams (
    stream_type text   NOT NULL CHECK (stream_type ~ '^[a-z][a-z0-9_]{0,62}$'),
    stream_id   text   NOT NULL CHECK (length(stream_id) BETWEEN 1 AND 200),
    version     bigint NOT NULL CHECK (version >= 1),
    CONSTRAINT streams_pkey PRIMARY KEY (stream_type, stream_id)
);

CREATE TABLE events (
    global_position bigint      GENERATED ALWAYS AS IDENTITY,
    event_id        uuid        NOT NULL,
    stream_type     text        NOT NULL,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version >= 1),
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL CHECK (schema_version >= 1),
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- The writing transaction; readers order by (transaction_id, global_position).
    transaction_id  xid8        NOT NULL DEFAULT pg_current_xact_id(),
    -- sha256(previous event's hash in this stream || canonical form of this event).
    hash            bytea       NOT NULL,
    CONSTRAINT events_pkey PRIMARY KEY (global_position),
    CONSTRAINT events_event_id_key UNIQUE (event_id),
    CONSTRAINT events_stream_version_key UNIQUE (stream_type, stream_id, stream_version)
);

CREATE INDEX events_commit_order_idx ON events (transaction_id, global_position);

-- The canonical form that is hashed: a JSON array of every stored field but the hash and
-- the transaction id, with the timestamp rendered in UTC so the session time zone cannot
-- change it. One function, used by the insert trigger and the verifier alike.
CREATE FUNCTION event_hash(prev bytea, e events) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
        e.global_position, e.event_id, e.stream_type, e.stream_id, e.stream_version,
        e.event_type, e.schema_version, e.payload, e.metadata,
        to_char(e.recorded_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::text, 'UTF8'))
$$;

-- Fills the fields a writer must not choose (time, transaction, hash) and refuses a gap in
-- a stream's versions.
CREATE FUNCTION events_before_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    prev bytea;
BEGIN
    NEW.recorded_at := now();
    NEW.transaction_id := pg_current_xact_id();
    IF NEW.stream_version > 1 THEN
        SELECT p.hash INTO prev FROM events p
         WHERE p.stream_type = NEW.stream_type
           AND p.stream_id = NEW.stream_id
           AND p.stream_version = NEW.stream_version - 1;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'event % of stream %/% has no predecessor',
                NEW.stream_version, NEW.stream_type, NEW.stream_id
                USING ERRCODE = 'integrity_constraint_violation';
        END IF;
    END IF;
    NEW.hash := event_hash(prev, NEW);
    RETURN NEW;
END
$$;

CREATE TRIGGER events_before_insert BEFORE INSERT ON events
    FOR EACH ROW EXECUTE FUNCTION events_before_insert();

-- The log is append-only in the database itself, whoever connects.
CREATE FUNCTION events_reject_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'the events table is append-only: % is not allowed', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER events_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON events
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

-- Values (usernames, emails) at most one stream holds; written in the append's statement.
CREATE TABLE unique_claims (
    scope       text        NOT NULL,
    value       text        NOT NULL,
    stream_type text        NOT NULL,
    stream_id   text        NOT NULL,
    claimed_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT unique_claims_pkey PRIMARY KEY (scope, value)
);

CREATE INDEX unique_claims_owner_idx ON unique_claims (stream_type, stream_id);

-- Latest snapshot per stream: an optimisation only, always safe to delete.
CREATE TABLE snapshots (
    stream_type text        NOT NULL,
    stream_id   text        NOT NULL,
    version     bigint      NOT NULL,
    state       jsonb       NOT NULL,
    taken_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT snapshots_pkey PRIMARY KEY (stream_type, stream_id)
);

-- Where each catch-up reader (relay, projections, replays) has got to in the log.
CREATE TABLE checkpoints (
    name            text        NOT NULL,
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT checkpoints_pkey PRIMARY KEY (name)
);

-- Verification: recompute every hash in a range of the log and check that no stream lost
-- an event (a missing predecessor, or a stream head beyond its last stored event).
CREATE FUNCTION verify_events(from_position bigint, to_position bigint)
RETURNS TABLE (ok boolean, checked bigint, first_bad_position bigint, reason text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    e events;
    prev bytea;
    n bigint := 0;
    bad bigint;
BEGIN
    FOR e IN SELECT * FROM events
              WHERE global_position BETWEEN from_position AND to_position
              ORDER BY global_position
    LOOP
        n := n + 1;
        prev := NULL;
        IF e.stream_version > 1 THEN
            SELECT p.hash INTO prev FROM events p
             WHERE p.stream_type = e.stream_type
               AND p.stream_id = e.stream_id
               AND p.stream_version = e.stream_version - 1;
            IF NOT FOUND THEN
                RETURN QUERY SELECT false, n, e.global_position, 'the previous event of its stream is missing';
                RETURN;
            END IF;
        END IF;
        IF e.hash IS DISTINCT FROM event_hash(prev, e) THEN
            RETURN QUERY SELECT false, n, e.global_position, 'hash mismatch: the event was altered';
            RETURN;
        END IF;
    END LOOP;

    -- A stream whose head is beyond its last event lost its tail.
    SELECT min(last.global_position) INTO bad
      FROM (SELECT DISTINCT stream_type, stream_id FROM events
             WHERE global_position BETWEEN from_position AND to_position) touched
      JOIN streams s USING (stream_type, stream_id)
      CROSS JOIN LATERAL (
            SELECT l.global_position, l.stream_version FROM events l
             WHERE l.stream_type = s.stream_type AND l.stream_id = s.stream_id
             ORDER BY l.stream_version DESC LIMIT 1) last
     WHERE last.stream_version <> s.version;
    IF bad IS NOT NULL THEN
        RETURN QUERY SELECT false, n, bad, 'events after this one of its stream are missing';
        RETURN;
    END IF;

    RETURN QUERY SELECT true, n, NULL::bigint, NULL::text;
END
$$;

-- Roles: the services write as hybridlive_writer (append and read only), auditors and
-- analysts read as hybridlive_reader. Roles are cluster-wide, hence the guard.
DO $$
BEGIN
    CREATE ROLE hybridlive_writer NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
DO $$
BEGIN
    CREATE ROLE hybridlive_reader NOLOGIN;
EXCEPTION WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;

REVOKE ALL ON events, streams, unique_claims, snapshots, checkpoints FROM PUBLIC;
GRANT SELECT, INSERT ON events TO hybridlive_writer;
GRANT SELECT, INSERT, UPDATE ON streams TO hybridlive_writer;
GRANT SELECT, INSERT, DELETE ON unique_claims TO hybridlive_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON snapshots, checkpoints TO hybridlive_writer;
GRANT SELECT ON events, streams TO hybridlive_reader;
