-- Chat profiles of the messaging read model (projections::messaging), and the lite
-- presence history (projections::presence): each online/offline transition of a person.
CREATE TABLE read_model.chat_profiles (
    user_id      uuid NOT NULL PRIMARY KEY,
    username     text NOT NULL,
    display_name text NOT NULL
);

CREATE TABLE read_model.presence_history (
    user_id uuid        NOT NULL,
    at      timestamptz NOT NULL,
    online  boolean     NOT NULL,
    CONSTRAINT presence_history_pkey PRIMARY KEY (user_id, at, online)
);
-- Retention deletes by age across people.
CREATE INDEX presence_history_by_age ON read_model.presence_history (at);

GRANT SELECT, INSERT, UPDATE, DELETE
    ON read_model.chat_profiles, read_model.presence_history TO hybridlive_writer;
GRANT SELECT ON read_model.chat_profiles, read_model.presence_history TO hybridlive_reader;
