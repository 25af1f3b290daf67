//! Replay for analysts (DESIGN §1, issue #7): rebuilds a read model into a fresh target from
//! the PostgreSQL log (never Kafka), resumably, and exports the log.
//!
//! Not written yet: it arrives with issue #7.
