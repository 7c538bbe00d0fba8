//! Worker identities on SQLite: a consumer's identity is held with an advisory lock on a file
//! next to the database (`{db}-workers/{hex of the identity}.lock`), which the kernel releases
//! when the process dies however it dies; and the leases of an identity's earlier runs are ended
//! at once when it starts again. Separate because it is the one part of the store that touches
//! files other than the database.

use std::{fs::File, io::ErrorKind, path::PathBuf};

use super::{SqliteStore, group_commit::WriteQuery, schema::now_ms};
use crate::store::{StoreError, StoreResult};

/// Ends the leases of the PROCESSING tasks of an identity's earlier runs (worker ids
/// `{identity}#...` other than this run's); the next rescue puts them back in the queue.
const SQL_EXPIRE_PREVIOUS: &str = "UPDATE tasks SET lease_until = ?1 \
     WHERE status = 'PROCESSING' AND substr(worker, 1, ?2) = ?3 AND worker <> ?4";

impl SqliteStore {
    /// The lock file of `identity`.
    fn lock_path(&self, identity: &str) -> PathBuf {
        let mut dir = self.path.clone().into_os_string();
        dir.push("-workers");
        let name: String = identity.bytes().map(|b| format!("{b:02x}")).collect();
        PathBuf::from(dir).join(format!("{name}.lock"))
    }
}

/// [`TaskStore::hold_worker_identity`](crate::store::TaskStore::hold_worker_identity).
pub(super) async fn hold_identity(store: &SqliteStore, identity: &str) -> StoreResult<bool> {
    let path = store.lock_path(identity);
    let held = store.held.clone();
    tokio::task::spawn_blocking(move || {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Unavailable(format!("cannot create the worker lock folder: {e}"))
            })?;
        }
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| StoreError::Unavailable(format!("cannot open a worker lock file: {e}")))?;
        match file.try_lock() {
            Ok(()) => {
                held.lock().expect("held locks").push(file);
                Ok(true)
            }
            Err(std::fs::TryLockError::WouldBlock) => Ok(false),
            Err(std::fs::TryLockError::Error(e)) if e.kind() == ErrorKind::WouldBlock => Ok(false),
            Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Unavailable(format!(
                "cannot lock a worker lock file: {e}"
            ))),
        }
    })
    .await
    .map_err(|e| StoreError::Unavailable(format!("worker lock: {e}")))?
}

/// [`TaskStore::expire_previous_runs`](crate::store::TaskStore::expire_previous_runs).
pub(super) async fn expire_previous_runs(
    store: &SqliteStore,
    identity: &str,
    current: &str,
) -> StoreResult<u64> {
    let prefix = format!("{identity}#");
    let chars = i64::try_from(prefix.chars().count()).unwrap_or(i64::MAX);
    let query = WriteQuery::new(SQL_EXPIRE_PREVIOUS)
        .bind(now_ms().saturating_sub(1))
        .bind(chars)
        .bind(prefix)
        .bind(current.to_owned());
    store.execute(query, false).await
}
