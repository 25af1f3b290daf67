-- Which keyspace (timeline) or database (content) of a production read model is live: a
-- replay rebuilds the model into `<base>_<n>` and swaps it in by moving this pointer
-- (projections::generation). No row: the configured name itself (generation 0).
CREATE TABLE read_model_generations (
    model       text        NOT NULL,
    base        text        NOT NULL,
    generation  integer     NOT NULL CHECK (generation >= 0),
    name        text        NOT NULL,
    swapped_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, base)
);

REVOKE ALL ON read_model_generations FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE ON read_model_generations TO hybridlive_writer;
GRANT SELECT ON read_model_generations TO hybridlive_reader;
