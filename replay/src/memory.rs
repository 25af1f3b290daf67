//! [`Memory`]: what a replay, the one writer of its fresh target tables, keeps of them between
//! set-wise batches (the lite stores' [`SoleWriter`] hook), so that a batch need not load
//! back what the batches before it stored; and whether the batches leave the posts' counts
//! to the settlement at the end ([`Memory::deferring`], [`Memory::settled`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use projections::content::postgres::KnownContent;
use projections::lite::SoleWriter;
use projections::timeline::postgres::KnownTimelines;

/// Entries past which what is kept is dropped and the batches load from the tables again.
/// Estimated from the entry sizes, not measured: 17–41 bytes a slot of a std hash map,
/// 1.1–2.3 slots an entry, so 150–400 MB at the limit (a 1M-event log needs about 0.6M
/// entries a model).
pub const MAX_ENTRIES: usize = 4_000_000;

/// What a store's set-wise batches would load, kept in memory by its one writer; it
/// implements [`SoleWriter`] for the lite stores' `K` ([`KnownTimelines`], [`KnownContent`]).
#[derive(Debug)]
pub struct Memory<K> {
    kept: Mutex<Held<K>>,
    /// Whether the batches leave the derived columns to a settlement.
    deferring: AtomicBool,
    max_entries: usize,
}

#[derive(Debug)]
enum Held<K> {
    /// Not kept, or no longer trusted: for good.
    Off,
    Kept(K),
    /// Lent to a batch, which gives it back when it commits.
    Lent,
}

/// What is kept, measured against [`Memory`]'s size.
pub trait Entries {
    fn entries(&self) -> usize;
}

impl Entries for KnownTimelines {
    fn entries(&self) -> usize {
        KnownTimelines::entries(self)
    }
}

impl Entries for KnownContent {
    fn entries(&self) -> usize {
        KnownContent::entries(self)
    }
}

impl<K: Default> Memory<K> {
    /// For tables that are empty now: starts from nothing stored.
    pub fn fresh() -> Self {
        Self::holding(Held::Kept(K::default()))
    }

    /// For tables that hold rows it did not see (a resumed replay): keeps nothing, and the
    /// batches load from the tables.
    pub fn loading() -> Self {
        Self::holding(Held::Off)
    }

    fn holding(kept: Held<K>) -> Self {
        Self {
            kept: Mutex::new(kept),
            deferring: AtomicBool::new(false),
            max_entries: MAX_ENTRIES,
        }
    }
}

impl<K> Memory<K> {
    /// At most `max_entries` kept.
    #[must_use]
    pub fn bounded(self, max_entries: usize) -> Self {
        Self {
            max_entries,
            ..self
        }
    }

    /// The batches leave the derived columns to a settlement, until [`Memory::settled`].
    #[must_use]
    pub fn deferring(self) -> Self {
        self.deferring.store(true, Ordering::Release);
        self
    }

    /// Whether the derived columns wait for a settlement.
    pub fn deferred(&self) -> bool {
        self.deferring.load(Ordering::Acquire)
    }

    /// The derived columns are right again (their settlement committed): later batches
    /// keep them right themselves.
    pub fn settled(&self) {
        self.deferring.store(false, Ordering::Release);
    }
}

impl<K: Entries + Send + std::fmt::Debug> SoleWriter<K> for Memory<K> {
    fn lend(&self) -> Option<K> {
        let mut kept = self.kept.lock().ok()?;
        // Still lent: a batch before this one failed, and what it held is gone.
        match std::mem::replace(&mut *kept, Held::Off) {
            Held::Kept(known) => {
                *kept = Held::Lent;
                Some(known)
            }
            Held::Off | Held::Lent => None,
        }
    }

    fn give_back(&self, known: K) {
        let entries = known.entries();
        if entries > self.max_entries {
            tracing::info!(
                entries,
                "A replay's memory passed its size; its batches load from the tables again."
            );
            self.forget();
            return;
        }
        if let Ok(mut kept) = self.kept.lock() {
            // Unless a single write dropped it meanwhile.
            if matches!(*kept, Held::Lent) {
                *kept = Held::Kept(known);
            }
        }
    }

    fn forget(&self) {
        if let Ok(mut kept) = self.kept.lock() {
            *kept = Held::Off;
        }
    }

    fn defers_derived(&self) -> bool {
        self.deferred()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::{Entries, Memory};
    use projections::lite::SoleWriter;

    /// A stand-in for what a store keeps: `n` entries.
    #[derive(Debug, Default, PartialEq)]
    struct Known(usize);

    impl Entries for Known {
        fn entries(&self) -> usize {
            self.0
        }
    }

    #[test]
    fn a_committed_batch_gives_it_back() {
        let memory = Memory::<Known>::fresh();
        let known = memory.lend().unwrap();
        memory.give_back(Known(known.0 + 1));
        assert_eq!(memory.lend(), Some(Known(1)));
    }

    #[test]
    fn tables_it_did_not_see_are_loaded() {
        let memory = Memory::<Known>::loading();
        assert_eq!(memory.lend(), None);
    }

    #[test]
    fn a_single_write_during_a_batch_drops_it_for_good() {
        let memory = Memory::<Known>::fresh();
        let known = memory.lend().unwrap();
        memory.forget();
        memory.give_back(known);
        assert_eq!(memory.lend(), None);
    }

    #[test]
    fn a_failed_batch_drops_it_for_good() {
        let memory = Memory::<Known>::fresh();
        let _lost = memory.lend().unwrap();
        // The batch failed: nothing given back. The next batch finds it still lent.
        assert_eq!(memory.lend(), None);
        assert_eq!(memory.lend(), None);
    }

    #[test]
    fn past_its_size_it_is_dropped() {
        let memory = Memory::<Known>::fresh().bounded(10);
        let _known = memory.lend().unwrap();
        memory.give_back(Known(11));
        assert_eq!(memory.lend(), None);
    }

    #[test]
    fn the_deferral_ends_when_settled() {
        let memory = Memory::<Known>::loading().deferring();
        assert!(memory.defers_derived());
        memory.settled();
        assert!(!memory.defers_derived());
    }
}
