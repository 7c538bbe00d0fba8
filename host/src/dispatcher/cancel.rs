//! The cancel of a running attempt that tells the truth: the plugin is asked to stop
//! (`cancel_task`) while its run future keeps running, so it can end by itself once its engine
//! stopped; the task shows "cancel requested, waiting for the engine to stop" meanwhile, and
//! its terminal CANCELLED says whether and when the engine stopped. A plugin whose future does
//! not end within `dispatcher.cancel_grace_secs` is dropped, as before.
//!
//! Separate from `dispatcher.rs` so the attempt loop stays one table of outcomes.

use std::{
    future::Future,
    pin::Pin,
    time::{Duration, Instant},
};

use uuid::Uuid;

use super::Outcome;
use crate::{
    plugins::library::Library,
    store::{Progress, TaskStore},
};

/// How the plugin's future ended after the cancel: how long after it was asked, and the error
/// code it answered (`None` when it answered a success).
#[derive(Debug, Clone, Copy)]
pub(super) struct Stopped {
    /// From the cancel request to the end of the future.
    pub(super) after: Duration,
    /// Whether the future answered `cancelled` (the engine confirmed the stop).
    pub(super) confirmed: bool,
}

/// The message of a task while its engine is being stopped.
pub(super) const WAITING: &str = "cancel requested, waiting for the engine to stop";

/// Tells the plugin to cancel task `id` and polls its run future until it ends or `grace`
/// passes; answers [`Outcome::CancelledStopped`].
pub(super) async fn stop_engine<F, T>(
    store: &dyn TaskStore,
    plugin: &Library,
    id: Uuid,
    attempt: u32,
    grace: Duration,
    mut run: Pin<&mut F>,
) -> Outcome
where
    F: Future<Output = Result<T, aihost_plugin_api::PluginError>>,
{
    let asked = Instant::now();
    let _ = store
        .set_progress(
            id,
            attempt,
            Progress {
                percent: current_percent(store, id).await,
                message: WAITING.into(),
                preview: None,
            },
        )
        .await;
    tracing::info!(task_id = %id, attempt, "cancel requested: waiting for the engine to stop");
    let task_id = id.to_string();
    let cancel = plugin.cancel_task(&task_id);
    tokio::pin!(cancel);
    let mut cancel_done = false;
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        tokio::select! {
            r = &mut run => {
                let confirmed = matches!(&r, Err(e) if e.code.as_str() == aihost_plugin_api::codes::CANCELLED);
                return Outcome::CancelledStopped(Some(Stopped { after: asked.elapsed(), confirmed }));
            }
            () = &mut cancel, if !cancel_done => cancel_done = true,
            () = tokio::time::sleep_until(deadline) => {
                tracing::warn!(task_id = %id, attempt, grace_secs = grace.as_secs(), "the plugin did not stop within the cancel grace; dropping the attempt");
                return Outcome::CancelledStopped(None);
            }
        }
    }
}

/// The percent the task shows now (kept while it is being cancelled).
async fn current_percent(store: &dyn TaskStore, id: Uuid) -> f32 {
    store
        .get(id)
        .await
        .ok()
        .flatten()
        .and_then(|t| t.progress)
        .map_or(0.0, |p| p.percent)
}

/// Writes the progress the CANCELLED task keeps: when the engine stopped, or that it did not
/// within the grace.
pub(super) async fn report_stopped(
    store: &dyn TaskStore,
    id: Uuid,
    attempt: u32,
    stopped: Option<Stopped>,
    grace: Duration,
) {
    let message = match stopped {
        Some(s) if s.confirmed => format!(
            "cancelled: the engine stopped {:.1} s after the cancel request",
            s.after.as_secs_f64()
        ),
        Some(s) => format!(
            "cancelled: the attempt ended {:.1} s after the cancel request",
            s.after.as_secs_f64()
        ),
        None => format!(
            "cancelled: the engine did not confirm the stop within {} s; the attempt was dropped",
            grace.as_secs()
        ),
    };
    let percent = current_percent(store, id).await;
    let _ = store
        .set_progress(
            id,
            attempt,
            Progress {
                percent,
                message,
                preview: None,
            },
        )
        .await;
}
