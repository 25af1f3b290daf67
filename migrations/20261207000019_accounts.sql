-- Two-factor login (api::routes::two_factor): each TOTP step and each recovery code of a
-- person is accepted once. A row per use, dropped with the credential it used (two-factor
-- login turned off, or the person erased).
CREATE TABLE credential_uses (
    stream_type text        NOT NULL,
    stream_id   text        NOT NULL,
    kind        text        NOT NULL,
    -- The TOTP step, or the recovery code's hash.
    used        text        NOT NULL,
    used_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credential_uses_pkey PRIMARY KEY (stream_type, stream_id, kind, used),
    CONSTRAINT credential_uses_credential FOREIGN KEY (stream_type, stream_id, kind)
        REFERENCES credentials (stream_type, stream_id, kind) ON DELETE CASCADE
);
REVOKE ALL ON credential_uses FROM PUBLIC;
GRANT SELECT, INSERT, DELETE ON credential_uses TO hybridlive_writer;

-- The emailer (projections::email): whom to write to, and what went out.
CREATE SCHEMA mail;

-- Each person's address and name, from their registration and profile. When the
-- registration is rolled back or the person erased, they are blanked and `gone` set: the
-- row stays as a tombstone, so that a late welcome is dropped rather than queued.
CREATE TABLE mail.recipients (
    user_id      uuid    NOT NULL PRIMARY KEY,
    email        text    NOT NULL,
    username     text    NOT NULL,
    display_name text    NOT NULL,
    gone         boolean NOT NULL DEFAULT false
);

-- One row per email sent: (kind, person, triggering event) goes out once, across restarts
-- and redeliveries. Written after the SMTP server accepted the message.
CREATE TABLE mail.sent (
    kind     text        NOT NULL,
    user_id  uuid        NOT NULL,
    event_id uuid        NOT NULL,
    sent_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT sent_pkey PRIMARY KEY (kind, user_id, event_id)
);
CREATE INDEX sent_by_user ON mail.sent (user_id);

-- Emails whose recipient is not known yet (on Kafka, `onboarding.completed` can be
-- consumed before the `user.registered` it follows): sent when the address arrives.
CREATE TABLE mail.waiting (
    kind      text        NOT NULL,
    user_id   uuid        NOT NULL,
    event_id  uuid        NOT NULL,
    queued_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT waiting_pkey PRIMARY KEY (kind, user_id, event_id)
);

GRANT USAGE ON SCHEMA mail TO hybridlive_writer;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA mail TO hybridlive_writer;
