//! The ComfyUI-compatible gateway: ComfyUI's HTTP and WebSocket protocol under `/comfy` (and
//! its `/comfy/api/...` alias, as ComfyUI serves every route at `/X` and `/api/X`), backed by
//! aihost's durable queue and the `comfyui` plugin's pool and storage, so that an unchanged
//! ComfyUI client gets retries, durability and a pool of instances.
//!
//! Every prompt is a `comfyui.workflow` task (`prompt.rs`) whose idempotency key is
//! `comfy:{prompt_id}` and whose input keeps the prompt's bookkeeping under `gateway`
//! (`client_id`, `prompt_id`, `number`, `extra_data`, `outputs_to_execute`); history, queue,
//! interrupt and the WebSocket messages are read from those tasks and their events. Uploads
//! (`/upload/image`) are aihost uploads at a key derived from their ComfyUI name, so a prompt
//! naming one gets it through the plugin's `media` mechanism on whichever instance runs it.
//!
//! One file per concern: `prompt.rs` (submit), `history.rs` (history entries, also the
//! `executed` outputs of the WebSocket), `queue.rs` (queue and interrupt), `files.rs`
//! (`/view`, `/upload/image`), `info.rs` (the plugin's read-only routes), `ws.rs` (messages).
//!
//! Not in `/openapi.json`: this is a compatibility surface whose shapes are ComfyUI's; README's
//! "ComfyUI-compatible gateway" documents it.

use poem::{Response, Route, get, http::StatusCode, post};
use serde_json::{Value, json};

use super::AppState;
use super::error::error_response;
use crate::error_codes;

mod files;
mod history;
mod info;
mod prompt;
mod queue;
mod ws;

/// Where the gateway is mounted.
pub(crate) const PREFIX: &str = "/comfy";
/// The prefix of the idempotency key of a gateway prompt's task (`comfy:{prompt_id}`).
pub(crate) const KEY_PREFIX: &str = "comfy:";
/// The task type prompts become.
const TASK_TYPE: &str = crate::api::seed::comfyui::TASK_TYPE;
/// The plugin behind the routes.
const PLUGIN: &str = crate::api::seed::comfyui::PLUGIN;

/// Whether `path` is a gateway path (checked for API keys, with `?token=` accepted).
pub(crate) fn is_gateway_path(path: &str) -> bool {
    path == PREFIX || path.starts_with("/comfy/")
}

/// Whether `path` is the gateway's upload route (which has the upload size limit, not the
/// JSON body limit).
pub(crate) fn is_upload_path(path: &str) -> bool {
    path == "/comfy/upload/image" || path == "/comfy/api/upload/image"
}

/// ComfyUI's cross-site guard, on every gateway request (HTTP and the WebSocket handshake):
/// a request with an `Origin` header whose host (and port) differs from its `Host` header is
/// refused with 403 `cross_origin_refused`, unless the origin is one of `server.cors_origins`.
/// Without it, any web page a user opens could queue prompts or interrupt through a form post
/// or a WebSocket (no preflight guards those). Clients that send no `Origin` (scripts,
/// libraries) are not affected.
pub(crate) fn check_origin(state: &AppState, req: &poem::Request) -> Option<poem::Error> {
    if !is_gateway_path(req.uri().path()) {
        return None;
    }
    let origin = req.headers().get(poem::http::header::ORIGIN)?.to_str().ok();
    let host = req
        .headers()
        .get(poem::http::header::HOST)
        .and_then(|h| h.to_str().ok());
    let same = match (origin, host) {
        (Some(o), Some(h)) => url::Url::parse(o).ok().is_some_and(|u| {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            u.host_str()
                .is_some_and(|oh| format!("{oh}{port}").eq_ignore_ascii_case(h))
        }),
        _ => false,
    };
    let allowed = origin.is_some_and(|o| state.cors_origins.iter().any(|c| c == o || c == "*"));
    if same || allowed {
        return None;
    }
    Some(poem::Error::from_response(error_response(
        StatusCode::FORBIDDEN,
        error_codes::COMFY_CROSS_ORIGIN,
        "the request's Origin is another site than this server (Host); the ComfyUI gateway \
         refuses cross-site requests unless the origin is listed in server.cors_origins",
    )))
}

/// The `token` query parameter of a gateway request (an API key for clients that cannot set
/// headers), %-decoded.
pub(crate) fn query_token(query: &str) -> Option<String> {
    query
        .split('&')
        .find_map(|p| p.strip_prefix("token="))
        .map(crate::percent::decode_lossy)
}

/// The gateway's routes, relative to [`PREFIX`]: each at `/X` and at `/api/X`.
pub(crate) fn routes() -> Route {
    fn base() -> Route {
        Route::new()
            .at("/prompt", get(prompt::status).post(prompt::submit))
            .at("/history", get(history::list))
            .at("/history/:prompt_id", get(history::one))
            .at("/view", get(files::view))
            .at("/upload/image", post(files::upload_image))
            .at("/queue", get(queue::list).post(queue::edit))
            .at("/interrupt", post(queue::interrupt))
            .at("/object_info", get(info::object_info))
            .at("/object_info/:class", get(info::object_info_class))
            .at("/system_stats", get(info::system_stats))
            .at("/embeddings", get(info::embeddings))
            .at("/models", get(info::models))
            .at("/models/:folder", get(info::models_folder))
            .at("/features", get(info::features))
            .at("/extensions", get(info::extensions))
            .at("/ws", get(ws::socket))
    }
    base().nest("/api", base())
}

/// A JSON answer.
fn json_response(status: StatusCode, v: &Value) -> Response {
    Response::builder()
        .status(status)
        .content_type("application/json")
        .body(v.to_string())
}

/// 200 with an empty body (what ComfyUI answers to `/queue` edits and `/interrupt`).
fn empty_ok() -> Response {
    Response::builder().status(StatusCode::OK).finish()
}

/// ComfyUI's 400 for a prompt it refuses, with aihost's `code` beside ComfyUI's `type`:
/// `{"error": {"type", "code", "message", "details", "extra_info"}, "node_errors": {}}`.
fn prompt_error(kind: &str, code: &str, message: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        &json!({
            "error": {"type": kind, "code": code, "message": message, "details": "", "extra_info": {}},
            "node_errors": {}
        }),
    )
}

/// 503 `comfyui_not_loaded`.
fn not_loaded() -> Response {
    error_response(
        StatusCode::SERVICE_UNAVAILABLE,
        error_codes::COMFYUI_NOT_LOADED,
        "the comfyui plugin is not loaded (see GET /api/plugins and plugins.toml)",
    )
}

/// The answer of a store failure, in the API's error shape.
fn store_error(e: crate::store::StoreError) -> Response {
    poem::IntoResponse::into_response(super::error::ApiError::from(e))
}

/// Milliseconds since the epoch (ComfyUI's message `timestamp`).
fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// The gateway bookkeeping of a task (`input.gateway`), when it is a gateway prompt's task
/// read with its input.
fn meta(task: &crate::store::Task) -> Option<&serde_json::Map<String, Value>> {
    task.input.get("gateway").and_then(Value::as_object)
}

/// The prompt id of a task: from its idempotency key `comfy:{prompt_id}`, else the task id
/// (a `comfyui.workflow` task submitted through `/api/tasks`).
fn prompt_id_of(task: &crate::store::Task) -> String {
    task.idempotency_key
        .as_deref()
        .and_then(|k| k.strip_prefix(KEY_PREFIX))
        .map_or_else(|| task.id.to_string(), str::to_owned)
}

/// Whether a task was submitted through the gateway.
fn is_gateway_task(task: &crate::store::Task) -> bool {
    task.task_type == TASK_TYPE
        && task
            .idempotency_key
            .as_deref()
            .is_some_and(|k| k.starts_with(KEY_PREFIX))
}

/// The ComfyUI queue item of a task: `[number, prompt_id, prompt, extra_data,
/// outputs_to_execute]` (a task not submitted through the gateway shows its task id, its graph
/// when it has one, and its creation time in ms as its number).
fn queue_item(task: &crate::store::Task) -> Value {
    let m = meta(task);
    let number = m
        .and_then(|m| m.get("number").cloned())
        .unwrap_or_else(|| json!(task.created_at.timestamp_millis()));
    let graph = task
        .input
        .get("workflow")
        .filter(|w| w.is_object())
        .or_else(|| task.input.get("workflow_json"))
        .cloned()
        .unwrap_or_else(|| json!({}));
    let extra = m
        .and_then(|m| m.get("extra_data").cloned())
        .unwrap_or_else(|| json!({}));
    let outs = m
        .and_then(|m| m.get("outputs_to_execute").cloned())
        .unwrap_or_else(|| json!([]));
    json!([number, prompt_id_of(task), graph, extra, outs])
}

/// The last `queue_remaining` counted and when (see [`queue_remaining`]).
#[derive(Debug, Default)]
pub(crate) struct RemainingCache(tokio::sync::Mutex<Option<(std::time::Instant, u64)>>);

/// How long a counted `queue_remaining` is reused.
const REMAINING_TTL: std::time::Duration = std::time::Duration::from_millis(500);

/// The number of `comfyui.workflow` tasks PENDING or PROCESSING (ComfyUI's
/// `queue_remaining`), counted from the store's statistics at most once per 500 ms per process
/// (the count is a summary over every retained task; polling clients and every socket would
/// otherwise each run it).
async fn queue_remaining(state: &AppState) -> Result<u64, crate::store::StoreError> {
    let mut cached = state.comfy_remaining.0.lock().await;
    if let Some((at, n)) = *cached
        && at.elapsed() < REMAINING_TTL
    {
        return Ok(n);
    }
    let stats = state.store.stats().await?;
    let n = stats.by_type.get(TASK_TYPE).map_or(0, |by| {
        by.get("PENDING").copied().unwrap_or(0) + by.get("PROCESSING").copied().unwrap_or(0)
    });
    *cached = Some((std::time::Instant::now(), n));
    Ok(n)
}

/// The `status` message: `{"type": "status", "data": {"status": {"exec_info":
/// {"queue_remaining": N}}, "sid"?}}`.
fn status_message(remaining: u64, sid: Option<&str>) -> Value {
    let mut data = json!({"status": {"exec_info": {"queue_remaining": remaining}}});
    if let Some(sid) = sid {
        data["sid"] = json!(sid);
    }
    json!({"type": "status", "data": data})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_paths_and_tokens() {
        assert!(is_gateway_path("/comfy"));
        assert!(is_gateway_path("/comfy/api/prompt"));
        assert!(!is_gateway_path("/comfyui"));
        assert!(!is_gateway_path("/api/comfyui-interrupt"));
        assert!(is_upload_path("/comfy/api/upload/image"));
        assert_eq!(
            query_token("clientId=a&token=k%20y").as_deref(),
            Some("k y")
        );
        assert_eq!(query_token("clientId=a"), None);
    }
}
