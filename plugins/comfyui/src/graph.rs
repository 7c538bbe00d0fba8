//! What an API-format graph is: its JSON Schema (checked by the host at submit, with the
//! `x-error-code`/`x-error-message` annotations that turn a failure into a 422
//! `invalid_workflow` naming the bad node) and the same check in code, run again before a
//! graph is queued (a host older than the annotations answers `invalid_input` at submit, or a
//! template's graph could be wrong).
//!
//! An API-format graph is an object of node id -> `{"class_type": "...", "inputs": {...}}`.
//! A workflow saved from ComfyUI's UI (`nodes` and `links` arrays) is not one, and is
//! refused with how to export the API format.

use aihost_plugin_api::sdk::{PluginError, Value, json};

use crate::error::{INVALID_WORKFLOW, fatal};

/// What a UI-format export is refused with: how to get the API format instead.
pub(crate) const UI_EXPORT_HINT: &str = "this is a workflow saved in ComfyUI's UI format (it has `nodes` and `links`), not the API format that ComfyUI queues: in ComfyUI's menu choose Workflow > Export (API) (\"Save (API Format)\" on older front-ends, shown once \"Enable Dev mode Options\" is on in the settings) and send that file";

const GRAPH_MESSAGE: &str = "must be an API-format ComfyUI graph: an object of node id -> {\"class_type\", \"inputs\"} (ComfyUI's Workflow > Export (API))";
const NODE_MESSAGE: &str = "this node must be an object with \"class_type\" (a node class name) and \"inputs\" (an object)";
const CLASS_MESSAGE: &str = "\"class_type\" must be a non-empty string naming a node class";
const INPUTS_MESSAGE: &str =
    "\"inputs\" must be an object of input name -> value or [node id, output index]";

/// The JSON Schema of an API-format graph.
pub(crate) fn schema() -> Value {
    json!({
        "type": "object",
        "minProperties": 1,
        "description": "An API-format ComfyUI graph (node id -> {class_type, inputs}), as ComfyUI's Workflow > Export (API) saves it.",
        "x-error-code": INVALID_WORKFLOW,
        "x-error-message": GRAPH_MESSAGE,
        "if": {"type": "object", "required": ["nodes", "links"], "properties": {"nodes": {"type": "array"}}},
        "then": {"not": {}, "x-error-message": UI_EXPORT_HINT},
        "else": {"additionalProperties": {
            "type": "object",
            "required": ["class_type", "inputs"],
            "x-error-message": NODE_MESSAGE,
            "properties": {
                "class_type": {"type": "string", "minLength": 1, "x-error-message": CLASS_MESSAGE},
                "inputs": {"type": "object", "x-error-message": INPUTS_MESSAGE}
            }
        }}
    })
}

/// The check of [`schema`] in code: `invalid_workflow` naming the first bad node.
pub(crate) fn check(graph: &Value) -> Result<(), PluginError> {
    let bad = |m: String| Err(fatal(INVALID_WORKFLOW, m));
    let Some(nodes) = graph.as_object().filter(|o| !o.is_empty()) else {
        return bad(format!("the graph {GRAPH_MESSAGE}"));
    };
    if nodes.contains_key("links") && nodes.get("nodes").is_some_and(Value::is_array) {
        return bad(UI_EXPORT_HINT.to_owned());
    }
    for (id, node) in nodes {
        let message = match node.as_object() {
            None => NODE_MESSAGE,
            Some(n) => match (n.get("class_type"), n.get("inputs")) {
                (Some(Value::String(c)), Some(Value::Object(_))) if !c.is_empty() => continue,
                (None, _) | (_, None) => NODE_MESSAGE,
                (Some(Value::String(c)), _) if !c.is_empty() => INPUTS_MESSAGE,
                _ => CLASS_MESSAGE,
            },
        };
        return bad(format!("node {id:?}: {message}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_graphs_pass_and_the_rest_name_what_is_wrong() {
        let ok = json!({"1": {"class_type": "EmptyImage", "inputs": {"width": 8}}});
        assert!(check(&ok).is_ok());
        let e = check(&json!({"prompt": "a cat"})).unwrap_err();
        assert_eq!(e.code.as_str(), INVALID_WORKFLOW);
        assert!(e.message.contains("node \"prompt\""), "{}", e.message);
        let ui = json!({"nodes": [{"id": 1}], "links": [], "version": 0.4});
        let e = check(&ui).unwrap_err();
        assert!(e.message.contains("Export (API)"), "{}", e.message);
        let e = check(&json!({"1": {"class_type": "X", "inputs": 3}})).unwrap_err();
        assert!(e.message.contains("\"inputs\" must be"), "{}", e.message);
        assert!(check(&json!({})).is_err());
    }
}
