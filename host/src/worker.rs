//! This consumer's identity in the task store, and the fast recovery it allows.
//!
//! A consumer records `{identity}#{run}` as the worker of the tasks it claims: the identity is
//! stable across restarts (`dispatcher.worker_id`, or `hostname-N`), the run is new at every
//! start. The store lets one live process hold an identity at a time, and the hold ends when the
//! process dies however it dies (see [`TaskStore::hold_worker_identity`]). So a consumer that
//! starts again after a crash gets its identity back and ends at once the leases its previous
//! run held ([`TaskStore::expire_previous_runs`]); the dispatcher's first rescue then puts those
//! tasks back in the queue, instead of waiting for their leases to run out.
//!
//! Without a configured id, the identity is `{hostname}-{N}` with the lowest N (0 to 63) that
//! no live consumer of this store holds: one consumer per machine is `host-0`, and after a
//! crash it is `host-0` again.

use crate::{config::Config, error_codes, store::TaskStore};

/// Identities tried when none is configured: `{hostname}-0` to `{hostname}-63`.
const SLOTS: u32 = 64;

/// This consumer's identity and run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct WorkerId {
    /// Stable across restarts; held by this process only.
    pub identity: String,
    /// New at every start.
    pub run: String,
}

impl WorkerId {
    /// What the store records on the tasks this run claims: `{identity}#{run}`.
    pub(crate) fn full(&self) -> String {
        format!("{}#{}", self.identity, self.run)
    }
}

/// Why no identity could be had.
#[derive(Debug, thiserror::Error)]
pub(crate) enum WorkerError {
    /// Every identity this process may take is held by another live process.
    #[error(
        "worker id {0:?} is held by another running consumer of this task store; stop it or set \
         another dispatcher.worker_id"
    )]
    InUse(String),
    /// The store failed.
    #[error("{0}")]
    Store(#[from] crate::store::StoreError),
}

impl WorkerError {
    /// Stable error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            WorkerError::InUse(_) => error_codes::WORKER_ID_IN_USE,
            WorkerError::Store(e) => e.code(),
        }
    }
}

/// Takes this process's identity and ends the leases its previous runs still hold; logs what
/// it took back.
pub(crate) async fn acquire(
    config: &Config,
    store: &dyn TaskStore,
) -> Result<WorkerId, WorkerError> {
    let identity = match &config.dispatcher.worker_id {
        Some(id) => {
            if !store.hold_worker_identity(id).await? {
                return Err(WorkerError::InUse(id.clone()));
            }
            id.clone()
        }
        None => {
            let host = Config::hostname();
            let mut found = None;
            for n in 0..SLOTS {
                let candidate = format!("{host}-{n}");
                if store.hold_worker_identity(&candidate).await? {
                    found = Some(candidate);
                    break;
                }
            }
            found.ok_or_else(|| WorkerError::InUse(format!("{host}-0 .. {host}-{}", SLOTS - 1)))?
        }
    };
    let id = WorkerId {
        identity,
        run: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(),
    };
    let taken = store.expire_previous_runs(&id.identity, &id.full()).await?;
    if taken > 0 {
        tracing::warn!(
            worker = %id.identity,
            tasks = taken,
            "taking back the tasks this consumer's previous run held when it stopped; they run again"
        );
    }
    Ok(id)
}
