-- In-app notifications (projections::notifications): who followed you, who liked and who
-- commented on your posts, grouped per post and kind.
--
-- Writes commute, whatever order the topics arrive in: an act (a like, a comment, a
-- follow) is stored under its target — the post, or the person followed — whether or not
-- the post is known yet; a post's author is stored when the post arrives, and the reader
-- joins the two. A like before its post is counted once the post is there.

-- Posts whose acts notify their author; `deleted` keeps a tombstone, so a like consumed
-- after the deletion notifies nobody.
CREATE TABLE read_model.notification_posts (
    post_id uuid    NOT NULL PRIMARY KEY,
    author  uuid    NOT NULL,
    deleted boolean NOT NULL DEFAULT false
);
CREATE INDEX notification_posts_by_author ON read_model.notification_posts (author)
    WHERE NOT deleted;

-- One row per (kind, target, actor): `like` and `comment` on post `target`, `follow` of
-- person `target`. A second comment of the same person moves the row to its position.
CREATE TABLE read_model.notification_acts (
    kind     text        NOT NULL,
    target   uuid        NOT NULL,
    actor    uuid        NOT NULL,
    position bigint      NOT NULL,
    at       timestamptz NOT NULL,
    CONSTRAINT notification_acts_pkey PRIMARY KEY (target, kind, actor)
);
CREATE INDEX notification_acts_by_actor ON read_model.notification_acts (actor);

-- Up to which log position each person has read their notifications (`user.notifications_read`).
CREATE TABLE read_model.notification_reads (
    user_id uuid   NOT NULL PRIMARY KEY,
    up_to   bigint NOT NULL
);

GRANT SELECT, INSERT, UPDATE, DELETE ON read_model.notification_posts, read_model.notification_acts,
    read_model.notification_reads TO hybridlive_writer;
GRANT SELECT ON read_model.notification_posts, read_model.notification_acts,
    read_model.notification_reads TO hybridlive_reader;
