-- Read-your-writes on the Kafka source (DESIGN §5): what a projection fed by Kafka needs to
-- keep its `projection:<name>` checkpoint as "every event up to here is applied"
-- (projections::kafka::watermark has the argument).

-- Per relay and topic-partition, the last message the relay published there, as of the
-- relay's checkpoint: written in the same transaction as the checkpoint, after Kafka
-- acknowledged the whole batch. Every event up to the checkpoint that went to this
-- partition has a copy at an offset <= `offset`.
CREATE TABLE kafka_partition_heads (
    relay           text        NOT NULL,
    topic           text        NOT NULL,
    "partition"     integer     NOT NULL CHECK ("partition" >= 0),
    "offset"        bigint      NOT NULL CHECK ("offset" >= 0),
    -- The read-order key of the event at `offset` (for operators; the watermark needs
    -- only the offset).
    transaction_id  xid8        NOT NULL,
    global_position bigint      NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (relay, topic, "partition")
);

-- Per consumer group (= projection) and topic-partition, the highest offset some instance
-- of the group applied (or dead-lettered) with every offset before it applied too. Only
-- ever moves forward (a redelivery never moves it back).
CREATE TABLE kafka_consumer_progress (
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    "partition"     integer     NOT NULL CHECK ("partition" >= 0),
    "offset"        bigint      NOT NULL CHECK ("offset" >= 0),
    updated_at      timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, "partition")
);

REVOKE ALL ON kafka_partition_heads, kafka_consumer_progress FROM PUBLIC;
GRANT SELECT, INSERT, UPDATE, DELETE ON kafka_partition_heads, kafka_consumer_progress
    TO hybridlive_writer;
