//! `GET /history` and `GET /history/{prompt_id}`: ComfyUI's history entries, built from the
//! finished tasks of gateway prompts.
//!
//! An entry is `{"prompt": [number, prompt_id, graph, extra_data, outputs_to_execute],
//! "outputs": {node: {"images": [{"filename", "subfolder", "type"}]}}, "status": {"status_str",
//! "completed", "messages"}, "meta": {node: {...}}}`. The files are the task's stored outputs:
//! `subfolder` is the folder of the stored object (`outputs/{task}/{attempt}/...`) and
//! `filename` its name, which is what `/view` serves; the output key (`images`, `gifs`, ...) is
//! the one ComfyUI listed the file under. `messages` are synthesized from the task
//! (`execution_start`, `execution_cached`, then `execution_success`, `execution_error` or
//! `execution_interrupted`), with the task's times.

use std::sync::Arc;

use poem::{
    Request, Response, handler,
    http::StatusCode,
    web::{Data, Path},
};
use serde_json::{Map, Value, json};

use super::{AppState, KEY_PREFIX, TASK_TYPE, json_response, store_error};
use crate::store::{ListFilter, Status, Task};

/// Default and largest `max_items`.
const DEFAULT_ITEMS: usize = 200;
const MAX_ITEMS: usize = 1000;
/// Most tasks looked at for one `GET /history` (gateway prompts among other tasks).
const MAX_SCANNED: usize = 5000;

/// The outputs of a finished task by node: `{node: {output_key: [{filename, subfolder,
/// type}]}}` from `result.files` (paired with `result.outputs` by position), plus text outputs
/// (`result.text`) as `{"text": [...]}`.
pub(crate) fn outputs(result: Option<&Value>) -> Map<String, Value> {
    let mut by_node: Map<String, Value> = Map::new();
    let Some(result) = result else {
        return by_node;
    };
    let stored = result["outputs"].as_array().cloned().unwrap_or_default();
    for (i, f) in result["files"].as_array().into_iter().flatten().enumerate() {
        let Some(node) = f["node"].as_str() else {
            continue;
        };
        let Some(key) = stored.get(i).and_then(|o| o["key"].as_str()) else {
            continue;
        };
        let (subfolder, filename) = key.rsplit_once('/').unwrap_or(("", key));
        let kind = f["output"].as_str().unwrap_or("images");
        let entry = by_node.entry(node.to_owned()).or_insert_with(|| json!({}));
        let items = entry
            .as_object_mut()
            .expect("object")
            .entry(kind.to_owned())
            .or_insert_with(|| json!([]));
        if let Some(a) = items.as_array_mut() {
            a.push(json!({
                "filename": filename,
                "subfolder": subfolder,
                "type": f["type"].as_str().unwrap_or("output"),
            }));
        }
    }
    for (node, texts) in result["text"].as_object().into_iter().flatten() {
        let entry = by_node.entry(node.clone()).or_insert_with(|| json!({}));
        entry["text"] = texts.clone();
    }
    by_node
}

/// The terminal message of a finished task and its data (without `prompt_id` and
/// `timestamp`): `execution_success`, `execution_interrupted` or `execution_error`.
pub(crate) fn end_message(task: &Task) -> (&'static str, Value) {
    match task.status {
        Status::Completed => ("execution_success", json!({})),
        Status::Cancelled => (
            "execution_interrupted",
            json!({"node_id": null, "node_type": null, "executed": []}),
        ),
        _ => {
            let (code, message) = task
                .error
                .as_ref()
                .map_or(("error", "the task failed"), |e| {
                    (e.code.as_str(), e.message.as_str())
                });
            (
                "execution_error",
                json!({"node_id": null, "node_type": null, "executed": [],
                    "exception_message": message, "exception_type": code,
                    "traceback": [], "current_inputs": {}, "current_outputs": {}}),
            )
        }
    }
}

/// The history entry of a finished task read with its input, or `None` while it runs.
pub(crate) fn entry(task: &Task) -> Option<Value> {
    if !task.status.is_terminal() {
        return None;
    }
    let prompt_id = super::prompt_id_of(task);
    let ms =
        |t: Option<chrono::DateTime<chrono::Utc>>| t.unwrap_or(task.created_at).timestamp_millis();
    let started = ms(task.started_at);
    let finished = ms(task.finished_at);
    let mut messages = vec![
        json!(["execution_start", {"prompt_id": prompt_id, "timestamp": started}]),
        json!(["execution_cached", {"nodes": [], "prompt_id": prompt_id, "timestamp": started}]),
    ];
    let (kind, mut data) = end_message(task);
    data["prompt_id"] = json!(prompt_id);
    data["timestamp"] = json!(finished);
    messages.push(json!([kind, data]));
    let outputs = outputs(task.result.as_ref());
    let meta: Map<String, Value> = outputs
        .keys()
        .map(|n| {
            (
                n.clone(),
                json!({"node_id": n, "display_node": n, "parent_node": null, "real_node_id": n}),
            )
        })
        .collect();
    let completed = task.status == Status::Completed;
    Some(json!({
        "prompt": super::queue_item(task),
        "outputs": outputs,
        "status": {
            "status_str": if completed { "success" } else { "error" },
            "completed": completed,
            "messages": messages,
        },
        "meta": meta,
    }))
}

/// `GET /history/{prompt_id}`: `{prompt_id: entry}`, or `{}` when unknown or not finished.
#[handler]
pub(crate) async fn one(
    Path(prompt_id): Path<String>,
    Data(state): Data<&Arc<AppState>>,
) -> Response {
    let key = format!("{KEY_PREFIX}{prompt_id}");
    match state.store.get_by_idempotency_key(&key).await {
        Ok(task) => {
            let mut out = Map::new();
            if let Some(e) = task.as_ref().and_then(entry) {
                out.insert(prompt_id, e);
            }
            json_response(StatusCode::OK, &Value::Object(out))
        }
        Err(e) => store_error(e),
    }
}

/// `GET /history?max_items=N`: the latest N finished gateway prompts (default 200, at most
/// 1000), keyed by prompt id (the object's keys come sorted, not in run order).
#[handler]
pub(crate) async fn list(req: &Request, Data(state): Data<&Arc<AppState>>) -> Response {
    let max = req
        .uri()
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|p| p.strip_prefix("max_items="))
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(DEFAULT_ITEMS)
        .min(MAX_ITEMS);
    let mut found: Vec<(String, Value)> = Vec::new();
    let mut cursor = None;
    let mut scanned = 0;
    while found.len() < max && scanned < MAX_SCANNED {
        let page = match state
            .store
            .list(ListFilter {
                task_type: Some(TASK_TYPE.to_owned()),
                limit: 100,
                cursor: cursor.take(),
                without_input: false,
                input_budget: Some(state.max_list_input_bytes),
                ..ListFilter::default()
            })
            .await
        {
            Ok(p) => p,
            Err(e) => return store_error(e),
        };
        scanned += page.tasks.len();
        for t in page.tasks.iter().filter(|t| super::is_gateway_task(t)) {
            if found.len() >= max {
                break;
            }
            if let Some(e) = entry(t) {
                found.push((super::prompt_id_of(t), e));
            }
        }
        match page.next_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    let out: Map<String, Value> = found.into_iter().collect();
    json_response(StatusCode::OK, &Value::Object(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outputs_pair_files_with_their_stored_objects() {
        let result = json!({
            "outputs": [
                {"key": "outputs/t/1/ComfyUI_00001_.png"},
                {"key": "outputs/t/1/clips/clip_00001_.webm"}
            ],
            "files": [
                {"node": "9", "output": "images", "type": "output", "filename": "ComfyUI_00001_.png", "subfolder": ""},
                {"node": "12", "output": "gifs", "type": "output", "filename": "clip_00001_.webm", "subfolder": "clips"}
            ],
            "text": {"5": ["hello"]}
        });
        let o = outputs(Some(&result));
        assert_eq!(
            o["9"]["images"],
            json!([{"filename": "ComfyUI_00001_.png", "subfolder": "outputs/t/1", "type": "output"}])
        );
        assert_eq!(o["12"]["gifs"][0]["subfolder"], "outputs/t/1/clips");
        assert_eq!(o["5"]["text"], json!(["hello"]));
    }
}
