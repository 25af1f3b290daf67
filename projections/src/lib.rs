//! The read side's runtime and read models (DESIGN §5–§6): projection sources (Kafka consumer
//! groups, or the PostgreSQL log through `store::LogReader` and `store::Checkpoints`),
//! retries, dead letters, and the timeline, content, counter and onboarding projections.
//!
//! Not written yet: it arrives with issues #4 (runtime) and #5 (read models). Layering: it
//! will see only `event-schemas` types, never `domain`.
