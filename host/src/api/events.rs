//! Live task events for SSE (`/api/tasks/{id}/events`) and WebSocket (`/api/tasks/{id}/ws`).
//!
//! Both carry the same JSON: the task's current state first, then every change, ending after
//! the terminal state.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt, stream::BoxStream};
use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{
        Data, Path,
        websocket::{Message, WebSocket},
    },
};
use serde_json::Value;
use tokio::sync::broadcast;
use uuid::Uuid;

use super::{AppState, error::ApiError, ids::parse_id};
use crate::store::{EventKind, Status, TaskEvent};
use crate::task_view::event_json;

fn snapshot_kind(s: Status) -> EventKind {
    match s {
        Status::Pending => EventKind::Created,
        Status::Processing => EventKind::Started,
        Status::Completed => EventKind::Completed,
        Status::Failed => EventKind::Failed,
        Status::Cancelled => EventKind::Cancelled,
    }
}

/// Subscribes first, then reads the task, so no change between the two is missed. The stream
/// holds one of `server.max_streams` permits (503 `too_many_streams` when none is left) and
/// ends early when the subscriber falls so far behind that the event channel dropped events
/// for it: it is not resynchronised from the store (that would read the task's input once
/// per lagging subscriber); the client reconnects.
pub(crate) async fn follow(
    state: &AppState,
    id: Uuid,
) -> Result<BoxStream<'static, Value>, ApiError> {
    let Ok(permit) = state.streams.clone().try_acquire_owned() else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            crate::error_codes::TOO_MANY_STREAMS,
            "the most SSE and WebSocket subscribers this process serves (server.max_streams) are open; retry later",
        ));
    };
    let rx = state.store.subscribe();
    let Some(task) = state.store.get(id).await? else {
        return Err(ApiError::not_found(
            crate::error_codes::TASK_NOT_FOUND,
            format!("no task {id}"),
        ));
    };
    let first = TaskEvent::of_owned(snapshot_kind(task.status), task);
    let done = first.task.status.is_terminal();
    let start = futures_util::stream::iter([event_json(&first)]);
    drop(first);
    let keep = move |v| {
        let _ = &permit;
        v
    };
    if done {
        return Ok(start.map(keep).boxed());
    }
    let rest = futures_util::stream::unfold(Some(rx), move |rx| async move {
        let mut rx = rx?;
        loop {
            match rx.recv().await {
                Ok(ev) if ev.task.id == id => {
                    let terminal = ev.task.status.is_terminal()
                        && !matches!(ev.kind, EventKind::Progress | EventKind::Preview);
                    let next = if terminal { None } else { Some(rx) };
                    return Some((event_json(&ev), next));
                }
                Ok(_) => {}
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::debug!(task_id = %id, missed = n, "event subscriber fell behind: ending its stream");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(start.chain(rest).map(keep).boxed())
}

/// `GET /api/tasks/{task_id}/ws`: the task's events as WebSocket text messages; the server
/// closes the socket after the terminal state.
#[handler]
pub(crate) async fn task_ws(
    Path(task_id): Path<String>,
    ws: WebSocket,
    Data(state): Data<&std::sync::Arc<AppState>>,
) -> Response {
    let id = match parse_id(&task_id) {
        Ok(id) => id,
        Err(e) => return poem::Error::from(e).into_response(),
    };
    let events = match follow(state, id).await {
        Ok(s) => std::sync::Mutex::new(s),
        Err(e) => return poem::Error::from(e).into_response(),
    };
    ws.on_upgrade(move |socket| async move {
        let _open = crate::metrics::StreamGuard::open("ws");
        let mut events = events.into_inner().unwrap_or_else(|p| p.into_inner());
        let (mut sink, mut incoming) = socket.split();
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(v) => {
                        if sink.send(Message::Text(v.to_string())).await.is_err() {
                            return;
                        }
                    }
                    None => break,
                },
                msg = incoming.next() => match msg {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    _ => {}
                },
                _ = tokio::time::sleep(Duration::from_secs(30)) => {
                    if sink.send(Message::Ping(Vec::new())).await.is_err() {
                        return;
                    }
                }
            }
        }
        let _ = sink.send(Message::Close(None)).await;
    })
    .into_response()
}
