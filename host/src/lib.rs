//! aihost: AI engines behind one production REST API.
//!
//! See `ARCHITECTURE.md` at the repository root for the map of these modules. The library's
//! public surface is small on purpose: [`cli`] (what the binary runs) and [`storage`] (which
//! the storage integration tests drive against real S3 and GCS servers). Everything else is
//! crate-private, so the compiler reports what nothing uses.

#![warn(unreachable_pub)]

pub(crate) mod api;
pub mod cli;
pub(crate) mod client;
pub(crate) mod config;
pub(crate) mod dispatcher;
pub(crate) mod error_codes;
pub(crate) mod fetch;
#[cfg(test)]
mod layers;
pub(crate) mod manifest;
pub(crate) mod metrics;
pub(crate) mod names;
pub(crate) mod percent;
pub(crate) mod plugins;
pub(crate) mod previews;
pub(crate) mod retention;
pub(crate) mod service;
pub mod storage;
pub(crate) mod store;
pub(crate) mod task_view;
pub(crate) mod telemetry;
pub(crate) mod webhooks;
pub(crate) mod worker;
