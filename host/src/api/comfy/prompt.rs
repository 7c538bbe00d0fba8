//! `POST /prompt` (a prompt becomes a `comfyui.workflow` task) and `GET /prompt`.
//!
//! The prompt id (the client's, else a new UUID) is the task's idempotency key
//! `comfy:{prompt_id}`, so `GET /history/{prompt_id}` finds the task through the store's unique
//! key index, on any process. The same prompt id with the same graph answers the first
//! prompt again (a client's retry); with another graph it is refused (ComfyUI would replace
//! the earlier history entry; a durable queue does not rewrite a task).
//!
//! Files uploaded through `/upload/image` that the graph names (any string input, e.g.
//! LoadImage's `image`: `name.png`, `sub/name.png`, `name.png [input]`) become `media` entries
//! of the task, which the plugin uploads into whichever ComfyUI instance runs it.

use std::sync::Arc;

use poem::{Body, Response, handler, http::StatusCode, web::Data};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use super::{
    AppState, KEY_PREFIX, PLUGIN, TASK_TYPE, files::upload_key, json_response, not_loaded,
    prompt_error, store_error,
};
use crate::error_codes;
use crate::store::{NewTask, StoreError};

/// Longest prompt id accepted, in bytes (the key `comfy:{id}` stays within 255).
const MAX_PROMPT_ID_BYTES: usize = 200;
/// Most strings of a graph looked up as uploaded files.
const MAX_UPLOAD_LOOKUPS: usize = 64;

/// `GET /prompt`: `{"exec_info": {"queue_remaining": N}}`.
#[handler]
pub(crate) async fn status(Data(state): Data<&Arc<AppState>>) -> Response {
    match super::queue_remaining(state).await {
        Ok(n) => json_response(
            StatusCode::OK,
            &json!({"exec_info": {"queue_remaining": n}}),
        ),
        Err(e) => store_error(e),
    }
}

/// The nodes no other node takes an input from: the graph's outputs as far as the graph alone
/// tells (ComfyUI's `outputs_to_execute` lists its output nodes, which needs `object_info`).
pub(crate) fn sink_nodes(graph: &Map<String, Value>) -> Vec<String> {
    let mut used = std::collections::HashSet::new();
    for node in graph.values() {
        for v in node["inputs"]
            .as_object()
            .into_iter()
            .flat_map(|o| o.values())
        {
            if let Some(src) = v.as_array().and_then(|a| a.first()).and_then(Value::as_str) {
                used.insert(src.to_owned());
            }
        }
    }
    let mut out: Vec<String> = graph
        .keys()
        .filter(|k| !used.contains(*k))
        .cloned()
        .collect();
    out.sort_by_key(|k| (k.parse::<u64>().unwrap_or(u64::MAX), k.clone()));
    out
}

/// A string input that may name an uploaded file: `(type, subfolder, filename)` from
/// `sub/name.ext [type]`, or `None` for anything that does not look like a file name.
pub(crate) fn file_reference(value: &str) -> Option<(&'static str, String, String)> {
    if value.is_empty() || value.len() > 400 || value.contains(['\n', '\0']) {
        return None;
    }
    let (path, kind) = match value.rsplit_once(" [") {
        Some((p, "input]")) => (p, "input"),
        Some((p, "output]")) => (p, "output"),
        Some((p, "temp]")) => (p, "temp"),
        _ => (value, "input"),
    };
    let (sub, name) = match path.rsplit_once('/') {
        Some((s, n)) => (s, n),
        None => ("", path),
    };
    let ext = name.rsplit_once('.').map(|(_, e)| e)?;
    let plausible = (1..=5).contains(&ext.len()) && ext.bytes().all(|b| b.is_ascii_alphanumeric());
    plausible.then(|| (kind, sub.to_owned(), name.to_owned()))
}

/// `media` entries for the graph's string inputs that name a file uploaded through
/// `/upload/image` (looked up in storage by their derived key).
async fn uploaded_media(state: &AppState, graph: &Map<String, Value>) -> Vec<Value> {
    let mut media = Vec::new();
    let mut lookups = 0;
    for (node_id, node) in graph {
        for (input, v) in node["inputs"].as_object().into_iter().flatten() {
            let Some((kind, sub, name)) = v.as_str().and_then(file_reference) else {
                continue;
            };
            if lookups >= MAX_UPLOAD_LOOKUPS {
                return media;
            }
            lookups += 1;
            let Some(key) = upload_key(kind, &sub, &name) else {
                continue;
            };
            if state.storage.stat(&key).await.is_ok() {
                media.push(json!({"node": node_id, "input": input, "url": key}));
            }
        }
    }
    media
}

/// `POST /prompt`: `{"prompt", "client_id"?, "prompt_id"?, "extra_data"?, "number"?,
/// "front"?}` → `{"prompt_id", "number", "node_errors": {}}`.
#[handler]
pub(crate) async fn submit(body: Body, Data(state): Data<&Arc<AppState>>) -> Response {
    let bad = |m: &str| {
        prompt_error(
            error_codes::COMFY_INVALID_PROMPT,
            error_codes::COMFY_INVALID_PROMPT,
            m,
        )
    };
    let bytes = match body.into_vec().await {
        Ok(b) => b,
        Err(e) => return bad(&format!("cannot read the body: {e}")),
    };
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return bad(&format!("the body is not valid JSON: {e}")),
    };
    let Some(obj) = body.as_object() else {
        return bad("the body must be a JSON object with `prompt`");
    };
    let Some(graph) = obj.get("prompt").and_then(Value::as_object) else {
        return bad(
            "`prompt` must be an API-format graph: an object of node id -> {class_type, inputs}",
        );
    };
    if state.registry.plugin(PLUGIN).is_none() || state.registry.task_type(TASK_TYPE).is_none() {
        return not_loaded();
    }
    let prompt_id = match obj.get("prompt_id") {
        None | Some(Value::Null) => Uuid::new_v4().to_string(),
        Some(Value::String(s)) if !s.is_empty() && s.len() <= MAX_PROMPT_ID_BYTES => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        Some(_) => {
            return bad(&format!(
                "`prompt_id` must be a non-empty string of at most {MAX_PROMPT_ID_BYTES} bytes"
            ));
        }
    };
    let client_id = match obj.get("client_id") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return bad("`client_id` must be a string"),
    };
    let extra_data = match obj.get("extra_data") {
        None | Some(Value::Null) => json!({}),
        Some(v @ Value::Object(_)) => v.clone(),
        Some(_) => return bad("`extra_data` must be an object"),
    };
    let front = obj.get("front").and_then(Value::as_bool).unwrap_or(false);
    let number = match obj.get("number") {
        Some(n @ Value::Number(_)) => n.clone(),
        _ => {
            let n = super::now_ms();
            json!(if front { -n } else { n })
        }
    };
    let key = format!("{KEY_PREFIX}{prompt_id}");
    let graph_value = Value::Object(graph.clone());
    let same_prompt = |t: &crate::store::Task| {
        let number = super::meta(t)
            .and_then(|m| m.get("number").cloned())
            .unwrap_or(Value::Null);
        if t.input.get("workflow") == Some(&graph_value) {
            json_response(
                StatusCode::OK,
                &json!({"prompt_id": prompt_id, "number": number, "node_errors": {}}),
            )
        } else {
            prompt_error(
                "prompt_id_in_use",
                error_codes::COMFY_INVALID_PROMPT,
                &format!("prompt_id {prompt_id:?} is already used by another prompt; use a new id"),
            )
        }
    };
    match state.store.get_by_idempotency_key(&key).await {
        Ok(Some(t)) => return same_prompt(&t),
        Ok(None) => {}
        Err(e) => return store_error(e),
    }
    let media = uploaded_media(state, graph).await;
    let outputs = sink_nodes(graph);
    let mut input = json!({
        "workflow": graph_value,
        "gateway": {
            "client_id": client_id,
            "prompt_id": prompt_id,
            "number": number,
            "extra_data": extra_data,
            "outputs_to_execute": outputs,
        }
    });
    if !media.is_empty() {
        input["media"] = json!(media);
    }
    if let Err(e) = crate::api::tasks::validate_input(state, TASK_TYPE, &input) {
        let resp = poem::IntoResponse::into_response(e);
        let text = resp.into_body().into_string().await.unwrap_or_default();
        let v: Value = serde_json::from_str(&text).unwrap_or_default();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or(error_codes::INVALID_INPUT);
        let message = v["error"]["message"]
            .as_str()
            .unwrap_or("the prompt is not valid");
        return prompt_error(error_codes::COMFY_INVALID_PROMPT, code, message);
    }
    if state.max_pending > 0 {
        match state.store.pending_by_type().await {
            Ok(by) if by.values().sum::<u64>() >= state.max_pending => {
                return crate::api::error::error_response(
                    StatusCode::TOO_MANY_REQUESTS,
                    error_codes::QUEUE_FULL,
                    &format!(
                        "the queue holds the most pending tasks allowed ({})",
                        state.max_pending
                    ),
                );
            }
            Ok(_) => {}
            Err(e) => return store_error(e),
        }
    }
    let max_attempts = state.default_max_attempts.clamp(1, 100);
    let priority = i32::from(front);
    let hash =
        crate::api::tasks::request_hash(TASK_TYPE, &input, priority, max_attempts, None, None);
    let inserted = state
        .store
        .insert(NewTask {
            id: Uuid::now_v7(),
            task_type: TASK_TYPE.to_owned(),
            input,
            priority,
            max_attempts,
            idempotency_key: Some(key.clone()),
            webhook_url: None,
            trace_parent: crate::telemetry::current_traceparent(),
            timeout_secs: None,
            request_hash: Some(hash),
            webhook_events: None,
        })
        .await;
    match inserted {
        Ok((task, true)) => {
            crate::metrics::task_submitted(TASK_TYPE);
            tracing::info!(task_id = %task.id, "ComfyUI gateway prompt queued");
            json_response(
                StatusCode::OK,
                &json!({"prompt_id": prompt_id, "number": number, "node_errors": {}}),
            )
        }
        // A concurrent post of the same prompt id won the race.
        Ok((task, false)) => same_prompt(&task),
        Err(StoreError::IdempotencyConflict { .. }) => {
            match state.store.get_by_idempotency_key(&key).await {
                Ok(Some(t)) => same_prompt(&t),
                Ok(None) => bad("the prompt id was taken and freed meanwhile; post again"),
                Err(e) => store_error(e),
            }
        }
        Err(e) => store_error(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sinks_are_the_nodes_nothing_reads() {
        let g = json!({
            "1": {"class_type": "EmptyImage", "inputs": {"width": 8}},
            "2": {"class_type": "ImageInvert", "inputs": {"image": ["1", 0]}},
            "10": {"class_type": "SaveImage", "inputs": {"images": ["2", 0]}},
            "3": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}}
        });
        assert_eq!(sink_nodes(g.as_object().unwrap()), ["3", "10"]);
    }

    #[test]
    fn file_references_are_names_with_an_extension() {
        assert_eq!(
            file_reference("caps/up.png"),
            Some(("input", "caps".into(), "up.png".into()))
        );
        assert_eq!(
            file_reference("x.webp [output]"),
            Some(("output", String::new(), "x.webp".into()))
        );
        for no in ["a red fox.", "euler", "", "v1.5 model", "x.png\nmore"] {
            assert_eq!(file_reference(no), None, "{no:?}");
        }
    }
}
