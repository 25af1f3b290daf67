-- Erasure (DESIGN §8a, `user.erased`): the content model remembers who was erased, so that
-- a post or comment of theirs consumed after the erasure (Kafka keeps no order across
-- topics) is not stored. Replay copies this table with the others of the content model.
CREATE TABLE read_model.erased_users (
    user_id uuid NOT NULL PRIMARY KEY
);

GRANT SELECT, INSERT, UPDATE, DELETE ON read_model.erased_users TO hybridlive_writer;
GRANT SELECT ON read_model.erased_users TO hybridlive_reader;
