//! `GET /ws?clientId=ID`: ComfyUI's WebSocket messages, from aihost's task events (which
//! cross processes on both stores), for the prompts posted with that `client_id`.
//!
//! On connect: `status` with `sid` (the clientId, or 32 hex digits when none is given). Then,
//! for each of the client's prompts:
//!
//! - attempt started: `execution_start`, `execution_cached` (`nodes: []`);
//! - progress: `progress` `{value, max: 100, prompt_id, node: null}` with the task's percent
//!   (aihost has no per-node progress: an approximation);
//! - completed: for each output node, `executing` `{node}` then `executed` `{node, output}`
//!   (the outputs as `/history` lists them, served by `/view`), then `execution_success`,
//!   `status`, and `executing` `{node: null}`;
//! - failed: `execution_error` (`exception_type` is aihost's error code, `exception_message`
//!   its message, `node_id` null), `status`, `executing` `{node: null}`;
//! - cancelled (interrupt, queue delete, `POST /api/tasks/{id}/cancel`):
//!   `execution_interrupted`, `status`, `executing` `{node: null}`.
//!
//! A failed attempt that is retried sends nothing; the next attempt starts with
//! `execution_start` again. `status` (`queue_remaining`: PENDING and PROCESSING
//! `comfyui.workflow` tasks) is broadcast when the queue changes, at most twice a second. No
//! per-node `executing`, `progress_state` or preview frames are sent while a prompt runs. A
//! client's first message `{"type": "feature_flags"}` is answered with the gateway's.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures_util::{SinkExt, StreamExt};
use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{
        Data, Query,
        websocket::{Message, WebSocket, WebSocketStream},
    },
};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{AppState, TASK_TYPE, history, now_ms, status_message};
use crate::store::{EventKind, Status, TaskEvent};

/// The query of `/ws`.
#[derive(Debug, Deserialize)]
pub(crate) struct WsQuery {
    #[serde(rename = "clientId")]
    client_id: Option<String>,
}

/// `GET /ws?clientId=`.
#[handler]
pub(crate) async fn socket(
    Query(q): Query<WsQuery>,
    ws: WebSocket,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return crate::api::error::error_response(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error_codes::TOO_MANY_STREAMS,
            "the most SSE and WebSocket subscribers this process serves (server.max_streams) are open; retry later",
        );
    };
    let sid = q
        .client_id
        .filter(|c| !c.is_empty())
        .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
    // Subscribed before the upgrade: nothing published from now on is missed.
    let rx = std::sync::Mutex::new(state.store.subscribe());
    let state = state.clone();
    ws.on_upgrade(move |upgraded| async move {
        let _permit = permit;
        let _open = crate::metrics::StreamGuard::open("ws");
        let rx = rx.into_inner().unwrap_or_else(|p| p.into_inner());
        serve(&state, &sid, rx, upgraded).await;
    })
    .into_response()
}

fn msg(kind: &str, data: Value) -> Value {
    json!({"type": kind, "data": data})
}

/// The messages of one event of a tracked prompt (`status` and the final `executing` are added
/// by the caller for terminal events).
fn messages(ev: &TaskEvent, prompt_id: &str) -> Vec<Value> {
    let ts = now_ms();
    match ev.kind {
        EventKind::Started => vec![
            msg(
                "execution_start",
                json!({"prompt_id": prompt_id, "timestamp": ts}),
            ),
            msg(
                "execution_cached",
                json!({"nodes": [], "prompt_id": prompt_id, "timestamp": ts}),
            ),
        ],
        EventKind::Progress if ev.task.status == Status::Processing => {
            let value = whole_percent(ev.task.progress.as_ref().map_or(0.0, |p| p.percent));
            vec![msg(
                "progress",
                json!({"value": value, "max": 100, "prompt_id": prompt_id, "node": null}),
            )]
        }
        EventKind::Completed | EventKind::Failed | EventKind::Cancelled
            if ev.task.status.is_terminal() =>
        {
            let mut out = Vec::new();
            if ev.task.status == Status::Completed {
                for (node, output) in history::outputs(ev.task.result.as_ref()) {
                    out.push(msg(
                        "executing",
                        json!({"node": node, "display_node": node, "prompt_id": prompt_id}),
                    ));
                    out.push(msg(
                        "executed",
                        json!({"node": node, "display_node": node, "output": output, "prompt_id": prompt_id}),
                    ));
                }
            }
            let (kind, mut data) = history::end_message(&ev.task);
            data["prompt_id"] = json!(prompt_id);
            data["timestamp"] = json!(ts);
            out.push(msg(kind, data));
            out
        }
        _ => Vec::new(),
    }
}

/// A percent as a whole number from 0 to 100.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "clamped to 0..=100 and rounded first"
)]
fn whole_percent(p: f32) -> u64 {
    if p.is_nan() {
        0
    } else {
        p.clamp(0.0, 100.0).round() as u64
    }
}

/// Whether an event changes `queue_remaining`.
fn changes_queue(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Created
            | EventKind::Started
            | EventKind::Retrying
            | EventKind::Completed
            | EventKind::Failed
            | EventKind::Cancelled
    )
}

async fn serve(
    state: &AppState,
    sid: &str,
    mut rx: broadcast::Receiver<TaskEvent>,
    upgraded: WebSocketStream,
) {
    let (mut sink, mut incoming) = upgraded.split();
    macro_rules! send {
        ($v:expr) => {
            if sink.send(Message::Text($v.to_string())).await.is_err() {
                return;
            }
        };
    }
    let remaining = super::queue_remaining(state).await.unwrap_or(0);
    send!(status_message(remaining, Some(sid)));
    // Task id -> the prompt id when the task is this client's prompt, else None.
    let mut tracked: HashMap<Uuid, Option<String>> = HashMap::new();
    let mut status_due = false;
    let mut first_message = true;
    let mut status_tick = tokio::time::interval(Duration::from_millis(500));
    let mut ping = tokio::time::interval(Duration::from_secs(30));
    loop {
        tokio::select! {
            ev = rx.recv() => match ev {
                Ok(ev) if ev.task.task_type == TASK_TYPE => {
                    status_due |= changes_queue(ev.kind);
                    if !super::is_gateway_task(&ev.task) {
                        continue;
                    }
                    let id = ev.task.id;
                    let prompt_id = match tracked.get(&id) {
                        Some(p) => p.clone(),
                        None => {
                            let p = match state.store.get(id).await {
                                Ok(Some(t)) => super::meta(&t)
                                    .filter(|m| m.get("client_id").and_then(Value::as_str) == Some(sid))
                                    .map(|_| super::prompt_id_of(&t)),
                                _ => None,
                            };
                            tracked.insert(id, p.clone());
                            p
                        }
                    };
                    let terminal = ev.task.status.is_terminal()
                        && matches!(ev.kind, EventKind::Completed | EventKind::Failed | EventKind::Cancelled);
                    if terminal {
                        tracked.remove(&id);
                    }
                    let Some(prompt_id) = prompt_id else { continue };
                    for m in messages(&ev, &prompt_id) {
                        send!(m);
                    }
                    if terminal {
                        let remaining = super::queue_remaining(state).await.unwrap_or(0);
                        send!(status_message(remaining, None));
                        send!(msg("executing", json!({"node": null, "prompt_id": prompt_id})));
                    } else if ev.kind == EventKind::Started {
                        let remaining = super::queue_remaining(state).await.unwrap_or(0);
                        send!(status_message(remaining, None));
                        status_due = false;
                    }
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(missed = n, "ComfyUI gateway socket fell behind: closing it");
                    break;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
            m = incoming.next() => match m {
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(Message::Text(t))) => {
                    let is_flags = first_message
                        && serde_json::from_str::<Value>(&t).is_ok_and(|v| v["type"] == "feature_flags");
                    first_message = false;
                    if is_flags {
                        send!(msg("feature_flags", json!({"supports_preview_metadata": false, "max_upload_size": state.max_upload_bytes})));
                    }
                }
                _ => {}
            },
            _ = status_tick.tick(), if status_due => {
                status_due = false;
                let remaining = super::queue_remaining(state).await.unwrap_or(0);
                send!(status_message(remaining, None));
            }
            _ = ping.tick() => {
                if sink.send(Message::Ping(Vec::new())).await.is_err() {
                    return;
                }
            }
        }
    }
    let _ = sink.send(Message::Close(None)).await;
}
