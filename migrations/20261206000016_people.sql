-- Finding people by name (projections::people): each registered person's username and
-- display name, with trigram indexes for prefix and typo-tolerant search.
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE read_model.people (
    user_id       uuid        NOT NULL PRIMARY KEY,
    username      text        NOT NULL,
    display_name  text        NOT NULL,
    registered_at timestamptz NOT NULL
);
-- Not unique: after an erasure frees a username, the new holder's registration may be
-- consumed before the erasure (Kafka); `by_username` takes the newest.
CREATE INDEX people_by_username ON read_model.people (username);
CREATE INDEX people_username_trigrams ON read_model.people USING gin (username gin_trgm_ops);
CREATE INDEX people_display_name_trigrams ON read_model.people
    USING gin (lower(display_name) gin_trgm_ops);

GRANT SELECT, INSERT, UPDATE, DELETE ON read_model.people TO hybridlive_writer;
GRANT SELECT ON read_model.people TO hybridlive_reader;
