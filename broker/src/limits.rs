//! Bounds of the broker, each with the reason for its value. Settings a user may change (Kafka's
//! names) start from the defaults in `config.rs`; the constants here are fixed.
//!
//! What a client can make the broker hold, and what bounds it, is summarised in
//! `docs/design.md` ("Memory model").

// ---------------------------------------------------------------------------------------------
// Connections and request bytes

// ---------------------------------------------------------------------------------------------
// Shard mesh

// ---------------------------------------------------------------------------------------------
// Consumer groups
