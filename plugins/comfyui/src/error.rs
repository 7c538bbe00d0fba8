//! The plugin's error codes and the errors built from what ComfyUI reports.
//!
//! The plugin has no error enum of its own: it returns the SDK's `PluginError` with the
//! SDK's shared codes, plus [`INVALID_WORKFLOW`]. This file holds that code and every
//! message made from ComfyUI's answers (validation errors, execution errors, an unreachable
//! pool), so their wording, which clients see, lives in one place.

use aihost_plugin_api::{
    codes,
    sdk::{PluginError, Value},
};

/// Error code of a graph ComfyUI refused (non-retryable).
pub const INVALID_WORKFLOW: &str = "invalid_workflow";

/// A non-retryable error.
pub(crate) fn fatal(code: &str, msg: impl Into<String>) -> PluginError {
    PluginError::fatal(code, msg)
}

/// One line per ComfyUI validation error, naming node, class and input.
pub fn describe_validation(body: &Value) -> String {
    let mut lines = Vec::new();
    if let Some(nodes) = body["node_errors"].as_object() {
        for (id, n) in nodes {
            let class = n["class_type"].as_str().unwrap_or("?");
            for e in n["errors"].as_array().into_iter().flatten() {
                let input = e["extra_info"]["input_name"].as_str();
                let at = match input {
                    Some(i) => format!("node {id} ({class}) input {i:?}"),
                    None => format!("node {id} ({class})"),
                };
                let details = e["details"].as_str().unwrap_or_default();
                let kind = e["type"].as_str().unwrap_or("error");
                let mut line = format!("{at}: {}", e["message"].as_str().unwrap_or_default());
                if !details.is_empty() {
                    line.push_str(&format!(" ({details})"));
                }
                if let Some(t) = e["extra_info"]["exception_type"].as_str() {
                    line.push_str(&format!(" [{t}]"));
                }
                line.push_str(&format!(" [{kind}]"));
                lines.push(line);
            }
        }
    }
    if lines.is_empty() {
        let e = &body["error"];
        let mut line = format!(
            "{}: {}",
            e["type"].as_str().unwrap_or("invalid_prompt"),
            e["message"]
                .as_str()
                .unwrap_or("ComfyUI refused the prompt")
        );
        if let Some(d) = e["details"].as_str().filter(|d| !d.is_empty()) {
            line.push_str(&format!(" ({d})"));
        }
        lines.push(line);
    }
    format!("ComfyUI refused the workflow: {}", lines.join("; "))
}

/// The `engine_error` of an `execution_error` message (socket or history), naming the node
/// and ComfyUI's exception.
pub(crate) fn execution_error(data: &Value) -> PluginError {
    fatal(
        codes::ENGINE_ERROR,
        format!(
            "ComfyUI failed at node {} ({}): {}: {}",
            data["node_id"].as_str().unwrap_or("?"),
            data["node_type"].as_str().unwrap_or("?"),
            data["exception_type"].as_str().unwrap_or("Exception"),
            data["exception_message"]
                .as_str()
                .unwrap_or_default()
                .trim()
        ),
    )
}

/// The retryable `engine_unavailable` when no instance of the pool answers; `errors` has one
/// `url (why)` entry per instance.
pub(crate) fn no_instance(errors: &[String]) -> PluginError {
    PluginError::retryable(
        codes::ENGINE_UNAVAILABLE,
        format!("no ComfyUI instance is reachable: {}", errors.join(", ")),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use aihost_plugin_api::sdk::json;

    #[test]
    fn validation_errors_name_node_class_and_input() {
        let body = json!({"error": {"type": "prompt_outputs_failed_validation", "message": "Prompt outputs failed validation", "details": "", "extra_info": {}},
            "node_errors": {"1": {"errors": [{"type": "value_smaller_than_min", "message": "Value 0 smaller than min of 1", "details": "width",
                "extra_info": {"input_name": "width", "received_value": 0}}], "dependent_outputs": ["2"], "class_type": "EmptyImage"}}});
        let m = describe_validation(&body);
        assert!(m.contains("node 1 (EmptyImage) input \"width\""), "{m}");
        assert!(m.contains("smaller than min"), "{m}");
        let top = json!({"error": {"type": "invalid_prompt", "message": "Cannot execute because node NoSuchNode does not exist.", "details": "Node ID '#1'", "extra_info": {}}, "node_errors": {}});
        let m = describe_validation(&top);
        assert!(
            m.contains("invalid_prompt") && m.contains("NoSuchNode"),
            "{m}"
        );
    }
}
