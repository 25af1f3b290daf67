-- Timeline rows are found by their post's position (a position is one post's: that of its
-- post.published), no longer by post id. Positions grow with the log, so the index takes
-- new rows at its right edge; the index on post_id took each at a random page, which was
-- half the cost of a fan-out's insert. A removal finds its post's position in
-- author_posts.
--
-- For every `timelines` table of the model: the live one, and a replay's target or a
-- retired copy. After a replay's swap the live table's indexes carry the names that
-- `LIKE … INCLUDING ALL` gave them, so the one on post_id is looked up, not named.
-- Idempotent: it leaves a table that already has an index on position as it is.
DO $$
DECLARE
    tables regclass;
    post_index regclass;
BEGIN
    FOR tables IN
        SELECT c.oid::regclass FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE c.relname = 'timelines' AND c.relkind = 'r'
           AND (n.nspname = 'read_model' OR n.nspname LIKE 'replay\_%' OR n.nspname LIKE 'retired\_%')
    LOOP
        FOR post_index IN
            SELECT i.indexrelid::regclass FROM pg_index i
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             WHERE i.indrelid = tables AND i.indnatts = 1 AND a.attname = 'post_id'
        LOOP
            EXECUTE format('DROP INDEX %s', post_index);
        END LOOP;
        IF NOT EXISTS (
            SELECT 1 FROM pg_index i
              JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
             WHERE i.indrelid = tables AND i.indnatts = 1 AND a.attname = 'position'
        ) THEN
            EXECUTE format('CREATE INDEX ON %s (position)', tables);
        END IF;
    END LOOP;
END
$$;
