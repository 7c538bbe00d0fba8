//! conformance suite (being written)
