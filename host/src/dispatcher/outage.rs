//! Outage tolerance: while a plugin's `availability` op says a task type cannot be served
//! (e.g. no ComfyUI instance is reachable), its tasks wait in the queue instead of being
//! claimed and failed; an attempt that found no engine goes back to PENDING without counting.
//! After `dispatcher.max_unavailable_wait_secs` of waiting, the tasks fail with
//! `engine_unavailable`.
//!
//! Separate from `dispatcher.rs` so the claim loop only asks one question.

use std::time::Instant;

use aihost_plugin_api::PluginError;
use chrono::Utc;

use super::Dispatcher;
use crate::{
    plugins::{availability, library::Library, registry::TaskTypeEntry},
    store::{Task, TaskError},
};

impl Dispatcher {
    /// Whether `entry`'s type may be claimed now (its plugin's `availability` op, cached).
    /// While it is not, tasks that waited longer than the configured maximum are failed.
    pub(super) async fn type_ready(&self, entry: &TaskTypeEntry) -> bool {
        let waiting = availability::waiting(&entry.plugin, false).await;
        let name = &entry.desc.name;
        let Some(reason) = waiting.get(name) else {
            let was = self
                .unready_since
                .lock()
                .expect("unready lock")
                .remove(name);
            if was.is_some() {
                tracing::info!(task_type = %name, "engine available again: claiming resumes");
            }
            return true;
        };
        let first = *self
            .unready_since
            .lock()
            .expect("unready lock")
            .entry(name.clone())
            .or_insert_with(|| {
                tracing::warn!(task_type = %name, %reason, "engine unavailable: tasks of this type wait in the queue");
                Instant::now()
            });
        let max = self.settings.max_unavailable_wait;
        if first.elapsed() >= max {
            let cutoff = Utc::now() - chrono::Duration::from_std(max).unwrap_or_default();
            let err = TaskError {
                code: crate::error_codes::ENGINE_UNAVAILABLE.into(),
                message: format!(
                    "no engine could take the task for {} s: {reason}",
                    max.as_secs()
                ),
            };
            match self.store.fail_waiting(name, cutoff, err).await {
                Ok(failed) => {
                    for t in failed {
                        tracing::warn!(task_id = %t.id, task_type = %name, "task failed: waited too long for an engine");
                        crate::metrics::task_failed(
                            &t.task_type,
                            crate::error_codes::ENGINE_UNAVAILABLE,
                        );
                    }
                }
                Err(e) => tracing::warn!(error = %e, "failing long-waiting tasks failed"),
            }
        }
        false
    }

    /// Whether a failed attempt failed only because its engine went away: a retryable
    /// `engine_unavailable` from a plugin whose `availability` op (asked afresh) now says the
    /// type is not ready. Such an attempt is released, not counted; since the type is not
    /// claimed until it is ready again, this cannot loop.
    pub(super) async fn engine_went_away(
        &self,
        plugin: &Library,
        task: &Task,
        e: &PluginError,
    ) -> bool {
        if !(e.retryable && e.code.as_str() == crate::error_codes::ENGINE_UNAVAILABLE) {
            return false;
        }
        let waiting = availability::waiting(plugin, true).await;
        let away = waiting.contains_key(&task.task_type);
        if away {
            tracing::info!(task_id = %task.id, task_type = %task.task_type, attempt = task.attempts, "no engine can take the task: back to the queue, the attempt not counted");
        }
        away
    }
}
