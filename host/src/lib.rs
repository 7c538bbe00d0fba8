//! aihost: AI engines behind one production REST API.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of these modules.

pub mod api;
pub mod config;
pub mod dispatcher;
pub mod fetch;
pub mod manifest;
pub mod names;
pub(crate) mod percent;
pub mod plugins;
pub mod service;
pub mod storage;
pub mod store;
pub mod task_view;
