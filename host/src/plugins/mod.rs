//! Plugins: opening libraries ([`library`]), the loaded set ([`registry`]) and the host's side
//! of the callbacks ([`services`]).

pub mod library;
pub mod registry;
pub mod services;

pub use library::{Library, LoadError, PluginDesc, TaskTypeDesc};
pub use registry::{LoadFailure, Registry, ReloadReport, TaskTypeEntry};
