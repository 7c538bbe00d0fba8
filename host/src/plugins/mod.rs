//! Plugins: opening libraries ([`library`]), the loaded set ([`registry`]) and the host's side
//! of the callbacks ([`services`]).

pub(crate) mod library;
pub(crate) mod registry;
pub(crate) mod services;

pub(crate) use library::Library;
pub(crate) use registry::{LoadFailure, Registry};
