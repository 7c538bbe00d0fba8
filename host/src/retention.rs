//! Retention: what is deleted, and when. One pass ([`Retention::pass`]) deletes the finished
//! tasks older than their status's period (`[retention]`), in bounded batches, with their output
//! files (`outputs/{task_id}/`, when `retention.delete_files`), then the uploads no live task
//! names once older than `retention.uploads_days`. [`Retention::delete_task`] is the one
//! deletion of a single task (`DELETE /api/tasks/{id}`). The background loop
//! ([`Retention::run`]) runs a pass every `retention.interval_secs`; `aihost store prune` runs
//! one now.
//!
//! The rules, stated once:
//! - a task is pruned when COMPLETED, FAILED or CANCELLED and `finished_at` is older than its
//!   status's period (0 days: kept forever); PENDING and PROCESSING tasks never are;
//! - an upload (`uploads/{id}/...`) is removed when every object under it is older than
//!   `retention.uploads_days` (by the backend's modification time; a backend that reports none,
//!   `memory`, keeps them) and no PENDING or PROCESSING task's input contains `uploads/{id}`;
//! - a file that cannot be deleted is logged and left (the task row is gone either way);
//!   `cf_images` cannot list, so there the files stay.
//!
//! Deletes are idempotent, so several processes sharing one PostgreSQL may prune at once.

use std::{
    collections::BTreeMap,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, SystemTime},
};

use chrono::Utc;
use serde::Serialize;
use uuid::Uuid;

use crate::{
    config::RetentionConfig,
    storage::{Storage, StorageError},
    store::{DeleteOutcome, Status, StoreResult, TaskStore},
};

/// The statuses retention applies to, with their period key.
const PRUNED: [Status; 3] = [Status::Completed, Status::Failed, Status::Cancelled];

/// What one pass deleted (or, in a dry run, would delete).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct PassReport {
    /// Tasks per status (`COMPLETED`, `FAILED`, `CANCELLED`).
    pub tasks: BTreeMap<&'static str, u64>,
    /// Output files deleted with the tasks (not counted in a dry run).
    pub output_files: u64,
    /// Upload folders (`uploads/{id}/`) removed.
    pub uploads: u64,
}

impl PassReport {
    /// Tasks of every status.
    pub(crate) fn total_tasks(&self) -> u64 {
        self.tasks.values().sum()
    }

    /// Whether nothing was (or would be) deleted.
    pub(crate) fn is_empty(&self) -> bool {
        self.total_tasks() == 0 && self.output_files == 0 && self.uploads == 0
    }
}

/// Retention over one store and one storage. Cheap to share behind an `Arc`.
pub(crate) struct Retention {
    store: Arc<dyn TaskStore>,
    storage: Storage,
    config: RetentionConfig,
    /// Tasks deleted by this process since it started (passes and single deletes).
    deleted: AtomicU64,
}

impl Retention {
    /// Retention with these settings.
    pub(crate) fn new(
        store: Arc<dyn TaskStore>,
        storage: Storage,
        config: RetentionConfig,
    ) -> Retention {
        Retention {
            store,
            storage,
            config,
            deleted: AtomicU64::new(0),
        }
    }

    /// Tasks this process deleted since it started (pruned and `DELETE`d).
    pub(crate) fn deleted_since_start(&self) -> u64 {
        self.deleted.load(Ordering::Relaxed)
    }

    /// The period of a status (`None`: kept forever).
    fn period(&self, status: Status) -> Option<Duration> {
        let c = &self.config;
        match status {
            Status::Completed => c.period(c.completed_days),
            Status::Failed => c.period(c.failed_days),
            Status::Cancelled => c.period(c.cancelled_days),
            Status::Pending | Status::Processing => None,
        }
    }

    /// One full pass now. A dry run counts what a pass would delete and changes nothing.
    pub(crate) async fn pass(&self, dry_run: bool) -> StoreResult<PassReport> {
        let mut report = PassReport::default();
        for status in PRUNED {
            let Some(period) = self.period(status) else {
                continue;
            };
            let span = chrono::Duration::from_std(period).unwrap_or(chrono::Duration::MAX);
            let cutoff = Utc::now()
                .checked_sub_signed(span)
                .unwrap_or(chrono::DateTime::<Utc>::MIN_UTC);
            let n = if dry_run {
                self.store.count_prunable(status, cutoff).await?
            } else {
                self.prune_status(status, cutoff, &mut report).await?
            };
            report.tasks.insert(status.as_str(), n);
        }
        report.uploads = self.prune_uploads(dry_run).await?;
        Ok(report)
    }

    /// Deletes every prunable task of one status, batch by batch; answers how many.
    async fn prune_status(
        &self,
        status: Status,
        cutoff: chrono::DateTime<Utc>,
        report: &mut PassReport,
    ) -> StoreResult<u64> {
        let batch = self.config.batch.max(1);
        let mut total = 0u64;
        loop {
            let ids = self.store.prune(status, cutoff, batch).await?;
            let n = u64::try_from(ids.len()).unwrap_or(u64::MAX);
            total += n;
            self.deleted.fetch_add(n, Ordering::Relaxed);
            for id in &ids {
                report.output_files += self.delete_outputs(*id).await;
            }
            if n < u64::from(batch) {
                return Ok(total);
            }
            // Let other writers in between batches.
            tokio::task::yield_now().await;
        }
    }

    /// Deletes a task's output files when configured; answers how many. Failures are logged.
    async fn delete_outputs(&self, id: Uuid) -> u64 {
        if !self.config.delete_files {
            return 0;
        }
        // The last live preview of each attempt (`previews.rs`) goes with the outputs.
        if let Err(e) = self.storage.delete_folder(&format!("previews/{id}")).await
            && !matches!(e, StorageError::Unsupported { .. })
        {
            tracing::warn!(task_id = %id, code = e.code(), "cannot delete the task's previews: {e}");
        }
        match self.storage.delete_folder(&format!("outputs/{id}")).await {
            Ok(n) => n,
            Err(StorageError::Unsupported { .. }) => 0,
            Err(e) => {
                tracing::warn!(task_id = %id, code = e.code(), "cannot delete the task's output files: {e}");
                0
            }
        }
    }

    /// Removes (or counts, in a dry run) the uploads past `uploads_days` that no live task names.
    async fn prune_uploads(&self, dry_run: bool) -> StoreResult<u64> {
        let Some(period) = self.config.period(self.config.uploads_days) else {
            return Ok(0);
        };
        let Some(cutoff) = SystemTime::now().checked_sub(period) else {
            return Ok(0);
        };
        let objects = match self.storage.list("uploads").await {
            Ok(objects) => objects,
            Err(StorageError::Unsupported { .. }) => return Ok(0),
            Err(e) => {
                tracing::warn!(code = e.code(), "cannot list uploads: {e}");
                return Ok(0);
            }
        };
        // Per upload folder: whether every object in it is older than the cutoff.
        let mut folders: BTreeMap<String, bool> = BTreeMap::new();
        for object in objects {
            let mut parts = object.key.splitn(3, '/');
            let (Some(_), Some(id), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
                continue;
            };
            let old = object.last_modified.is_some_and(|t| t < cutoff);
            let entry = folders.entry(format!("uploads/{id}")).or_insert(true);
            *entry &= old;
        }
        let limit = u64::from(self.config.batch.max(1));
        let mut removed = 0u64;
        for (folder, old) in folders {
            if removed >= limit {
                break;
            }
            if !old || self.store.live_input_mentions(&folder).await? {
                continue;
            }
            if !dry_run && let Err(e) = self.storage.delete_folder(&folder).await {
                tracing::warn!(upload = %folder, code = e.code(), "cannot delete an upload: {e}");
                continue;
            }
            removed += 1;
        }
        Ok(removed)
    }

    /// Deletes one finished task and (when configured) its output files. See
    /// [`DeleteOutcome`]; a live task is refused.
    pub(crate) async fn delete_task(&self, id: Uuid) -> StoreResult<DeleteOutcome> {
        let outcome = self.store.delete(id).await?;
        if let DeleteOutcome::Deleted(task) = &outcome {
            self.deleted.fetch_add(1, Ordering::Relaxed);
            let files = self.delete_outputs(id).await;
            tracing::info!(task_id = %id, task_type = %task.task_type, status = task.status.as_str(), files, "task deleted");
        }
        Ok(outcome)
    }

    /// The background pruner: a pass every `retention.interval_secs`, one INFO line per pass
    /// that deleted something. Runs until the task is aborted.
    pub(crate) async fn run(self: Arc<Self>) {
        let interval = Duration::from_secs(self.config.interval_secs.max(1));
        loop {
            match self.pass(false).await {
                Ok(report) if !report.is_empty() => tracing::info!(
                    completed = report.tasks.get("COMPLETED").copied().unwrap_or(0),
                    failed = report.tasks.get("FAILED").copied().unwrap_or(0),
                    cancelled = report.tasks.get("CANCELLED").copied().unwrap_or(0),
                    output_files = report.output_files,
                    uploads = report.uploads,
                    "retention pass deleted expired tasks and files"
                ),
                Ok(_) => {}
                Err(e) => tracing::warn!(code = e.code(), "retention pass failed: {e}"),
            }
            tokio::time::sleep(interval).await;
        }
    }
}
