//! The fake ComfyUI's WebSocket `/ws?clientId=ID`, as ComfyUI 0.3.64's `websocket_handler`:
//! `status` with the `sid` on connect, `executing` without a prompt id when the client's prompt
//! is running, `feature_flags` answered when it is the client's first message, other client
//! messages ignored. A second socket with the same id replaces the first, and when the first
//! closes the entry is removed even though the newer socket owns it (ComfyUI's bug, kept).
//! Separate because it is the one long-lived, stateful route.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use poem::{
    IntoResponse, handler,
    web::{
        Data, Query,
        websocket::{Message, WebSocket, WebSocketStream},
    },
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::state::{Inner, hex_id};

/// The server's answer to a client's `feature_flags`.
pub(crate) fn feature_flags() -> Value {
    json!({"supports_preview_metadata": true, "max_upload_size": 104857600})
}

/// `GET /ws`.
#[handler]
pub(crate) fn upgrade(
    ws: WebSocket,
    Query(q): Query<std::collections::HashMap<String, String>>,
    Data(inner): Data<&Arc<Inner>>,
) -> impl IntoResponse {
    let inner = inner.clone();
    let client = q.get("clientId").filter(|s| !s.is_empty()).cloned();
    ws.on_upgrade(move |socket| serve(inner, client, socket))
}

async fn serve(inner: Arc<Inner>, client: Option<String>, mut ws: WebSocketStream) {
    inner.ws_connections.fetch_add(1, Ordering::SeqCst);
    let conn = inner.next_conn.fetch_add(1, Ordering::SeqCst);
    let sid = client.unwrap_or_else(|| hex_id(conn));
    let (tx, mut rx) = mpsc::unbounded_channel::<Message>();
    {
        let mut st = inner.st();
        // A second socket with the same id replaces the first.
        st.sockets.insert(sid.clone(), (conn, tx.clone()));
        let _ = tx.send(Message::Text(
            json!({"type": "status", "data": {"status": {"exec_info": {"queue_remaining": st.remaining()}}, "sid": sid}})
                .to_string(),
        ));
        // Reconnecting while this client's prompt runs: `executing` without a prompt id.
        if let Some((q, node)) = &st.running
            && q.client_id() == Some(sid.as_str())
            && !node.is_empty()
        {
            let _ = tx.send(Message::Text(
                json!({"type": "executing", "data": {"node": node}}).to_string(),
            ));
        }
    }
    let mut first = true;
    loop {
        if inner.killed.load(Ordering::SeqCst) {
            return; // like a killed process: no close frame, no cleanup
        }
        if inner.stalled_upto.load(Ordering::SeqCst) >= conn {
            // A stalled socket: open, but nothing is sent or read (no pongs either).
            while rx.try_recv().is_ok() {}
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        }
        tokio::select! {
            out = rx.recv() => match out {
                Some(m) => if ws.send(m).await.is_err() { break },
                None => break,
            },
            inc = ws.next() => match inc {
                Some(Ok(Message::Text(t))) => {
                    if let Ok(v) = serde_json::from_str::<Value>(&t) {
                        if first && v["type"] == "feature_flags" {
                            if v["data"]["supports_preview_metadata"] == true {
                                inner.st().preview_metadata.insert(sid.clone());
                            }
                            let _ = tx.send(Message::Text(
                                json!({"type": "feature_flags", "data": feature_flags()}).to_string(),
                            ));
                        }
                        first = false;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break,
                Some(Ok(_)) => {}
            },
            // Notice a kill or a stall while idle.
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    // ComfyUI's bug, kept: the entry is removed by client id, even if a newer socket owns it.
    let mut st = inner.st();
    st.sockets.remove(&sid);
    st.preview_metadata.remove(&sid);
}
