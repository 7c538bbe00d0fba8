//! `GET /queue`, `POST /queue` (`delete`, `clear`) and `POST /interrupt`, over aihost's queue:
//! the PENDING and PROCESSING `comfyui.workflow` tasks, not one ComfyUI's queue.
//!
//! Removing a pending prompt or interrupting a running one cancels its task (CANCELLED, not
//! retried). Edits and interrupts touch only prompts submitted through the gateway.

use std::sync::Arc;

use poem::{Body, Response, handler, http::StatusCode, web::Data};
use serde_json::{Value, json};

use super::{AppState, KEY_PREFIX, TASK_TYPE, empty_ok, json_response, store_error};
use crate::store::{ListFilter, Status, StoreError, Task};

/// Most tasks listed per status.
const MAX_LISTED: usize = 1000;

/// The `comfyui.workflow` tasks in `status`, oldest first, with their inputs (up to
/// [`MAX_LISTED`]).
async fn tasks_in(state: &AppState, status: Status) -> Result<Vec<Task>, StoreError> {
    let mut out = Vec::new();
    let mut cursor = None;
    loop {
        let page = state
            .store
            .list(ListFilter {
                status: Some(status),
                task_type: Some(TASK_TYPE.to_owned()),
                limit: 200,
                cursor: cursor.take(),
                without_input: false,
                input_budget: Some(state.max_list_input_bytes),
            })
            .await?;
        out.extend(page.tasks);
        match page.next_cursor {
            Some(c) if out.len() < MAX_LISTED => cursor = Some(c),
            _ => break,
        }
    }
    out.reverse();
    Ok(out)
}

/// `GET /queue`: `{"queue_running": [item], "queue_pending": [item]}`, items
/// `[number, prompt_id, prompt, extra_data, outputs_to_execute]`, pending sorted by number.
#[handler]
pub(crate) async fn list(Data(state): Data<&Arc<AppState>>) -> Response {
    let running = match tasks_in(state, Status::Processing).await {
        Ok(t) => t,
        Err(e) => return store_error(e),
    };
    let pending = match tasks_in(state, Status::Pending).await {
        Ok(t) => t,
        Err(e) => return store_error(e),
    };
    let mut pending: Vec<Value> = pending.iter().map(super::queue_item).collect();
    pending.sort_by(|a, b| {
        a[0].as_f64()
            .unwrap_or(0.0)
            .total_cmp(&b[0].as_f64().unwrap_or(0.0))
    });
    let running: Vec<Value> = running.iter().map(super::queue_item).collect();
    json_response(
        StatusCode::OK,
        &json!({"queue_running": running, "queue_pending": pending}),
    )
}

/// Cancels the gateway task of `prompt_id` when it is in one of `states`.
async fn cancel_prompt(
    state: &AppState,
    prompt_id: &str,
    states: &[Status],
) -> Result<(), StoreError> {
    let key = format!("{KEY_PREFIX}{prompt_id}");
    if let Some(t) = state.store.get_by_idempotency_key(&key).await?
        && states.contains(&t.status)
    {
        cancel(state, &t).await?;
    }
    Ok(())
}

async fn cancel(state: &AppState, t: &Task) -> Result<(), StoreError> {
    if let crate::store::CancelOutcome::Cancelled(t) = state.store.cancel(t.id).await? {
        crate::metrics::task_cancelled(&t.task_type);
    }
    tracing::info!(task_id = %t.id, "ComfyUI gateway cancelled a prompt");
    Ok(())
}

/// Reads an optional JSON object body (`{}` when empty).
async fn object_body(body: Body) -> Result<Value, Response> {
    let bytes = body.into_vec().await.unwrap_or_default();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(v) if v.is_object() => Ok(v),
        _ => Err(crate::api::error::error_response(
            StatusCode::BAD_REQUEST,
            crate::error_codes::INVALID_BODY,
            "the body must be a JSON object",
        )),
    }
}

/// `POST /queue`: `{"delete": [prompt_id]}` cancels those pending prompts, `{"clear": true}`
/// every pending gateway prompt; the running ones go on (as in ComfyUI). 200, empty body.
#[handler]
pub(crate) async fn edit(body: Body, Data(state): Data<&Arc<AppState>>) -> Response {
    let body = match object_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    for id in body["delete"].as_array().into_iter().flatten() {
        if let Some(id) = id.as_str()
            && let Err(e) = cancel_prompt(state, id, &[Status::Pending]).await
        {
            return store_error(e);
        }
    }
    if body["clear"] == true {
        let pending = match tasks_in(state, Status::Pending).await {
            Ok(t) => t,
            Err(e) => return store_error(e),
        };
        for t in pending.iter().filter(|t| super::is_gateway_task(t)) {
            if let Err(e) = cancel(state, t).await {
                return store_error(e);
            }
        }
    }
    empty_ok()
}

/// `POST /interrupt`: `{"prompt_id"}` cancels that prompt if it is running; without one, every
/// running gateway prompt (a pool runs several at once). 200, empty body.
#[handler]
pub(crate) async fn interrupt(body: Body, Data(state): Data<&Arc<AppState>>) -> Response {
    let body = match object_body(body).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let result = match body["prompt_id"].as_str() {
        Some(id) => cancel_prompt(state, id, &[Status::Processing]).await,
        None => match tasks_in(state, Status::Processing).await {
            Ok(running) => {
                let mut r = Ok(());
                for t in running.iter().filter(|t| super::is_gateway_task(t)) {
                    if let Err(e) = cancel(state, t).await {
                        r = Err(e);
                        break;
                    }
                }
                r
            }
            Err(e) => Err(e),
        },
    };
    match result {
        Ok(()) => empty_ok(),
        Err(e) => store_error(e),
    }
}
