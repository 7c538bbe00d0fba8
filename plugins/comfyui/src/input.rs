//! The input of a `comfyui.workflow` task: its serde types, the JSON Schema the host checks
//! submissions against, and turning it into the graph to queue.
//!
//! Separate from running the task (`run.rs`): all of this is plain data work that needs no
//! ComfyUI, so a bad input is refused before any instance is taken.

use aihost_plugin_api::sdk::{PluginError, Value, json};
use serde::Deserialize;
use serde_json::Map;

use crate::templates::Template;

/// A media input of a raw graph: the file at `url` is uploaded and its name set at
/// `node`/`input`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct MediaInput {
    pub(crate) node: String,
    pub(crate) input: String,
    pub(crate) url: String,
}

/// The input of a `comfyui.workflow` task.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Input {
    pub(crate) workflow: Option<String>,
    #[serde(default)]
    pub(crate) params: Map<String, Value>,
    pub(crate) workflow_json: Option<Value>,
    #[serde(default)]
    pub(crate) media: Vec<MediaInput>,
    /// Per-task model files (supervised instances only, `models.rs`).
    #[serde(default)]
    pub(crate) models: Vec<crate::models::TaskModel>,
    #[serde(default)]
    pub(crate) include_previews: bool,
    pub(crate) timeout_secs: Option<u64>,
}

/// The JSON Schema of the task input; with templates loaded, each template's parameters are
/// checked at submit (unknown or out-of-range parameters are refused with 422).
pub fn input_schema(templates: &[Template]) -> Value {
    let mut workflow = json!({"type": "string", "minLength": 1, "description": "Name of a workflow template (see GET /api/workflows)."});
    if !templates.is_empty() {
        workflow["enum"] = json!(templates.iter().map(|t| &t.name).collect::<Vec<_>>());
    }
    let rules: Vec<Value> = templates
        .iter()
        .map(|t| {
            json!({
                "if": {"required": ["workflow"], "properties": {"workflow": {"const": t.name}}},
                "then": {"properties": {"params": t.params_schema()}}
            })
        })
        .collect();
    let mut schema = json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "description": "A ComfyUI workflow: a template with parameters, or an API-format graph.",
        "properties": {
            "workflow": workflow,
            "params": {"type": "object", "description": "Template parameters (see the template's schema)."},
            "workflow_json": {"type": "object", "minProperties": 1, "description": "An API-format ComfyUI graph (node id -> {class_type, inputs})."},
            "media": {"type": "array", "maxItems": 64, "description": "Files to upload before queuing: each URL's file is uploaded and its name set at node/input.",
                "items": {"type": "object", "additionalProperties": false, "required": ["node", "input", "url"],
                    "properties": {"node": {"type": "string"}, "input": {"type": "string"}, "url": {"type": "string", "minLength": 1}}}},
            "models": {"type": "array", "maxItems": 16, "description": "Model files to fetch before queuing (supervised instances only; hosts must be in the plugin's model_url_hosts): each URL's file is cached in the instance's models/{folder}/aihost-cache/ and its name set at node/input.",
                "items": {"type": "object", "additionalProperties": false, "required": ["url", "folder", "node", "input"],
                    "properties": {"url": {"type": "string", "minLength": 1}, "folder": {"type": "string", "minLength": 1}, "node": {"type": "string"}, "input": {"type": "string"}}}},
            "include_previews": {"type": "boolean", "default": false, "description": "Also return `temp` files (PreviewImage)."},
            "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "Interrupt and fail with `timeout` after this long."}
        },
        "oneOf": [
            {"required": ["workflow"], "not": {"required": ["workflow_json"]}},
            {"required": ["workflow_json"], "not": {"required": ["workflow"]}}
        ]
    });
    if !rules.is_empty() {
        schema["allOf"] = json!(rules);
    }
    // An annotation (ignored by validators) from which the host documents one operation per
    // template.
    schema["x-workflows"] = json!(
        templates
            .iter()
            .map(|t| json!({"name": t.name, "description": t.description, "params_schema": t.params_schema()}))
            .collect::<Vec<_>>()
    );
    schema
}

/// The graph to queue, the media to upload into it, and a label for the result (the
/// template's name or `workflow_json`). Fails with `invalid_input` when the input names no
/// known template, mixes the two forms, or puts media on a node the graph lacks.
pub(crate) fn build_graph(
    templates: &[Template],
    input: &Input,
) -> Result<(Value, Vec<MediaInput>, String), PluginError> {
    let mut media: Vec<MediaInput> = input.media.clone();
    let (graph, label) = match (&input.workflow, &input.workflow_json) {
        (Some(name), None) => {
            let t = templates.iter().find(|t| &t.name == name).ok_or_else(|| {
                PluginError::invalid_input(format!(
                    "no workflow template named {name:?}; installed: {}",
                    templates
                        .iter()
                        .map(|t| t.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ))
            })?;
            let (graph, m) = t
                .apply(&input.params)
                .map_err(|e| PluginError::invalid_input(e.to_string()))?;
            media.extend(m.into_iter().map(|(_, node, input, url)| MediaInput {
                node,
                input,
                url,
            }));
            (graph, name.clone())
        }
        (None, Some(g)) if g.as_object().is_some_and(|o| !o.is_empty()) => {
            if !input.params.is_empty() {
                return Err(PluginError::invalid_input(
                    "`params` applies to templates; set values in `workflow_json` directly",
                ));
            }
            (g.clone(), "workflow_json".to_owned())
        }
        _ => {
            return Err(PluginError::invalid_input(
                "give exactly one of `workflow` (a template name) or `workflow_json` (an API-format graph)",
            ));
        }
    };
    for m in &media {
        if graph.get(&m.node).and_then(|n| n.get("inputs")).is_none() {
            return Err(PluginError::invalid_input(format!(
                "media input names node {:?}, which the graph lacks",
                m.node
            )));
        }
    }
    Ok((graph, media, label))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::templates;

    #[test]
    fn schema_checks_template_params() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows");
        let t = templates::load_dir(&dir).unwrap();
        let s = input_schema(&t);
        assert_eq!(s["additionalProperties"], false);
        let rules = s["allOf"].as_array().unwrap();
        assert_eq!(rules.len(), t.len());
        assert!(
            s["properties"]["workflow"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("basic_generation"))
        );
    }
}
