//! The `fs` backend: objects are files under a local folder (`storage.root`), written to a
//! temporary folder first and renamed into place, so a reader never sees half an object.
//!
//! Separate because each backend owns how its opendal operator is built; what is done with the
//! operator is shared ([`OpBackend`]).

use std::path::Path;

use opendal::Operator;

use super::StorageError;
use super::key::FS_TMP_DIR;
use super::operator::OpBackend;

/// Builds the `fs` backend over `root`, creating the folder when it is missing.
pub(super) fn backend(root: &Path) -> Result<OpBackend, StorageError> {
    let abs = std::path::absolute(root).map_err(|e| StorageError::local("open", "", root, e))?;
    std::fs::create_dir_all(&abs).map_err(|e| StorageError::local("open", "", &abs, e))?;
    let tmp = abs.join(FS_TMP_DIR);
    let builder = opendal::services::Fs::default()
        .root(&abs.to_string_lossy())
        .atomic_write_dir(&tmp.to_string_lossy());
    let op = Operator::new(builder).map_err(|e| StorageError::backend("open", "", e))?;
    Ok(OpBackend::fs(op, abs))
}
