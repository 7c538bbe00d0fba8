//! Plugins: opening libraries ([`library`]: from a private copy, `private_copy.rs`, after the
//! ELF check of `elf.rs`), the loaded set ([`registry`]) and the host's side of the callbacks
//! ([`services`]).

pub(crate) mod availability;
mod elf;
pub(crate) mod library;
mod private_copy;
pub(crate) mod registry;
pub(crate) mod services;

pub(crate) use library::Library;
pub(crate) use registry::{LoadFailure, Registry};
