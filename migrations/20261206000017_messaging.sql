-- The lite messaging read model (projections::messaging): conversations, each member's
-- place in their inbox and how far they read, and the messages.
CREATE TABLE read_model.conversations (
    conversation_id uuid        NOT NULL PRIMARY KEY,
    started_by      uuid        NOT NULL,
    members         uuid[]      NOT NULL,
    title           text        NOT NULL,
    started_at      timestamptz NOT NULL
);

CREATE TABLE read_model.conversation_members (
    user_id         uuid   NOT NULL,
    conversation_id uuid   NOT NULL,
    -- The position of the conversation's newest event: the inbox's order.
    last_activity   bigint NOT NULL,
    -- The position of the newest message this member marked read.
    read_position   bigint NOT NULL DEFAULT 0,
    CONSTRAINT conversation_members_pkey PRIMARY KEY (user_id, conversation_id)
);
CREATE INDEX conversation_members_by_activity
    ON read_model.conversation_members (user_id, last_activity DESC);

CREATE TABLE read_model.messages (
    conversation_id uuid        NOT NULL,
    position        bigint      NOT NULL,
    message_id      uuid        NOT NULL UNIQUE,
    sender_id       uuid        NOT NULL,
    body            text        NOT NULL,
    body_html       text        NOT NULL,
    sent_at         timestamptz NOT NULL,
    CONSTRAINT messages_pkey PRIMARY KEY (conversation_id, position)
);
CREATE INDEX messages_by_sender ON read_model.messages (sender_id);

GRANT SELECT, INSERT, UPDATE, DELETE
    ON read_model.conversations, read_model.conversation_members, read_model.messages
    TO hybridlive_writer;
GRANT SELECT
    ON read_model.conversations, read_model.conversation_members, read_model.messages
    TO hybridlive_reader;
