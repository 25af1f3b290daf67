//! [`MirrorSlot`]: what a store's set-wise batches would otherwise load back from its tables,
//! kept in memory by a replay into fresh tables (`PgContent::mirrored`,
//! `PgTimelines::mirrored`).

use std::sync::{Arc, Mutex};

/// Where a store keeps its mirror `M`; clones share it.
#[derive(Debug)]
pub(crate) struct MirrorSlot<M>(Arc<Mutex<Mirroring<M>>>);

#[derive(Debug, Default)]
enum Mirroring<M> {
    /// Not kept, or no longer trusted: for good.
    #[default]
    Off,
    Kept(M),
    /// Taken out by a batch, which puts it back when it commits.
    InBatch,
}

impl<M> Clone for MirrorSlot<M> {
    fn clone(&self) -> Self {
        Self(Arc::clone(&self.0))
    }
}

impl<M> Default for MirrorSlot<M> {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Mirroring::Off)))
    }
}

impl<M> MirrorSlot<M> {
    /// Starts keeping `mirror`.
    pub(crate) fn keep(&self, mirror: M) {
        if let Ok(mut mirroring) = self.0.lock() {
            *mirroring = Mirroring::Kept(mirror);
        }
    }

    /// Drops the mirror for good: the tables are about to change behind it.
    pub(crate) fn forget(&self) {
        if let Ok(mut mirroring) = self.0.lock() {
            *mirroring = Mirroring::Off;
        }
    }

    /// Takes the mirror out for a batch. Still out, a batch before this one failed: it is
    /// dropped.
    pub(crate) fn take(&self) -> Option<M> {
        let mut mirroring = self.0.lock().ok()?;
        match std::mem::replace(&mut *mirroring, Mirroring::Off) {
            Mirroring::Kept(mirror) => {
                *mirroring = Mirroring::InBatch;
                Some(mirror)
            }
            Mirroring::Off | Mirroring::InBatch => None,
        }
    }

    /// Puts the mirror back after its batch committed, unless a single write dropped it
    /// meanwhile or it holds more than `max_entries` (`entries` of it).
    pub(crate) fn put_back(&self, mirror: M, entries: usize, max_entries: usize) {
        if entries > max_entries {
            tracing::info!(
                entries,
                "A replay's mirror passed its size; its batches load from the tables again."
            );
            self.forget();
            return;
        }
        if let Ok(mut mirroring) = self.0.lock() {
            if matches!(*mirroring, Mirroring::InBatch) {
                *mirroring = Mirroring::Kept(mirror);
            }
        }
    }
}
