-- The analytics read model (issue #7, projections::analytics): daily signups, posts and
-- likes per day, top posts. Built only by replay (`hybridlive replay analytics`), which
-- copies each table into a fresh schema with `CREATE TABLE t.x (LIKE analytics.x INCLUDING
-- ALL)`, applies the log there and moves the tables into this schema with `ALTER TABLE …
-- SET SCHEMA`. Hence: no sequences, no foreign keys between tables, and every table listed
-- in projections::analytics::TABLES.
--
-- The tables hold facts keyed by the ids of what they record; every write is a merge
-- (insert-or-keep, LEAST, GREATEST, last stream version wins), so an event applied twice,
-- or late, changes nothing. Figures are aggregated at query time. Days are UTC days of
-- the events' recorded_at.
CREATE SCHEMA analytics;

-- One row per user. day: of user.registered (NULL while only the rollback is known);
-- rolled_back: user.registration_rolled_back was applied (the signup does not count).
CREATE TABLE analytics.signups (
    user_id     uuid    NOT NULL PRIMARY KEY,
    day         date,
    rolled_back boolean NOT NULL DEFAULT false
);
CREATE INDEX signups_by_day ON analytics.signups (day);

-- One row per post. day: of post.published; title NULL while only the deletion is known;
-- deleted_day: of post.deleted (NULL: the post is live).
CREATE TABLE analytics.posts (
    post_id     uuid NOT NULL PRIMARY KEY,
    author_id   uuid NOT NULL,
    title       text,
    day         date,
    deleted_day date
);
CREATE INDEX posts_by_day ON analytics.posts (day);
CREATE INDEX posts_by_deleted_day ON analytics.posts (deleted_day) WHERE deleted_day IS NOT NULL;

-- Every post.liked (liked) and post.unliked (NOT liked), one row per event.
CREATE TABLE analytics.like_events (
    event_id uuid    NOT NULL PRIMARY KEY,
    post_id  uuid    NOT NULL,
    user_id  uuid    NOT NULL,
    liked    boolean NOT NULL,
    day      date    NOT NULL
);
CREATE INDEX like_events_by_day ON analytics.like_events (day);

-- Whether each user likes each post now: the event with the highest version of the like
-- stream (`<post_id>:<user_id>`) applied so far wins.
CREATE TABLE analytics.likes (
    post_id uuid    NOT NULL,
    user_id uuid    NOT NULL,
    liked   boolean NOT NULL,
    version bigint  NOT NULL,
    PRIMARY KEY (post_id, user_id)
);

-- How far the model is built: the highest global position and the newest recorded_at
-- among the events applied (one row; none before the first event).
CREATE TABLE analytics.built (
    singleton       boolean     NOT NULL DEFAULT true PRIMARY KEY CHECK (singleton),
    global_position bigint      NOT NULL,
    recorded_at     timestamptz NOT NULL
);

-- Tables moved in by a replay do not inherit these grants: the replay runs them again
-- after the swap (projections::analytics::GRANTS holds the same statements).
GRANT USAGE ON SCHEMA analytics TO hybridlive_writer, hybridlive_reader;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA analytics TO hybridlive_writer;
GRANT SELECT ON ALL TABLES IN SCHEMA analytics TO hybridlive_reader;
