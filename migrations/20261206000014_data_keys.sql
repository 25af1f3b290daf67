-- Crypto-shredding (DESIGN §8a): one data key per person, wrapped under the key-encryption
-- key named by `kek_id` (store::keys). The personal fields of events are sealed with it;
-- erasing the person deletes the key (`wrapped` and `kek_id` become NULL, `erased_at` set),
-- and the row stays as a tombstone so that no new key is ever made for them.
CREATE TABLE data_keys (
    subject    uuid        NOT NULL,
    wrapped    bytea,
    kek_id     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    erased_at  timestamptz,
    CONSTRAINT data_keys_pkey PRIMARY KEY (subject),
    CONSTRAINT data_keys_erased CHECK ((wrapped IS NULL) = (erased_at IS NOT NULL)
                                       AND (wrapped IS NULL) = (kek_id IS NULL))
);

REVOKE ALL ON data_keys FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON data_keys TO hybridlive_writer;
-- Projections open the events they apply.
GRANT SELECT ON data_keys TO hybridlive_reader;
