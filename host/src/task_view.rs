//! The task's public JSON shape: what `GET /api/tasks/{id}` answers, what every SSE and
//! WebSocket event carries, and what a completion webhook posts.
//!
//! It lives outside `api/` because the dispatcher (webhooks) and the event streams need it too,
//! and neither may depend on the HTTP layer. The types derive poem-openapi's `Object` only so
//! that `/openapi.json` documents the same shape; nothing here knows about requests or routes.

use chrono::{DateTime, Utc};
use poem_openapi::{Enum, Object, types::ToJSON};
use serde_json::Value;

use crate::store::{Status, Task, TaskEvent};

/// Lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
#[oai(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TaskStatus {
    /// Waiting in the queue.
    Pending,
    /// Running.
    Processing,
    /// Finished with a result.
    Completed,
    /// Finished with an error.
    Failed,
    /// Cancelled.
    Cancelled,
}

impl From<Status> for TaskStatus {
    fn from(s: Status) -> Self {
        match s {
            Status::Pending => TaskStatus::Pending,
            Status::Processing => TaskStatus::Processing,
            Status::Completed => TaskStatus::Completed,
            Status::Failed => TaskStatus::Failed,
            Status::Cancelled => TaskStatus::Cancelled,
        }
    }
}

impl From<TaskStatus> for Status {
    fn from(s: TaskStatus) -> Self {
        match s {
            TaskStatus::Pending => Status::Pending,
            TaskStatus::Processing => Status::Processing,
            TaskStatus::Completed => Status::Completed,
            TaskStatus::Failed => Status::Failed,
            TaskStatus::Cancelled => Status::Cancelled,
        }
    }
}

/// Progress of a running task.
#[derive(Debug, Clone, Object)]
pub struct ProgressView {
    /// 0 to 100.
    pub percent: f32,
    /// Current step.
    pub message: String,
    /// The running attempt's latest live preview, when its task asked for previews and the
    /// engine sent one (comfyui: `previews: true`).
    pub preview: Option<PreviewView>,
}

/// A live preview image of a running attempt, stored under `previews/{task}/{attempt}/`.
#[derive(Debug, Clone, Object)]
pub struct PreviewView {
    /// Storage key (`GET /files/{key}`).
    pub key: String,
    /// URL of the image.
    pub url: String,
    /// `image/jpeg`, `image/png`, ...
    pub content_type: String,
    /// Counts the attempt's previews (1, 2, ...); some are skipped when they come faster than
    /// they are stored.
    pub n: u64,
}

impl PreviewView {
    /// The view of a stored preview (`None` for one that lacks a field).
    fn of(v: &Value) -> Option<PreviewView> {
        Some(PreviewView {
            key: v["key"].as_str()?.to_owned(),
            url: v["url"].as_str()?.to_owned(),
            content_type: v["content_type"].as_str()?.to_owned(),
            n: v["n"].as_u64()?,
        })
    }
}

/// Why a task failed.
#[derive(Debug, Clone, Object)]
pub struct TaskErrorView {
    /// Stable snake_case code, the plugin's (e.g. `invalid_input`, `engine_error`) or the
    /// host's (e.g. `lease_expired`). `x-error-codes` at the top of this document lists every
    /// code aihost and the shared plugin interface produce (surface `task`); those also
    /// answered over HTTP are in `ErrorCode` (`#/components/schemas/ErrorCode`). Plugins may
    /// add task codes of their own (e.g. `invalid_workflow`).
    pub code: String,
    /// Explanation.
    pub message: String,
}

/// A task.
#[derive(Debug, Clone, Object)]
pub struct TaskView {
    /// Task id (UUIDv7).
    pub task_id: String,
    /// Task type.
    #[oai(rename = "type")]
    pub task_type: String,
    /// Lifecycle state.
    pub status: TaskStatus,
    /// The input as submitted.
    pub input: Value,
    /// Higher runs first.
    pub priority: i32,
    /// Attempts started.
    pub attempts: u32,
    /// Attempts allowed.
    pub max_attempts: u32,
    /// Last progress.
    pub progress: Option<ProgressView>,
    /// `{outputs: [{url, key, content_type, size}], ...}` once COMPLETED.
    pub result: Option<Value>,
    /// The error once FAILED (or the last error while waiting for a retry).
    pub error: Option<TaskErrorView>,
    /// Accepted at.
    pub created_at: DateTime<Utc>,
    /// Current or last attempt started at.
    pub started_at: Option<DateTime<Utc>>,
    /// Finished at.
    pub finished_at: Option<DateTime<Utc>>,
    /// Deduplication key.
    pub idempotency_key: Option<String>,
    /// Completion webhook.
    pub webhook_url: Option<String>,
    /// The client's time limit of one attempt, in seconds, if it set one.
    pub timeout_secs: Option<u32>,
    /// Webhook delivery summary (`GET /api/tasks/{id}` of a task with deliveries only):
    /// `{deliveries, pending, dead, last: {id, event, state, attempts, last_status,
    /// last_error, next_at}}`; `GET /api/tasks/{id}/webhooks` lists them all.
    #[oai(skip_serializing_if_is_none)]
    pub webhook: Option<Value>,
    /// The outputs' bytes, base64, in the order of `result.outputs` (a create with
    /// `outputs=base64` that finished within its wait only): `[{key, content_type, base64}]`.
    #[oai(skip_serializing_if_is_none)]
    pub outputs_base64: Option<Value>,
}

impl From<Task> for TaskView {
    fn from(t: Task) -> Self {
        TaskView {
            task_id: t.id.to_string(),
            task_type: t.task_type,
            status: t.status.into(),
            input: t.input,
            priority: t.priority,
            attempts: t.attempts,
            max_attempts: t.max_attempts,
            progress: t.progress.map(|p| ProgressView {
                percent: p.percent,
                message: p.message,
                preview: p.preview.as_ref().and_then(PreviewView::of),
            }),
            result: t.result,
            error: t.error.map(|e| TaskErrorView {
                code: e.code,
                message: e.message,
            }),
            created_at: t.created_at,
            started_at: t.started_at,
            finished_at: t.finished_at,
            idempotency_key: t.idempotency_key,
            webhook_url: t.webhook_url,
            timeout_secs: t.timeout_secs,
            webhook: None,
            outputs_base64: None,
        }
    }
}

impl TaskView {
    /// The JSON object clients see.
    pub fn to_value(&self) -> Value {
        self.to_json().unwrap_or(Value::Null)
    }
}

/// The JSON of one event (a `preview` event also has the preview at the top).
pub(crate) fn event_json(ev: &TaskEvent) -> Value {
    let view = TaskView::from(ev.task.clone());
    let mut v = serde_json::json!({
        "event": ev.kind,
        "task_id": ev.task.id.to_string(),
        "status": ev.task.status.as_str(),
        "progress": ev.task.progress,
        "task": view.to_value(),
    });
    if ev.kind == crate::store::EventKind::Preview
        && let Some(p) = ev.task.progress.as_ref().and_then(|p| p.preview.clone())
    {
        v["preview"] = p;
    }
    v
}
