//! The values every backend answers with: which object an operation is about, and what a
//! write produced.
//!
//! Separate from `backend.rs` so the backends (`operator.rs`, `cf_images.rs`) use these types
//! without importing the dispatch that imports them (no cycle).

/// One object as a backend sees it: its logical key (for errors and content types) and its
/// backend path (the configured prefix + the key).
#[derive(Debug, Clone, Copy)]
pub(super) struct ObjectRef<'a> {
    /// The logical key.
    pub(super) key: &'a str,
    /// The backend path.
    pub(super) path: &'a str,
}

/// What a backend reports of an object it just wrote.
#[derive(Debug)]
pub(super) struct Written {
    /// Bytes stored.
    pub(super) size: u64,
    /// The object's URL when the write answered with one (`cf_images`); `None`: ask
    /// `Backend::url`.
    pub(super) url: Option<String>,
}
