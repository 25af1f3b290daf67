//! [`MirrorSlot`]: what a store's set-wise batches would otherwise load back from its tables,
//! kept in memory by a replay into fresh tables (`PgContent::mirrored`,
//! `PgTimelines::mirrored`); [`Deferral`]: derived columns a replay's batches leave to a
//! settlement at the end (`PgContent::deferring_counts`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

/// Whether a store's derived columns are stale until settled; clones share it.
#[derive(Debug, Clone, Default)]
pub(crate) struct Deferral(Arc<AtomicBool>);

impl Deferral {
    /// From now on, until [`Deferral::settled`].
    pub(crate) fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    pub(crate) fn pending(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }

    /// The stored columns are right again (their settlement committed).
    pub(crate) fn settled(&self) {
        self.0.store(false, Ordering::Release);
    }
}

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

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::MirrorSlot;

    #[test]
    fn a_committed_batch_puts_the_mirror_back() {
        let slot = MirrorSlot::default();
        assert_eq!(slot.take(), None::<u32>, "not kept until asked");
        slot.keep(1);
        let mirror = slot.take().unwrap();
        slot.put_back(mirror + 1, 1, 10);
        assert_eq!(slot.take(), Some(2));
    }

    #[test]
    fn a_single_write_during_a_batch_drops_the_mirror_for_good() {
        let slot = MirrorSlot::default();
        slot.keep(1);
        let mirror = slot.take().unwrap();
        slot.forget();
        slot.put_back(mirror, 1, 10);
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn a_failed_batch_drops_the_mirror_for_good() {
        let slot = MirrorSlot::default();
        slot.keep(1);
        let _lost = slot.take().unwrap();
        // The batch failed: nothing put back. The next batch finds it still out.
        assert_eq!(slot.take(), None);
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn a_mirror_past_its_size_is_dropped() {
        let slot = MirrorSlot::default();
        slot.keep(1);
        let mirror = slot.take().unwrap();
        slot.put_back(mirror, 11, 10);
        assert_eq!(slot.take(), None);
    }

    #[test]
    fn clones_share_the_mirror() {
        let slot = MirrorSlot::default();
        let clone = slot.clone();
        slot.keep(1);
        clone.forget();
        assert_eq!(slot.take(), None);
    }
}
