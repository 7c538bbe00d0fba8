//! aihost: AI engines behind one production REST API.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of these modules.

pub mod config;
pub mod fetch;
pub mod manifest;
pub mod storage;
pub mod store;
