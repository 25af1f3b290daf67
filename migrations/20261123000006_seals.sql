-- Seals (DESIGN §3): periodic global checkpoints over the per-stream hash chains.
--
-- The per-stream chain cannot notice the loss of a stream's LAST events when whoever
-- deleted them also lowered `streams.version`. A seal records, for a window of positions
-- (after_position, up_to_position], the head (last event) of every stream written in the
-- window, and chains the seals: hash = sha256(previous seal's hash || the seal's fields,
-- including the digest of its heads). Verification recomputes each window's heads from
-- `events` and compares them with the sealed ones (seal_verify), so a deleted or altered
-- sealed head is named by its position. Rewriting the seals too needs the whole seal chain
-- recomputed; the sealer logs every seal's hash, so a copy of it lives outside the database.
--
-- A seal only covers positions no running transaction can still take (store::seal waits
-- for that), so a late commit never changes a sealed window.

CREATE TABLE seals (
    seal_id        bigint      NOT NULL CHECK (seal_id >= 1),
    after_position bigint      NOT NULL CHECK (after_position >= 0),
    up_to_position bigint      NOT NULL,
    -- How many stream heads the seal holds (rows of seal_heads).
    streams        bigint      NOT NULL CHECK (streams >= 0),
    -- sha256 over the seal's heads in (stream_type, stream_id) order (seal_heads_digest).
    heads_digest   bytea       NOT NULL,
    hash           bytea       NOT NULL,
    created_at     timestamptz NOT NULL,
    CONSTRAINT seals_pkey PRIMARY KEY (seal_id),
    CONSTRAINT seals_window_check CHECK (up_to_position > after_position)
);

CREATE INDEX seals_up_to_position_idx ON seals (up_to_position);

-- The last event, as of its seal's up_to_position, of every stream written in the window.
CREATE TABLE seal_heads (
    seal_id         bigint NOT NULL,
    stream_type     text   NOT NULL,
    stream_id       text   NOT NULL,
    stream_version  bigint NOT NULL,
    global_position bigint NOT NULL,
    hash            bytea  NOT NULL,
    CONSTRAINT seal_heads_pkey PRIMARY KEY (seal_id, stream_type, stream_id),
    CONSTRAINT seal_heads_seal_id_fkey FOREIGN KEY (seal_id) REFERENCES seals (seal_id)
        DEFERRABLE INITIALLY DEFERRED
);

-- Seals are as append-only as events.
CREATE TRIGGER seals_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON seals
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();
CREATE TRIGGER seal_heads_append_only BEFORE UPDATE OR DELETE OR TRUNCATE ON seal_heads
    FOR EACH STATEMENT EXECUTE FUNCTION events_reject_change();

-- The heads of the streams written in (after_position, up_to_position], recomputed from the
-- log. A stream's versions grow with positions (its appends are serialised), so its
-- highest version in the window is its head at up_to_position.
CREATE FUNCTION window_heads(after_position bigint, up_to_position bigint)
RETURNS TABLE (stream_type text, stream_id text, stream_version bigint, global_position bigint, hash bytea)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT ON (e.stream_type, e.stream_id)
           e.stream_type, e.stream_id, e.stream_version, e.global_position, e.hash
      FROM events e
     WHERE e.global_position > after_position AND e.global_position <= up_to_position
     ORDER BY e.stream_type, e.stream_id, e.stream_version DESC
$$;

-- The digest of one seal's stored heads.
CREATE FUNCTION seal_heads_digest(seal bigint) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(coalesce(string_agg(convert_to(jsonb_build_array(
               h.stream_type, h.stream_id, h.stream_version, h.global_position, encode(h.hash, 'hex')
           )::text, 'UTF8'), '\x0a'::bytea ORDER BY h.stream_type, h.stream_id), ''::bytea))
      FROM seal_heads h
     WHERE h.seal_id = seal
$$;

-- A seal's hash, chained to its predecessor's.
CREATE FUNCTION seal_hash(prev bytea, s seals) RETURNS bytea
LANGUAGE sql STABLE AS $$
    SELECT sha256(coalesce(prev, ''::bytea) || convert_to(jsonb_build_array(
        s.seal_id, s.after_position, s.up_to_position, s.streams, encode(s.heads_digest, 'hex'),
        to_char(s.created_at AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"')
    )::text, 'UTF8'))
$$;

-- Seals the log up to `up_to` (the caller guarantees no running transaction can still take
-- a position at or below it). One sealer at a time: the advisory lock serialises replicas.
-- Returns the new seal, or nothing when the last seal already reaches `up_to`.
CREATE FUNCTION seal_log(up_to bigint) RETURNS SETOF seals
LANGUAGE plpgsql AS $$
DECLARE
    last seals;
    s seals;
    heads bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('hybridlive seal', 0));
    SELECT * INTO last FROM seals ORDER BY seal_id DESC LIMIT 1;
    IF coalesce(last.up_to_position, 0) >= up_to THEN
        RETURN;
    END IF;
    s.seal_id := coalesce(last.seal_id, 0) + 1;
    s.after_position := coalesce(last.up_to_position, 0);
    s.up_to_position := up_to;
    s.created_at := now();
    INSERT INTO seal_heads (seal_id, stream_type, stream_id, stream_version, global_position, hash)
    SELECT s.seal_id, h.stream_type, h.stream_id, h.stream_version, h.global_position, h.hash
      FROM window_heads(s.after_position, up_to) h;
    GET DIAGNOSTICS heads = ROW_COUNT;
    s.streams := heads;
    s.heads_digest := seal_heads_digest(s.seal_id);
    s.hash := seal_hash(last.hash, s);
    INSERT INTO seals (seal_id, after_position, up_to_position, streams, heads_digest, hash, created_at)
    VALUES (s.seal_id, s.after_position, s.up_to_position, s.streams, s.heads_digest, s.hash, s.created_at);
    RETURN NEXT s;
END
$$;

-- Verifies the seals whose window ends in [from_position, to_position]: each is chained to
-- its predecessor, its stored heads match its digest, and the heads recomputed from the log
-- match the stored ones. `first_bad_position` is the position of the first sealed head that
-- is missing or altered (or of an event that appeared in a sealed window); a broken seal
-- itself is named by the first position of its window.
CREATE FUNCTION verify_seals(from_position bigint, to_position bigint)
RETURNS TABLE (ok boolean, checked bigint, first_bad_position bigint, reason text)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    s seals;
    prev seals;
    n bigint := 0;
    bad bigint;
    bad_stream text;
BEGIN
    FOR s IN SELECT * FROM seals
              WHERE up_to_position BETWEEN from_position AND to_position
              ORDER BY seal_id
    LOOP
        n := n + 1;
        prev := NULL;
        IF s.seal_id > 1 THEN
            SELECT * INTO prev FROM seals WHERE seal_id = s.seal_id - 1;
            IF NOT FOUND THEN
                RETURN QUERY SELECT false, n, s.after_position + 1, format('seal %s is missing', s.seal_id - 1);
                RETURN;
            END IF;
        END IF;
        IF s.after_position <> coalesce(prev.up_to_position, 0) THEN
            RETURN QUERY SELECT false, n, s.after_position + 1, format('seal %s does not start where seal %s ends', s.seal_id, s.seal_id - 1);
            RETURN;
        END IF;
        IF s.hash IS DISTINCT FROM seal_hash(prev.hash, s) THEN
            RETURN QUERY SELECT false, n, s.after_position + 1, format('seal %s was altered (hash mismatch)', s.seal_id);
            RETURN;
        END IF;
        IF s.heads_digest IS DISTINCT FROM seal_heads_digest(s.seal_id)
           OR s.streams <> (SELECT count(*) FROM seal_heads h WHERE h.seal_id = s.seal_id) THEN
            RETURN QUERY SELECT false, n, s.after_position + 1, format('the stream heads of seal %s were altered', s.seal_id);
            RETURN;
        END IF;
        SELECT coalesce(h.global_position, r.global_position),
               coalesce(h.stream_type, r.stream_type) || '/' || coalesce(h.stream_id, r.stream_id)
          INTO bad, bad_stream
          FROM (SELECT * FROM seal_heads WHERE seal_id = s.seal_id) h
          FULL JOIN window_heads(s.after_position, s.up_to_position) r
            ON r.stream_type = h.stream_type AND r.stream_id = h.stream_id
         WHERE h.stream_version IS DISTINCT FROM r.stream_version
            OR h.global_position IS DISTINCT FROM r.global_position
            OR h.hash IS DISTINCT FROM r.hash
         ORDER BY 1
         LIMIT 1;
        IF bad IS NOT NULL THEN
            RETURN QUERY SELECT false, n, bad, format('the head of stream %s sealed by seal %s is missing or altered', bad_stream, s.seal_id);
            RETURN;
        END IF;
    END LOOP;
    RETURN QUERY SELECT true, n, NULL::bigint, NULL::text;
END
$$;

REVOKE ALL ON seals, seal_heads FROM PUBLIC;
GRANT SELECT, INSERT ON seals, seal_heads TO hybridlive_writer;
GRANT SELECT ON seals, seal_heads TO hybridlive_reader;
-- The sealer reads the position sequence's last value.
DO $$
BEGIN
    EXECUTE format('GRANT SELECT ON SEQUENCE %s TO hybridlive_writer, hybridlive_reader',
                   pg_get_serial_sequence('events', 'global_position'));
END
$$;
