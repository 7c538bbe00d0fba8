//! Live previews of running attempts: a plugin offers an image file of its work folder
//! (`Context::preview`, carried as a `level::PREVIEW` task log message because the interface
//! is frozen), and this module stores the latest one and records it on the task.
//!
//! [`split`] sits between a running attempt's report channel and the dispatcher's progress
//! writer: progress reports pass through untouched; previews are taken out, at most one per
//! [`MIN_INTERVAL`] (the latest wins; the ones in between are dropped), copied to storage as
//! `previews/{task}/{attempt}/preview-{n}.{ext}` (the previous one of the attempt is deleted,
//! so each attempt keeps one), and recorded with `TaskStore::set_progress` together with the
//! latest progress, which publishes a `preview` event to every process. The stores clear the
//! preview with the progress at each attempt's start and end; retention deletes the last file
//! with the task's outputs.
//!
//! A preview must be a file inside the attempt's work folder (checked here, on the host's
//! runtime, by canonical paths); anything else is dropped with a debug line.

use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde_json::{Value, json};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::{
    plugins::services::ProgressReport,
    storage::Storage,
    store::{Progress, TaskStore},
};

/// The shortest time between two stored previews of one attempt.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(500);

/// The storage folder of one attempt's previews: `previews/{task}/{attempt}`.
pub(crate) fn attempt_folder(id: Uuid, attempt: u32) -> String {
    format!("previews/{id}/{attempt}")
}

/// One attempt's previews: where they go and what is recorded with them.
pub(crate) struct Attempt {
    /// The task store.
    pub store: Arc<dyn TaskStore>,
    /// Object storage.
    pub storage: Storage,
    /// The task.
    pub id: Uuid,
    /// The attempt.
    pub attempt: u32,
    /// The attempt's work folder: previews must be inside it.
    pub work_dir: PathBuf,
}

/// Takes the previews out of `rx` (see the module documentation) and answers the channel of
/// the remaining progress reports, which ends when `rx` ends.
pub(crate) fn split(
    attempt: Attempt,
    mut rx: mpsc::UnboundedReceiver<ProgressReport>,
) -> mpsc::UnboundedReceiver<ProgressReport> {
    let (tx, out) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut latest = Progress {
            percent: 0.0,
            message: String::new(),
            preview: None,
        };
        let mut waiting: Option<(PathBuf, String)> = None;
        let mut next_at = tokio::time::Instant::now();
        let mut n: u64 = 0;
        let mut previous: Option<String> = None;
        loop {
            let report = if waiting.is_some() {
                match tokio::time::timeout_at(next_at, rx.recv()).await {
                    Ok(r) => r.map(Some),
                    Err(_) => Some(None),
                }
            } else {
                rx.recv().await.map(Some)
            };
            let ended = report.is_none();
            if let Some(Some(r)) = report {
                match r.preview {
                    Some(p) => waiting = Some(p),
                    None => {
                        latest.percent = r.percent;
                        latest.message.clone_from(&r.message);
                        let _ = tx.send(r);
                    }
                }
            }
            // The one still waiting when the attempt ends is stored before the terminal write
            // (the dispatcher waits for the progress writer, which waits for this task).
            if (ended || tokio::time::Instant::now() >= next_at)
                && let Some((path, ct)) = waiting.take()
            {
                n += 1;
                if let Some(stored) = attempt.store_one(&path, &ct, n).await {
                    let key = stored["key"].as_str().map(str::to_owned);
                    let progress = Progress {
                        preview: Some(stored),
                        ..latest.clone()
                    };
                    let _ = attempt
                        .store
                        .set_progress(attempt.id, attempt.attempt, progress)
                        .await;
                    if let Some(old) = std::mem::replace(&mut previous, key) {
                        let _ = attempt.storage.delete(&old).await;
                    }
                }
                next_at = tokio::time::Instant::now() + MIN_INTERVAL;
            }
            if ended {
                return;
            }
        }
    });
    out
}

impl Attempt {
    /// Copies preview `n` to storage: `{"key", "url", "content_type", "n"}`, or `None` (logged)
    /// when the file is not in the work folder or cannot be stored.
    async fn store_one(&self, path: &Path, content_type: &str, n: u64) -> Option<Value> {
        let inside = match (
            tokio::fs::canonicalize(path).await,
            tokio::fs::canonicalize(&self.work_dir).await,
        ) {
            (Ok(p), Ok(root)) if p.starts_with(&root) => {
                tokio::fs::metadata(&p).await.is_ok_and(|m| m.is_file())
            }
            _ => false,
        };
        if !inside {
            tracing::debug!(task_id = %self.id, path = %path.display(), "preview dropped: not a file in the task's work folder");
            return None;
        }
        let ext = match content_type {
            "image/jpeg" => "jpg",
            "image/webp" => "webp",
            "image/gif" => "gif",
            _ => "png",
        };
        let key = format!(
            "{}/preview-{n}.{ext}",
            attempt_folder(self.id, self.attempt)
        );
        match self.storage.put_file(&key, path, content_type).await {
            Ok(obj) => Some(
                json!({"key": obj.key, "url": obj.url, "content_type": obj.content_type, "n": n}),
            ),
            Err(e) => {
                tracing::debug!(task_id = %self.id, key = %key, code = e.code(), "preview not stored: {e}");
                None
            }
        }
    }
}
