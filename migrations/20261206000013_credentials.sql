-- Secrets never go into events (DESIGN §8a): the log is immutable and published, so a
-- secret in it could never be taken back. They live here instead, one row per stream and
-- kind (`password`), written by the append whose event records the change, in its
-- transaction (store::credentials). Readers of the log cannot read this table.
CREATE TABLE credentials (
    stream_type text        NOT NULL,
    stream_id   text        NOT NULL,
    kind        text        NOT NULL,
    secret      text        NOT NULL,
    set_at      timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credentials_pkey PRIMARY KEY (stream_type, stream_id, kind)
);

REVOKE ALL ON credentials FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON credentials TO hybridlive_writer;

-- `user.registered` v1 and v2 carried the password hash. Those rows keep it (the log is
-- immutable; every way out of the write side redacts it: event_schemas::redact); login
-- reads the copy made here.
INSERT INTO credentials (stream_type, stream_id, kind, secret, set_at)
SELECT stream_type, stream_id, 'password', payload ->> 'password_hash', recorded_at
  FROM events
 WHERE event_type = 'user.registered' AND schema_version IN (1, 2)
   AND payload ->> 'password_hash' IS NOT NULL
ON CONFLICT (stream_type, stream_id, kind) DO NOTHING;

-- The user aggregate's snapshots held it too; the aggregate no longer does.
UPDATE snapshots SET state = state - 'password_hash'
 WHERE stream_type = 'user' AND state ? 'password_hash';
