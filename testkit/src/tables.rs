//! Read-model tables side by side: empty copies of a model's tables in a schema of their own
//! (what a replay builds into), and a row-for-row comparison of two copies.

use sqlx::PgPool;

/// Creates `schema` with an empty copy of each of `tables` of `from` (`LIKE … INCLUDING
/// ALL`), as a replay does.
///
/// # Panics
/// When a statement fails.
#[allow(clippy::expect_used)]
pub async fn copy_empty(pool: &PgPool, from: &str, schema: &str, tables: &[&str]) {
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(pool)
        .await
        .expect("creating the schema");
    for table in tables {
        sqlx::query(&format!(
            "CREATE TABLE {schema}.{table} (LIKE {from}.{table} INCLUDING ALL)"
        ))
        .execute(pool)
        .await
        .expect("copying a table");
    }
}

/// Asserts that each of `tables` holds the same rows in schemas `a` and `b` (`EXCEPT ALL`
/// both ways); returns the rows compared.
///
/// # Panics
/// When they differ or a query fails.
#[allow(clippy::expect_used)]
pub async fn assert_same(pool: &PgPool, tables: &[&str], a: &str, b: &str) -> i64 {
    let mut rows = 0;
    for table in tables {
        let (count_a, count_b, differing): (i64, i64, i64) = sqlx::query_as(&format!(
            "SELECT (SELECT count(*) FROM {a}.{table}), (SELECT count(*) FROM {b}.{table}), \
                    (SELECT count(*) FROM ((SELECT * FROM {a}.{table} EXCEPT ALL SELECT * FROM {b}.{table}) \
                               UNION ALL (SELECT * FROM {b}.{table} EXCEPT ALL SELECT * FROM {a}.{table})) d)"
        ))
        .fetch_one(pool)
        .await
        .expect("comparing the tables");
        assert_eq!(
            (count_a, differing),
            (count_b, 0),
            "{a}.{table} and {b}.{table} differ"
        );
        rows += count_a;
    }
    rows
}
