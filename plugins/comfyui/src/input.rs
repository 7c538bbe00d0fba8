//! The input of a `comfyui.workflow` task: its serde types, the JSON Schema the host checks
//! submissions against, and turning it into the graph to queue.
//!
//! Separate from running the task (`run.rs`): all of this is plain data work that needs no
//! ComfyUI, so a bad input is refused before any instance is taken.

use aihost_plugin_api::sdk::{PluginError, Value, json};
use serde::Deserialize;
use serde_json::Map;

use crate::{graph, templates::Template};

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
    /// A template name (string) or an API-format graph (object).
    pub(crate) workflow: Option<Value>,
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
    /// Forward ComfyUI's live preview images (sampler steps) as `preview` events.
    #[serde(default)]
    pub(crate) previews: bool,
    pub(crate) timeout_secs: Option<u64>,
    /// Bookkeeping of the host's ComfyUI-compatible gateway (client id, prompt id, number,
    /// extra data of the prompt); the plugin ignores it.
    #[serde(default)]
    #[expect(
        dead_code,
        reason = "kept for the host's gateway; the plugin never reads it"
    )]
    pub(crate) gateway: Option<Value>,
}

/// The JSON Schema of the task input; with templates loaded, each template's parameters are
/// checked at submit (unknown or out-of-range parameters are refused with 422).
pub fn input_schema(templates: &[Template]) -> Value {
    let mut name = json!({"type": "string", "minLength": 1});
    if !templates.is_empty() {
        name["enum"] = json!(templates.iter().map(|t| &t.name).collect::<Vec<_>>());
    }
    // A string is a template's name, anything else must be a graph: `if`/`else` rather than
    // `oneOf`, so a bad graph fails with the graph schema's own errors.
    let workflow = json!({
        "description": "Name of a workflow template (see GET /api/workflows), or an API-format graph (node id -> {class_type, inputs}), as ComfyUI's Workflow > Export (API) saves it.",
        "if": {"type": "string"},
        "then": name,
        "else": graph::schema()
    });
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
            "workflow_json": graph::schema(),
            "media": {"type": "array", "maxItems": 64, "description": "Files to upload before queuing: each URL's file is uploaded and its name set at node/input.",
                "items": {"type": "object", "additionalProperties": false, "required": ["node", "input", "url"],
                    "properties": {"node": {"type": "string"}, "input": {"type": "string"}, "url": {"type": "string", "minLength": 1}}}},
            "models": {"type": "array", "maxItems": 16, "description": "Model files to fetch before queuing (supervised instances only; hosts must be in the plugin's model_url_hosts): each URL's file is cached in the instance's models/{folder}/aihost-cache/ and its name set at node/input.",
                "items": {"type": "object", "additionalProperties": false, "required": ["url", "folder", "node", "input"],
                    "properties": {"url": {"type": "string", "minLength": 1}, "folder": {"type": "string", "minLength": 1}, "node": {"type": "string"}, "input": {"type": "string"}}}},
            "include_previews": {"type": "boolean", "default": false, "description": "Also return `temp` files (PreviewImage)."},
            "previews": {"type": "boolean", "default": false, "description": "Send ComfyUI's live preview images (sampler steps, when ComfyUI runs with --preview-method) as `preview` events on the task's event stream, at most about 2 a second; the latest is `progress.preview`."},
            "timeout_secs": {"type": "integer", "minimum": 1, "maximum": 86400, "description": "Interrupt and fail with `timeout` after this long."},
            "gateway": {"type": "object", "description": "Set by the ComfyUI-compatible gateway (`/comfy/prompt`): the prompt's client_id, prompt_id, number, extra_data and outputs_to_execute. The plugin ignores it."}
        },
        // In `allOf` so that its failure has a message of its own (a bare `oneOf` error would
        // quote the whole input, graph included).
        "allOf": [{
            "oneOf": [
                {"required": ["workflow"], "not": {"required": ["workflow_json"]}},
                {"required": ["workflow_json"], "not": {"required": ["workflow"]}}
            ],
            "x-error-message": "give exactly one of `workflow` (a template name or an API-format graph) or `workflow_json` (an API-format graph)"
        }]
    });
    if let Some(all) = schema["allOf"].as_array_mut() {
        all.extend(rules);
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
/// known template, mixes the two forms, or puts media on a node the graph lacks, and with
/// `invalid_workflow` when a given graph is not an API-format graph.
pub(crate) fn build_graph(
    templates: &[Template],
    input: &Input,
) -> Result<(Value, Vec<MediaInput>, String), PluginError> {
    let mut media: Vec<MediaInput> = input.media.clone();
    let graph_given = match &input.workflow {
        Some(Value::String(_)) | None => input.workflow_json.as_ref(),
        Some(g) => Some(g).filter(|_| input.workflow_json.is_none()),
    };
    let name = input.workflow.as_ref().and_then(Value::as_str);
    let (graph, label) = match (name, graph_given) {
        (Some(name), None) if input.workflow_json.is_none() => {
            let t = templates.iter().find(|t| t.name == name).ok_or_else(|| {
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
            (graph, name.to_owned())
        }
        (None, Some(g)) => {
            graph::check(g)?;
            if !input.params.is_empty() {
                return Err(PluginError::invalid_input(
                    "`params` applies to templates; set values in the graph directly",
                ));
            }
            (g.clone(), "workflow_json".to_owned())
        }
        _ => {
            return Err(PluginError::invalid_input(
                "give exactly one of `workflow` (a template name or an API-format graph) or `workflow_json` (an API-format graph)",
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
        // The exclusivity rule, then one rule per template.
        let rules = s["allOf"].as_array().unwrap();
        assert_eq!(rules.len(), t.len() + 1);
        assert!(rules[0]["oneOf"].is_array());
        assert!(
            s["properties"]["workflow"]["then"]["enum"]
                .as_array()
                .unwrap()
                .contains(&json!("basic_generation"))
        );
        assert_eq!(s["properties"]["workflow"]["else"], graph::schema());
        assert_eq!(
            s["properties"]["workflow_json"]["x-error-code"],
            "invalid_workflow"
        );
    }

    #[test]
    fn a_graph_under_workflow_or_workflow_json_builds_and_a_bad_one_is_refused() {
        let g = json!({"1": {"class_type": "EmptyImage", "inputs": {}}});
        for v in [json!({"workflow": g}), json!({"workflow_json": g})] {
            let input: Input = serde_json::from_value(v).unwrap();
            let (graph, media, label) = build_graph(&[], &input).unwrap();
            assert_eq!(
                (graph, media.len(), label.as_str()),
                (g.clone(), 0, "workflow_json")
            );
        }
        let input: Input = serde_json::from_value(json!({"workflow": {"a": 1}})).unwrap();
        let e = build_graph(&[], &input).unwrap_err();
        assert_eq!(e.code.as_str(), "invalid_workflow");
        let both: Input =
            serde_json::from_value(json!({"workflow": g, "workflow_json": g})).unwrap();
        assert_eq!(
            build_graph(&[], &both).unwrap_err().code.as_str(),
            "invalid_input"
        );
    }
}
