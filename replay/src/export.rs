//! `hybridlive replay export`: the events matching the audit filters, as stored, one JSON
//! object per line, in the log's gap-free read order, page by page (constant memory).

use std::io::Write;

use sqlx::PgPool;
use store::audit::{AuditFilter, AuditLog, MAX_PAGE};
use store::AuditCursor;

use crate::ReplayError;

/// Writes every event after `after` that matches `filter` and is below the watermark read at
/// the start to `out`; returns how many and the cursor to continue from.
///
/// # Errors
/// When the log cannot be read or `out` cannot be written.
pub async fn export(
    pool: &PgPool,
    filter: &AuditFilter,
    mut after: AuditCursor,
    out: &mut impl Write,
) -> Result<(u64, AuditCursor), ReplayError> {
    let log = AuditLog::new(pool.clone());
    let watermark = log.watermark().await?;
    let mut exported = 0;
    loop {
        let page = log.list_below(filter, after, MAX_PAGE, watermark).await?;
        for event in &page.items {
            serde_json::to_writer(&mut *out, event).map_err(std::io::Error::from)?;
            out.write_all(b"\n")?;
        }
        exported += page.items.len() as u64;
        after = page.next_cursor;
        if !page.has_more {
            out.flush()?;
            return Ok((exported, after));
        }
    }
}
