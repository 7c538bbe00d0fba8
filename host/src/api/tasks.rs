//! Task endpoints: create, read, list, cancel, delete, and the SSE event stream.

use std::{sync::Arc, time::Duration};

use futures_util::{StreamExt, stream::BoxStream};
use poem_openapi::{
    ApiResponse, Object, OpenApi,
    param::{Header, Path, Query},
    payload::{EventStream, Json},
};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{ApiTags, AppState, error::ApiError, ids::parse_id};
use crate::{
    error_codes,
    store::{
        CancelOutcome, DeleteOutcome, ListFilter, NewTask, RetryOutcome, Task, TaskEvent, TaskStore,
    },
    task_view::{TaskStatus, TaskView},
};

/// A new task.
#[derive(Debug, Clone, Object)]
pub(crate) struct CreateTaskRequest {
    /// A registered task type (see `GET /api/plugins`), e.g. `imageops.transform`.
    #[oai(rename = "type")]
    pub task_type: String,
    /// The task input; must match the task type's JSON Schema (see the schemas in this spec).
    pub input: Value,
    /// Higher runs first (default 0).
    #[oai(default)]
    pub priority: i32,
    /// Attempts allowed, 1 to 100 (default from `queue.default_max_attempts`).
    #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
    pub max_attempts: Option<u32>,
    /// URL to POST the finished task to: http or https, on an address the fetcher's SSRF rules
    /// accept (422 `invalid_webhook_url` / `webhook_url_blocked` otherwise). An empty string
    /// is no webhook.
    pub webhook_url: Option<String>,
    /// Webhook events wanted besides the terminal ones (`task.completed`, `task.failed`,
    /// `task.cancelled`, always sent): `task.started` (each attempt's start) and
    /// `task.progress` (throttled by `webhooks.progress_interval_ms`). Unknown names answer
    /// 422 `invalid_webhook_events`.
    pub webhook_events: Option<Vec<String>>,
    /// Deduplication key (also accepted as the `Idempotency-Key` header, which wins), at most
    /// 255 bytes; an empty string is no key. The key is bound to this request: the same key
    /// with another type, input, priority, max_attempts, webhook_url or timeout_secs answers 409
    /// `idempotency_conflict`.
    pub idempotency_key: Option<String>,
    /// Time limit of one attempt, in seconds (1 to 604800). An attempt that runs longer is
    /// cancelled and the task fails with `timeout` (retried only when the service is configured
    /// so). Default: `dispatcher.type_timeouts`, then the plugin's default, then
    /// `dispatcher.timeout_secs`.
    #[oai(validator(minimum(value = "1"), maximum(value = "604800")))]
    pub timeout_secs: Option<u32>,
}

/// How a create answers the outputs of a task that finished within its wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum OutputsMode {
    /// Output URLs only (in `result.outputs`).
    Url,
    /// Also each output's bytes, base64, in `outputs_base64`.
    Base64,
}

/// Answer to a create.
#[derive(ApiResponse)]
pub enum CreateResponse {
    /// Accepted: the task is queued (or, with `wait`, still running when the wait ran out).
    #[oai(status = 202)]
    Accepted(Json<TaskView>),
    /// The task finished within `wait`, or the idempotency key named a finished task.
    #[oai(status = 200)]
    Finished(Json<TaskView>),
}

/// What `GET /api/tasks` adds to each task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, poem_openapi::Enum)]
#[oai(rename_all = "lowercase")]
pub(crate) enum ListInclude {
    /// The task's input.
    Input,
}

/// A page of tasks.
#[derive(Debug, Clone, Object)]
pub(crate) struct TaskPage {
    /// Tasks, newest first.
    pub tasks: Vec<TaskView>,
    /// Pass as `cursor` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// Answer to a cancel.
#[derive(ApiResponse)]
pub enum CancelResponse {
    /// Cancelled (it was pending).
    #[oai(status = 200)]
    Cancelled(Json<TaskView>),
    /// Cancel requested: the task is running and stops shortly.
    #[oai(status = 202)]
    Requested(Json<TaskView>),
}

/// Answer to a retry.
#[derive(ApiResponse)]
pub enum RetryResponse {
    /// Queued again: the task is PENDING, same id, with a fresh budget of attempts.
    #[oai(status = 200)]
    Retried(Json<TaskView>),
}

/// Answer to a delete.
#[derive(ApiResponse)]
pub enum DeleteResponse {
    /// Deleted, with its output files (when `retention.delete_files`).
    #[oai(status = 204)]
    Deleted,
}

/// The longest `wait` accepted, in seconds.
pub(crate) const MAX_WAIT_SECS: u64 = 600;

/// The longest idempotency key accepted, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY_BYTES: usize = 255;

/// Hex SHA-256 of what a create asks for: the task type, the input and the options that shape
/// the task (priority, max_attempts, webhook_url, timeout_secs). It binds the idempotency key to the request
/// (the store refuses the key with another hash). Object keys hash in sorted order whatever
/// their order in the body (serde_json's map is sorted; a unit test keeps it so).
pub(crate) fn request_hash(
    task_type: &str,
    input: &Value,
    priority: i32,
    max_attempts: u32,
    webhook_url: Option<&str>,
    timeout_secs: Option<u32>,
) -> String {
    use sha2::Digest as _;
    let canonical = serde_json::json!([
        task_type,
        input,
        priority,
        max_attempts,
        webhook_url,
        timeout_secs
    ]);
    let digest = sha2::Sha256::digest(canonical.to_string().as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Refuses a webhook URL the completion call would refuse: not http(s) (422
/// `invalid_webhook_url`), or on an address the SSRF guard refuses (422
/// `webhook_url_blocked`).
async fn check_webhook_url(state: &AppState, url: &str) -> Result<(), ApiError> {
    let ok = url::Url::parse(url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"));
    if !ok {
        return Err(ApiError::unprocessable(
            error_codes::INVALID_WEBHOOK_URL,
            "webhook_url must be an http(s) URL",
        ));
    }
    let Some(fetcher) = &state.fetcher else {
        return Ok(());
    };
    match fetcher.check_url(url).await {
        Ok(()) => Ok(()),
        Err(e) if e.code() == error_codes::FETCH_BLOCKED => Err(ApiError::unprocessable(
            error_codes::WEBHOOK_URL_BLOCKED,
            format!("webhook_url refused: {e}"),
        )),
        Err(e) => Err(ApiError::unprocessable(
            error_codes::INVALID_WEBHOOK_URL,
            format!("webhook_url refused: {e}"),
        )),
    }
}

/// Validates `input` against the type's schema: 422 naming the first failing fields
/// (`invalid_input`, or the code the schema's `x-error-code` gives; see `input_check.rs`).
pub(crate) fn validate_input(
    state: &AppState,
    task_type: &str,
    input: &Value,
) -> Result<(), ApiError> {
    let Some(entry) = state.registry.task_type(task_type) else {
        let known: Vec<String> = state
            .registry
            .task_types()
            .into_iter()
            .map(|t| t.desc.name.clone())
            .collect();
        return Err(ApiError::unprocessable(
            error_codes::UNKNOWN_TASK_TYPE,
            format!(
                "unknown task type {task_type:?}; registered: {}",
                known.join(", ")
            ),
        ));
    };
    super::input_check::check(&entry.desc.input_schema, &entry.validator, input).map_err(|r| {
        let code = r.code.as_deref().unwrap_or(error_codes::INVALID_INPUT);
        ApiError::unprocessable(code, r.message)
    })
}

/// Creates a task (shared by `POST /api/tasks` and the seed-compatible routes).
pub(crate) async fn create_task(
    state: &AppState,
    req: CreateTaskRequest,
    header_key: Option<String>,
    wait: Option<u64>,
) -> Result<CreateResponse, ApiError> {
    create_task_with(state, req, header_key, wait, false).await
}

/// [`create_task`], with the outputs inline (base64) when `inline` and the task completed
/// within the wait (`outputs=base64`).
pub(crate) async fn create_task_with(
    state: &AppState,
    req: CreateTaskRequest,
    header_key: Option<String>,
    wait: Option<u64>,
    inline: bool,
) -> Result<CreateResponse, ApiError> {
    let key = header_key
        .filter(|k| !k.is_empty())
        .or(req.idempotency_key)
        .filter(|k| !k.is_empty());
    if let Some(key) = &key
        && key.len() > MAX_IDEMPOTENCY_KEY_BYTES
    {
        return Err(ApiError::bad_request(
            error_codes::IDEMPOTENCY_KEY_TOO_LONG,
            format!(
                "the idempotency key is {} bytes long; at most {MAX_IDEMPOTENCY_KEY_BYTES} are accepted",
                key.len()
            ),
        ));
    }
    validate_input(state, &req.task_type, &req.input)?;
    let webhook_url = req.webhook_url.filter(|u| !u.is_empty());
    if let Some(url) = &webhook_url {
        check_webhook_url(state, url).await?;
    }
    let webhook_events = crate::webhooks::parse_events(req.webhook_events.as_deref().unwrap_or(&[]))
        .map_err(|e| {
            ApiError::unprocessable(
                error_codes::INVALID_WEBHOOK_EVENTS,
                format!(
                    "unknown webhook event {e:?}; the optional events are {}, and task.completed, task.failed and task.cancelled are always sent",
                    crate::webhooks::OPTIONAL_EVENTS.join(", ")
                ),
            )
        })?;
    if state.max_pending > 0 {
        let depth: u64 = state.store.pending_by_type().await?.values().sum();
        if depth >= state.max_pending {
            let b = super::error::ErrorBody {
                error: super::error::ErrorDetail {
                    code: error_codes::QUEUE_FULL.into(),
                    message: format!(
                        "the queue holds {depth} pending tasks (limit {})",
                        state.max_pending
                    ),
                },
            };
            return Err(ApiError::TooManyRequests(Json(b), 5));
        }
    }
    let mut events = wait.map(|_| state.store.subscribe());
    let max_attempts = req
        .max_attempts
        .unwrap_or(state.default_max_attempts)
        .clamp(1, 100);
    let hash = request_hash(
        &req.task_type,
        &req.input,
        req.priority,
        max_attempts,
        webhook_url.as_deref(),
        req.timeout_secs,
    );
    let (task, created) = state
        .store
        .insert(NewTask {
            id: Uuid::now_v7(),
            task_type: req.task_type,
            input: req.input,
            priority: req.priority,
            max_attempts,
            idempotency_key: key,
            webhook_url,
            trace_parent: crate::telemetry::current_traceparent(),
            timeout_secs: req.timeout_secs,
            request_hash: Some(hash),
            webhook_events,
        })
        .await?;
    if created {
        crate::metrics::task_submitted(&task.task_type);
    } else {
        tracing::debug!(task_id = %task.id, "idempotency key matched an existing task");
    }
    let task = match (wait, events.as_mut()) {
        (Some(secs), Some(rx)) if !task.status.is_terminal() => {
            wait_terminal(
                state.store.as_ref(),
                rx,
                task,
                Duration::from_secs(secs.min(MAX_WAIT_SECS)),
            )
            .await?
        }
        _ => task,
    };
    Ok(if task.status.is_terminal() {
        let mut view: TaskView = task.into();
        if inline && matches!(view.status, TaskStatus::Completed) {
            view.outputs_base64 = Some(inline_outputs(state, &view).await?);
        }
        CreateResponse::Finished(Json(view))
    } else {
        CreateResponse::Accepted(Json(task.into()))
    })
}

/// The outputs of a COMPLETED task, base64, as `outputs_base64` shows them; 413
/// `inline_outputs_too_large` (naming the task and its output URLs) above
/// `server.max_inline_output_bytes` in all.
async fn inline_outputs(state: &AppState, view: &TaskView) -> Result<Value, ApiError> {
    use base64::Engine as _;
    let outputs: Vec<Value> = view
        .result
        .as_ref()
        .and_then(|r| r.get("outputs"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let total: u64 = outputs
        .iter()
        .filter_map(|o| o.get("size").and_then(Value::as_u64))
        .sum();
    let too_large = |total: u64| {
        let urls: Vec<&str> = outputs
            .iter()
            .filter_map(|o| o.get("url").and_then(Value::as_str))
            .collect();
        ApiError::new(
            poem::http::StatusCode::PAYLOAD_TOO_LARGE,
            error_codes::INLINE_OUTPUTS_TOO_LARGE,
            format!(
                "task {} completed, but its outputs are {total} bytes, over the {} bytes `outputs=base64` answers inline (server.max_inline_output_bytes); fetch them from their URLs: {}",
                view.task_id,
                state.max_inline_output_bytes,
                urls.join(" ")
            ),
        )
    };
    if total > state.max_inline_output_bytes {
        return Err(too_large(total));
    }
    let mut inline = Vec::with_capacity(outputs.len());
    let mut read_total = 0u64;
    for o in &outputs {
        let Some(key) = o.get("key").and_then(Value::as_str) else {
            continue;
        };
        let (_, mut stream) = state.storage.read_range(key, None).await?;
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| crate::storage::StorageError::Io {
                op: "read",
                key: key.to_owned(),
                detail: e.to_string(),
            })?;
            read_total += chunk.len() as u64;
            if read_total > state.max_inline_output_bytes {
                return Err(too_large(read_total));
            }
            bytes.extend_from_slice(&chunk);
        }
        inline.push(serde_json::json!({
            "key": key,
            "content_type": o.get("content_type").cloned().unwrap_or(Value::Null),
            "base64": base64::engine::general_purpose::STANDARD.encode(&bytes),
        }));
    }
    Ok(Value::Array(inline))
}

/// Waits until the task is terminal or `wait` runs out; answers the task as it is then.
async fn wait_terminal(
    store: &dyn TaskStore,
    rx: &mut broadcast::Receiver<TaskEvent>,
    task: Task,
    wait: Duration,
) -> Result<Task, ApiError> {
    let id = task.id;
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Err(_) => break,
            Ok(Ok(ev)) if ev.task.id == id && ev.task.status.is_terminal() => {
                // Events carry no input; the answer has the one submitted.
                let mut done = ev.task;
                done.input = task.input;
                return Ok(done);
            }
            Ok(Ok(_)) => {}
            Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                if let Some(t) = store.get(id).await?
                    && t.status.is_terminal()
                {
                    return Ok(t);
                }
            }
            Ok(Err(broadcast::error::RecvError::Closed)) => break,
        }
    }
    Ok(store.get(id).await?.unwrap_or(task))
}

/// Task endpoints.
pub(crate) struct TasksApi {
    /// Shared state.
    pub state: Arc<AppState>,
}

#[OpenApi(tag = "ApiTags::Tasks")]
impl TasksApi {
    /// Create a task of any registered type.
    ///
    /// The input is validated against the type's JSON Schema before anything is written (422
    /// names the failing field). With `wait=SECONDS` the call answers when the task finishes
    /// (200) or when the wait runs out (202). The same `Idempotency-Key` with the same request
    /// answers the task it created first; with another request (type, input, priority,
    /// max_attempts, webhook_url or timeout_secs) it answers 409 `idempotency_conflict`. Keys over 255 bytes
    /// answer 400 `idempotency_key_too_long`.
    #[oai(path = "/api/tasks", method = "post", operation_id = "create_task")]
    async fn create(
        &self,
        body: Json<CreateTaskRequest>,
        /// Seconds to wait for the task to finish (at most 600).
        #[oai(validator(minimum(value = "0"), maximum(value = "600")))]
        wait: Query<Option<u64>>,
        /// Deduplication key, at most 255 bytes, bound to this request (see above).
        #[oai(name = "Idempotency-Key")]
        idempotency_key: Header<Option<String>>,
        /// `base64`: when the task completes within `wait`, the answer also carries every
        /// output's bytes, base64, in `outputs_base64` (at most
        /// `server.max_inline_output_bytes` in all, else 413 `inline_outputs_too_large`, whose
        /// message names the task and its output URLs). `url` (default): URLs only.
        outputs: Query<Option<OutputsMode>>,
    ) -> Result<CreateResponse, ApiError> {
        let inline = matches!(outputs.0, Some(OutputsMode::Base64));
        create_task_with(&self.state, body.0, idempotency_key.0, wait.0, inline).await
    }

    /// Read a task.
    #[oai(path = "/api/tasks/:task_id", method = "get")]
    async fn get(&self, task_id: Path<String>) -> Result<Json<TaskView>, ApiError> {
        let id = parse_id(&task_id.0)?;
        match self.state.store.get(id).await? {
            Some(t) => {
                let mut view: TaskView = t.into();
                if view.webhook_url.is_some() {
                    view.webhook =
                        crate::api::webhooks::summary(&self.state.store.list_deliveries(id).await?);
                }
                // A PENDING task of a type whose engine is unavailable says why it waits.
                if matches!(view.status, TaskStatus::Pending)
                    && let Some(entry) = self.state.registry.task_type(&view.task_type)
                    && let Some(reason) =
                        crate::plugins::availability::waiting(&entry.plugin, false)
                            .await
                            .remove(&view.task_type)
                {
                    view.progress = Some(crate::task_view::ProgressView {
                        percent: view.progress.as_ref().map_or(0.0, |p| p.percent),
                        message: reason,
                        preview: None,
                    });
                }
                Ok(Json(view))
            }
            None => Err(ApiError::not_found(
                error_codes::TASK_NOT_FOUND,
                format!("no task {id}"),
            )),
        }
    }

    /// List tasks, newest first.
    ///
    /// Tasks come without their input (`input` is null) unless `include=input` is given; read
    /// one task (`GET /api/tasks/{task_id}`) for its input.
    #[oai(path = "/api/tasks", method = "get")]
    async fn list(
        &self,
        /// Only this status.
        status: Query<Option<TaskStatus>>,
        /// Only this task type.
        #[oai(name = "type")]
        task_type: Query<Option<String>>,
        /// Page size, 1 to 1000 (default 50).
        #[oai(validator(minimum(value = "1"), maximum(value = "1000")))]
        limit: Query<Option<u32>>,
        /// `next_cursor` of the previous page (empty or absent: the first page).
        #[oai(validator(
            pattern = r"^$|^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$"
        ))]
        cursor: Query<Option<String>>,
        /// `input`: include each task's input (left out by default: `input` is null). A page
        /// with inputs ends early, with a `next_cursor`, once they reach
        /// `server.max_list_input_bytes`.
        include: Query<Option<ListInclude>>,
    ) -> Result<Json<TaskPage>, ApiError> {
        let with_input = include.0 == Some(ListInclude::Input);
        let page = self
            .state
            .store
            .list(ListFilter {
                status: status.0.map(Into::into),
                task_type: task_type.0,
                limit: limit.0.unwrap_or(50),
                // An empty cursor is the first page.
                cursor: cursor.0.filter(|c| !c.is_empty()),
                without_input: !with_input,
                input_budget: with_input.then_some(self.state.max_list_input_bytes),
            })
            .await?;
        Ok(Json(TaskPage {
            tasks: page.tasks.into_iter().map(Into::into).collect(),
            next_cursor: page.next_cursor,
        }))
    }

    /// Cancel a task.
    ///
    /// A pending task is cancelled at once (200). A running one is stopped through its plugin
    /// (202; follow its events for the CANCELLED state). A finished one answers 409.
    #[oai(path = "/api/tasks/:task_id/cancel", method = "post")]
    async fn cancel(&self, task_id: Path<String>) -> Result<CancelResponse, ApiError> {
        let id = parse_id(&task_id.0)?;
        match self.state.store.cancel(id).await? {
            CancelOutcome::Cancelled(t) => {
                tracing::info!(task_id = %id, task_type = %t.task_type, attempt = t.attempts, "task cancelled while pending");
                crate::metrics::task_cancelled(&t.task_type);
                Ok(CancelResponse::Cancelled(Json(t.into())))
            }
            CancelOutcome::Requested(t) => {
                tracing::info!(task_id = %id, task_type = %t.task_type, attempt = t.attempts, "cancel requested for a running task");
                Ok(CancelResponse::Requested(Json(t.into())))
            }
            CancelOutcome::AlreadyFinished(t) => Err(ApiError::conflict(
                error_codes::TASK_FINISHED,
                format!("task {id} is already {}", t.status.as_str()),
            )),
            CancelOutcome::NotFound => Err(ApiError::not_found(
                error_codes::TASK_NOT_FOUND,
                format!("no task {id}"),
            )),
        }
    }

    /// Retry a failed or cancelled task.
    ///
    /// A FAILED or CANCELLED task goes back to PENDING under the same id, as a new attempt:
    /// its error, result and progress are cleared, its input and options kept. The attempt
    /// counter is not reset (attempt numbers name the output folders
    /// `outputs/{task}/{attempt}/`); instead the task gets a fresh budget: `max_attempts`
    /// becomes `attempts + budget`, where budget is the `max_attempts` parameter, else
    /// `queue.default_max_attempts`. Event streams see a `retrying` event. A PENDING,
    /// PROCESSING or COMPLETED task answers 409 `task_not_retryable`; an unknown id 404.
    #[oai(path = "/api/tasks/:task_id/retry", method = "post")]
    async fn retry(
        &self,
        task_id: Path<String>,
        /// Attempts the retried task may make from now, 1 to 100 (default
        /// `queue.default_max_attempts`).
        #[oai(validator(minimum(value = "1"), maximum(value = "100")))]
        max_attempts: Query<Option<u32>>,
    ) -> Result<RetryResponse, ApiError> {
        let id = parse_id(&task_id.0)?;
        let budget = max_attempts
            .0
            .unwrap_or(self.state.default_max_attempts)
            .clamp(1, 100);
        match self.state.store.retry(id, budget).await? {
            RetryOutcome::Retried(t) => {
                tracing::info!(task_id = %id, task_type = %t.task_type, attempts = t.attempts, max_attempts = t.max_attempts, "task retried by a client");
                Ok(RetryResponse::Retried(Json(t.into())))
            }
            RetryOutcome::NotRetryable(t) => Err(ApiError::conflict(
                error_codes::TASK_NOT_RETRYABLE,
                format!(
                    "task {id} is {}; only FAILED or CANCELLED tasks can be retried",
                    t.status.as_str()
                ),
            )),
            RetryOutcome::NotFound => Err(ApiError::not_found(
                error_codes::TASK_NOT_FOUND,
                format!("no task {id}"),
            )),
        }
    }

    /// Delete a finished task.
    ///
    /// A COMPLETED, FAILED or CANCELLED task is deleted with its output files (204; when
    /// `retention.delete_files`); afterwards its id answers 404 and its idempotency key is free.
    /// A PENDING or PROCESSING task answers 409 `task_live` (cancel it first). Nothing is sent on
    /// its event streams.
    #[oai(path = "/api/tasks/:task_id", method = "delete")]
    async fn delete(&self, task_id: Path<String>) -> Result<DeleteResponse, ApiError> {
        let id = parse_id(&task_id.0)?;
        match self.state.retention.delete_task(id).await? {
            DeleteOutcome::Deleted(_) => Ok(DeleteResponse::Deleted),
            DeleteOutcome::Live(t) => Err(ApiError::conflict(
                error_codes::TASK_LIVE,
                format!("task {id} is {}; cancel it first", t.status.as_str()),
            )),
            DeleteOutcome::NotFound => Err(ApiError::not_found(
                error_codes::TASK_NOT_FOUND,
                format!("no task {id}"),
            )),
        }
    }

    /// Follow a task's events (Server-Sent Events).
    ///
    /// The first event is the task's current state; then one event per state change or
    /// progress update; the stream ends after the terminal state. Each event's data is
    /// `{"event", "task_id", "status", "progress", "task"}`, the same JSON as the WebSocket;
    /// `task` comes without its input (`input` is null). At most `server.max_streams`
    /// subscribers per process (503 `too_many_streams` beyond); a subscriber that stops reading
    /// is disconnected (`server.send_timeout_secs`), one that falls thousands of events behind
    /// sees its stream end early: reconnect to get the current state.
    #[oai(path = "/api/tasks/:task_id/events", method = "get")]
    async fn events(
        &self,
        task_id: Path<String>,
    ) -> Result<EventStream<BoxStream<'static, Value>>, ApiError> {
        let id = parse_id(&task_id.0)?;
        let stream = super::events::follow(&self.state, id).await?;
        // Counted as open until the stream is dropped (ended or the client went away).
        let open = crate::metrics::StreamGuard::open("sse");
        let stream = stream
            .map(move |v| {
                let _ = &open;
                v
            })
            .boxed();
        Ok(EventStream::new(stream)
            .keep_alive(Duration::from_secs(15))
            .to_event(|v| {
                let kind = v
                    .get("event")
                    .and_then(Value::as_str)
                    .unwrap_or("message")
                    .to_owned();
                poem::web::sse::Event::message(v.to_string()).event_type(kind)
            }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::request_hash;

    /// The hash ignores the order of object keys and whitespace, and sees every part.
    #[test]
    fn request_hash_is_canonical_and_complete() {
        let a: serde_json::Value =
            serde_json::from_str(r#"{"b": 2, "a": {"y": 1, "x": [1, 2]}}"#).unwrap();
        let b: serde_json::Value =
            serde_json::from_str(r#"{"a":{"x":[1,2],"y":1},"b":2}"#).unwrap();
        let base = request_hash("t.x", &a, 0, 3, None, None);
        assert_eq!(base.len(), 64);
        assert_eq!(base, request_hash("t.x", &b, 0, 3, None, None));
        for other in [
            request_hash("t.y", &a, 0, 3, None, None),
            request_hash("t.x", &json!({"b": 3}), 0, 3, None, None),
            request_hash("t.x", &a, 1, 3, None, None),
            request_hash("t.x", &a, 0, 4, None, None),
            request_hash("t.x", &a, 0, 3, Some("https://example.com/h"), None),
            request_hash("t.x", &a, 0, 3, None, Some(60)),
        ] {
            assert_ne!(base, other);
        }
    }
}
