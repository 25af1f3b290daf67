//! What the lite (PostgreSQL) stores share: the schema of the live lite read models, the
//! check of a schema name spliced into SQL, the pair helpers of the set-wise batches
//! (follows, likes), and the [`SoleWriter`] hook a replay drives their batches with. A leaf:
//! the lite stores and the queries use it, it uses none of them.

use std::collections::HashMap;
use std::fmt::Debug;

use uuid::Uuid;

use crate::error::{ReadModelError, ReadResult};

/// The PostgreSQL schema of the live lite read models (migration 4).
pub const LITE_SCHEMA: &str = "read_model";

/// The one writer of a lite store's tables — a replay into fresh tables, which no other
/// process writes — handing each set-wise batch what the tables hold (`K`: the store's
/// `KnownTimelines` or `KnownContent`), so that the batch need not load it back, and
/// saying whether the batches leave derived columns to a settlement. Implemented by the
/// `replay` crate; a live store has none and its batches load from the tables.
///
/// A batch takes `K` out ([`SoleWriter::lend`]) and gives it back with what it stored once
/// it committed ([`SoleWriter::give_back`]); a batch that fails does not give it back. A
/// single write changes the tables behind it ([`SoleWriter::forget`]).
pub trait SoleWriter<K>: Debug + Send + Sync {
    /// What the tables hold, lent to one batch; `None`: the batch loads from the tables.
    fn lend(&self) -> Option<K>;

    /// Back from a batch that committed, with what it stored taken in.
    fn give_back(&self, known: K);

    /// The tables changed behind what was lent (a single write): dropped for good.
    fn forget(&self);

    /// Whether the batches leave derived columns to a settlement (content: the posts'
    /// counts, to `PgContent::settle_counts`), for tables nobody reads until then.
    fn defers_derived(&self) -> bool {
        false
    }
}

/// Checks that `schema` is a plain identifier, since it is spliced into SQL.
pub fn checked_schema(schema: &str) -> ReadResult<String> {
    let plain = !schema.is_empty()
        && schema.len() <= 63
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if plain {
        Ok(schema.to_owned())
    } else {
        Err(ReadModelError::Rejected(format!(
            "`{schema}` is not a plain schema name"
        )))
    }
}

/// `(stored, now)` of each of `pairs` — `(true, true)` where stored, else `(false, false)`:
/// `select` reads the stored pairs whose first member is in `$1` (a primary key's prefix),
/// of which those in `pairs` are kept. For the set-wise batches (follows, likes).
pub async fn stored_pairs(
    tx: &mut sqlx::PgConnection,
    select: &str,
    pairs: &[(Uuid, Uuid)],
) -> ReadResult<HashMap<(Uuid, Uuid), (bool, bool)>> {
    let mut found: HashMap<(Uuid, Uuid), (bool, bool)> =
        pairs.iter().map(|pair| (*pair, (false, false))).collect();
    if pairs.is_empty() {
        return Ok(found);
    }
    let mut firsts: Vec<Uuid> = pairs.iter().map(|(first, _)| *first).collect();
    firsts.sort_unstable();
    firsts.dedup();
    let rows: Vec<(Uuid, Uuid)> = sqlx::query_as(select)
        .bind(&firsts)
        .fetch_all(&mut *tx)
        .await?;
    for pair in rows {
        if let Some(state) = found.get_mut(&pair) {
            *state = (true, true);
        }
    }
    Ok(found)
}

/// Pairs as two column arrays (bound to `unnest($1::uuid[], $2::uuid[])`).
pub type PairColumns = (Vec<Uuid>, Vec<Uuid>);

/// The pairs of [`stored_pairs`] whose state the batch changed: (to insert, to delete).
pub fn changed_pairs(pairs: HashMap<(Uuid, Uuid), (bool, bool)>) -> (PairColumns, PairColumns) {
    let (mut added, mut removed) = ((Vec::new(), Vec::new()), (Vec::new(), Vec::new()));
    for ((first, second), (stored, now)) in pairs {
        let list = match (stored, now) {
            (false, true) => &mut added,
            (true, false) => &mut removed,
            _ => continue,
        };
        list.0.push(first);
        list.1.push(second);
    }
    (added, removed)
}
