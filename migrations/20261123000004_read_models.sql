-- Lite read models (DESIGN §6): the social graph and home timelines, and post content,
-- comments, likes and profiles, in the `read_model` schema. Production uses ScyllaDB and
-- MongoDB for these (created by `hybridlive migrate` when SCYLLA_NODES / MONGODB_URI are
-- set); replay builds a fresh copy in another schema with the same tables.
CREATE SCHEMA read_model;

-- Social graph: one row per (follower, followee).
CREATE TABLE read_model.follows (
    follower_id uuid NOT NULL,
    followee_id uuid NOT NULL,
    CONSTRAINT follows_pkey PRIMARY KEY (follower_id, followee_id)
);
CREATE INDEX follows_by_followee ON read_model.follows (followee_id, follower_id);

-- Home timelines, newest first by the position of post.published.
CREATE TABLE read_model.timelines (
    user_id   uuid   NOT NULL,
    position  bigint NOT NULL,
    post_id   uuid   NOT NULL,
    author_id uuid   NOT NULL,
    CONSTRAINT timelines_pkey PRIMARY KEY (user_id, position)
);
CREATE INDEX timelines_by_post ON read_model.timelines (post_id);

-- Entries per timeline, so trimming touches only the timelines that outgrew the cap.
CREATE TABLE read_model.timeline_lengths (
    user_id uuid    NOT NULL PRIMARY KEY,
    entries integer NOT NULL
);

-- Every author's own posts (merged into feeds at read time for authors in merged_authors).
CREATE TABLE read_model.author_posts (
    author_id uuid   NOT NULL,
    position  bigint NOT NULL,
    post_id   uuid   NOT NULL,
    CONSTRAINT author_posts_pkey PRIMARY KEY (author_id, position),
    CONSTRAINT author_posts_post_key UNIQUE (post_id)
);

-- Authors whose posts are merged at read time (hybrid fan-out); sticky.
CREATE TABLE read_model.merged_authors (
    author_id uuid NOT NULL PRIMARY KEY
);

CREATE TABLE read_model.profiles (
    user_id       uuid        NOT NULL PRIMARY KEY,
    username      text        NOT NULL,
    display_name  text        NOT NULL,
    registered_at timestamptz NOT NULL
);

-- Posts: the document as jsonb (title, body_markdown, body_html, preview, media,
-- created_at); counts and the tombstone as columns so they change in place.
CREATE TABLE read_model.posts (
    post_id       uuid    NOT NULL PRIMARY KEY,
    author_id     uuid    NOT NULL,
    position      bigint  NOT NULL,
    doc           jsonb   NOT NULL,
    like_count    bigint  NOT NULL DEFAULT 0,
    comment_count bigint  NOT NULL DEFAULT 0,
    deleted       boolean NOT NULL DEFAULT false
);

CREATE TABLE read_model.comments (
    comment_id uuid   NOT NULL PRIMARY KEY,
    post_id    uuid   NOT NULL,
    position   bigint NOT NULL,
    doc        jsonb  NOT NULL
);
CREATE INDEX comments_by_post ON read_model.comments (post_id, position DESC);

CREATE TABLE read_model.likes (
    post_id uuid NOT NULL,
    user_id uuid NOT NULL,
    CONSTRAINT likes_pkey PRIMARY KEY (post_id, user_id)
);

GRANT USAGE ON SCHEMA read_model TO hybridlive_writer, hybridlive_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA read_model TO hybridlive_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA read_model TO hybridlive_reader;
