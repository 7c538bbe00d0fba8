//! The fake ComfyUI's queue routes, as ComfyUI 0.3.64's `server.py`: `POST /prompt` (the
//! counter, `front`, a client's `number` and `prompt_id`, validation), `GET /prompt`,
//! `GET|POST /queue`, `POST /interrupt`, `GET|POST /history[/{id}]`, `POST /free`. A body
//! that is not JSON (or of a shape Python trips over) is aiohttp's plain 500. Separate from
//! `server.rs`, which holds the file and info routes and the server itself.

use std::{collections::HashMap, sync::Arc};

use bytes::Bytes;
use poem::{
    IntoResponse, Response, handler,
    http::StatusCode,
    web::{Data, Json, Path, Query},
};
use serde_json::{Map, Value, json};

use super::{
    server::{empty, json_status, plain_500},
    state::{Inner, QItem, truthy, uuid},
    validate::{Crash, Verdict, py_str, validate_prompt},
};

/// The body as JSON, or `Crash` (aiohttp's `request.json()` raising).
fn body_json(body: &Bytes) -> Result<Value, Crash> {
    serde_json::from_slice(body).map_err(|_| Crash)
}

fn or_500(r: Result<Response, Crash>) -> Response {
    r.unwrap_or_else(|Crash| plain_500())
}

#[handler]
pub(crate) fn get_prompt(Data(inner): Data<&Arc<Inner>>) -> Json<Value> {
    let q = inner.st().remaining();
    Json(json!({"exec_info": {"queue_remaining": q}}))
}

#[handler]
pub(crate) fn post_prompt(body: Bytes, Data(inner): Data<&Arc<Inner>>) -> Response {
    or_500(body_json(&body).and_then(|b| queue_prompt(inner, &b)))
}

fn no_prompt() -> Response {
    json_status(
        StatusCode::BAD_REQUEST,
        json!({"error": {"type": "no_prompt", "message": "No prompt provided",
                         "details": "No prompt provided", "extra_info": {}},
               "node_errors": {}}),
    )
}

/// Python's `float()` of a client's `number`.
fn py_float(v: &Value) -> Result<f64, Crash> {
    match v {
        Value::Number(n) => n.as_f64().ok_or(Crash),
        Value::Bool(b) => Ok(if *b { 1.0 } else { 0.0 }),
        Value::String(s) => s.trim().parse::<f64>().map_err(|_| Crash),
        _ => Err(Crash),
    }
}

fn queue_prompt(inner: &Inner, body: &Value) -> Result<Response, Crash> {
    let Value::Object(req) = body else {
        // `"number" in body` is a membership test on a list or string, a TypeError otherwise.
        return match body {
            Value::Array(_) | Value::String(_) => {
                inner.st().counter += 1;
                Ok(no_prompt())
            }
            _ => Err(Crash),
        };
    };
    // A client's number is used as given (as a float) and leaves the counter alone.
    let number = match req.get("number") {
        Some(n) => json!(py_float(n)?),
        None => {
            let mut st = inner.st();
            let n = st.counter;
            st.counter += 1;
            json!(if req.get("front").is_some_and(truthy) {
                -n
            } else {
                n
            })
        }
    };
    let Some(prompt) = req.get("prompt") else {
        return Ok(no_prompt());
    };
    let prompt_id = match req.get("prompt_id") {
        Some(v) => py_str(v),
        None => uuid(inner.next_conn.load(std::sync::atomic::Ordering::SeqCst)),
    };
    let verdict = validate_prompt(
        prompt,
        req.get("partial_execution_targets"),
        &inner.dir.join("input"),
        &inner.model_list("checkpoints"),
    )?;
    let mut extra = req.get("extra_data").cloned().unwrap_or_else(|| json!({}));
    if let Some(c) = req.get("client_id") {
        let Some(obj) = extra.as_object_mut() else {
            return Err(Crash);
        };
        obj.insert("client_id".into(), c.clone());
    }
    match verdict {
        Verdict::Rejected(body) => Ok(json_status(StatusCode::BAD_REQUEST, body)),
        Verdict::Queued {
            prompt,
            outputs,
            node_errors,
        } => {
            let mut st = inner.st();
            st.pending.push(QItem {
                number: number.clone(),
                id: prompt_id.clone(),
                prompt,
                extra,
                outputs,
            });
            let held = st.remaining();
            st.max_remaining = st.max_remaining.max(held);
            st.broadcast_status();
            drop(st);
            inner.wake.notify_waiters();
            Ok(
                Json(json!({"prompt_id": prompt_id, "number": number, "node_errors": node_errors}))
                    .into_response(),
            )
        }
    }
}

/// `GET /queue`. ComfyUI answers pending items in heap order; the fake answers them in
/// reverse arrival order, so a client that does not sort by number notices.
#[handler]
pub(crate) fn get_queue(Data(inner): Data<&Arc<Inner>>) -> Json<Value> {
    let st = inner.st();
    let running: Vec<Value> = st.running.iter().map(|(q, _)| q.json()).collect();
    let pending: Vec<Value> = st.pending.iter().rev().map(QItem::json).collect();
    Json(json!({"queue_running": running, "queue_pending": pending}))
}

/// `POST /queue {"clear": true}` (pending only) and `{"delete": [ids]}`; one `status` per
/// change, as ComfyUI's `queue_updated`.
#[handler]
pub(crate) fn post_queue(body: Bytes, Data(inner): Data<&Arc<Inner>>) -> Response {
    or_500(body_json(&body).and_then(|b| {
        let Value::Object(req) = b else {
            return Ok(empty(StatusCode::OK));
        };
        let mut st = inner.st();
        if req.get("clear").is_some_and(truthy) {
            st.pending.clear();
            st.broadcast_status();
        }
        match req.get("delete") {
            None | Some(Value::String(_)) => {}
            Some(Value::Array(ids)) => {
                for id in ids {
                    if let Some(i) = st.pending.iter().position(|q| id == &json!(q.id)) {
                        st.pending.remove(i);
                        st.broadcast_status();
                    }
                }
            }
            Some(_) => return Err(Crash),
        }
        Ok(empty(StatusCode::OK))
    }))
}

/// `POST /interrupt [{"prompt_id"}]`: a prompt id that is not running is ignored; no id (or
/// no body) interrupts whatever runs. Effective at the next node boundary.
#[handler]
pub(crate) fn interrupt(body: Bytes, Data(inner): Data<&Arc<Inner>>) -> Response {
    let req = serde_json::from_slice::<Value>(&body).unwrap_or_else(|_| json!({}));
    let Value::Object(req) = req else {
        return plain_500();
    };
    let mut st = inner.st();
    match req.get("prompt_id").filter(|p| truthy(p)) {
        Some(target) => {
            if st
                .running
                .as_ref()
                .is_some_and(|(q, _)| target == &json!(q.id))
            {
                st.interrupt = true;
            }
        }
        None => st.interrupt = true,
    }
    drop(st);
    inner.wake.notify_waiters();
    empty(StatusCode::OK)
}

/// `GET /history[?max_items=&offset=]`: insertion order; `max_items` alone gives the last ones.
#[handler]
pub(crate) fn get_history(
    Query(q): Query<HashMap<String, String>>,
    Data(inner): Data<&Arc<Inner>>,
) -> Response {
    let parse = |k: &str| q.get(k).map(|v| v.trim().parse::<i64>().map_err(|_| Crash));
    let (max_items, offset) = match (parse("max_items").transpose(), parse("offset").transpose()) {
        (Ok(m), Ok(o)) => (m, o.unwrap_or(-1)),
        _ => return plain_500(),
    };
    let st = inner.st();
    let mut offset = offset;
    if offset < 0
        && let Some(m) = max_items
    {
        offset = st.history.len() as i64 - m;
    }
    let mut out = Map::new();
    for (i, (k, v)) in st.history.iter().enumerate() {
        if i as i64 >= offset {
            out.insert(k.clone(), v.clone());
            if max_items.is_some_and(|m| out.len() as i64 >= m) {
                break;
            }
        }
    }
    Json(Value::Object(out)).into_response()
}

/// `GET /history/{id}`: `{id: entry}`, or `{}` for an unknown id.
#[handler]
pub(crate) fn history_one(Path(id): Path<String>, Data(inner): Data<&Arc<Inner>>) -> Json<Value> {
    let st = inner.st();
    let mut out = Map::new();
    if let Some(e) = st.history_entry(&id) {
        out.insert(id, e.clone());
    }
    Json(Value::Object(out))
}

/// `POST /history {"clear": true}` and `{"delete": [ids]}`.
#[handler]
pub(crate) fn post_history(body: Bytes, Data(inner): Data<&Arc<Inner>>) -> Response {
    or_500(body_json(&body).map(|b| {
        let mut st = inner.st();
        if b.get("clear").is_some_and(truthy) {
            st.history.clear();
        }
        for id in b["delete"].as_array().into_iter().flatten() {
            st.history.retain(|(k, _)| id != &json!(k));
        }
        empty(StatusCode::OK)
    }))
}

/// `POST /free {"unload_models", "free_memory"}`: freeing memory also drops the cache.
#[handler]
pub(crate) fn free(body: Bytes, Data(inner): Data<&Arc<Inner>>) -> Response {
    or_500(body_json(&body).map(|b| {
        if b.get("free_memory").is_some_and(truthy) {
            inner.st().cache.clear();
        }
        empty(StatusCode::OK)
    }))
}
