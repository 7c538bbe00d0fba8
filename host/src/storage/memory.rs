//! The `memory` backend: objects live in the process and are lost on restart (tests and
//! throwaway runs).
//!
//! Separate because each backend owns how its opendal operator is built; what is done with the
//! operator is shared ([`OpBackend`]).

use opendal::Operator;

use super::StorageError;
use super::operator::OpBackend;

/// Builds the `memory` backend.
pub(super) fn backend() -> Result<OpBackend, StorageError> {
    let op = Operator::new(opendal::services::Memory::default())
        .map_err(|e| StorageError::backend("open", "", e))?;
    Ok(OpBackend::local(op))
}
