//! Workflow templates: an API-format ComfyUI graph (`NAME.json`) plus a TOML parameter map
//! (`NAME.toml`) in the workflows folder.
//!
//! The parameter map names each parameter, where it goes in the graph (node id and input),
//! its type, default, bounds and description, and whether it is media (a URL or storage key
//! that the plugin fetches and uploads to ComfyUI before the prompt is queued):
//!
//! ```toml
//! description = "Text to image."
//! [params.steps]
//! node = "3"
//! input = "steps"
//! type = "integer"      # string | integer | number | boolean | image
//! default = 20
//! minimum = 1
//! maximum = 150
//! description = "Sampling steps."
//! ```

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_json::{Map, Value, json};

/// Why templates could not be loaded or applied.
#[derive(Debug, Clone, PartialEq)]
pub enum TemplateError {
    /// A template file is unreadable or malformed.
    Invalid {
        /// The template or parameter-map file.
        file: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// No template has this name.
    NotFound(String),
    /// Parameters do not fit the template.
    BadParams(String),
}

impl TemplateError {
    /// Stable code.
    pub fn code(&self) -> &'static str {
        match self {
            TemplateError::Invalid { .. } => "invalid_template",
            TemplateError::NotFound(_) => "workflow_not_found",
            TemplateError::BadParams(_) => "invalid_input",
        }
    }
}

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateError::Invalid { file, reason } => {
                write!(f, "workflow template {}: {reason}", file.display())
            }
            TemplateError::NotFound(n) => write!(f, "no workflow template named {n:?}"),
            TemplateError::BadParams(m) => f.write_str(m),
        }
    }
}

/// Type of a template parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParamType {
    /// Text.
    String,
    /// Whole number.
    Integer,
    /// Any number.
    Number,
    /// true or false.
    Boolean,
    /// Media: an image URL or storage key, uploaded to ComfyUI's input folder.
    Image,
}

/// One parameter of a template.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Param {
    /// Node id in the graph.
    pub node: String,
    /// Input name of that node.
    pub input: String,
    /// Value type.
    #[serde(rename = "type")]
    pub kind: ParamType,
    /// Value used when the request gives none; without one the parameter is required.
    pub default: Option<Value>,
    /// Smallest number accepted.
    pub minimum: Option<f64>,
    /// Largest number accepted.
    pub maximum: Option<f64>,
    /// Allowed values.
    #[serde(rename = "enum")]
    pub choices: Option<Vec<Value>>,
    /// Longest string accepted.
    pub max_length: Option<u64>,
    /// For the API docs.
    #[serde(default)]
    pub description: String,
    /// Media (fetched and uploaded); implied by `type = "image"`.
    #[serde(default)]
    pub media: bool,
}

impl Param {
    /// Whether the value is a URL to fetch and upload.
    pub fn is_media(&self) -> bool {
        self.media || self.kind == ParamType::Image
    }

    fn schema(&self) -> Value {
        let mut s = Map::new();
        let t = match self.kind {
            ParamType::String | ParamType::Image => "string",
            ParamType::Integer => "integer",
            ParamType::Number => "number",
            ParamType::Boolean => "boolean",
        };
        s.insert("type".into(), json!(t));
        if self.is_media() {
            s.insert("minLength".into(), json!(1));
            s.insert("format".into(), json!("uri-reference"));
        }
        let mut desc = self.description.clone();
        if self.is_media() {
            desc.push_str(" (URL or storage key of the file; it is uploaded to ComfyUI)");
        }
        if !desc.trim().is_empty() {
            s.insert("description".into(), json!(desc.trim()));
        }
        if let Some(d) = &self.default {
            s.insert("default".into(), d.clone());
        }
        if let Some(m) = self.minimum {
            s.insert("minimum".into(), num(m));
        }
        if let Some(m) = self.maximum {
            s.insert("maximum".into(), num(m));
        }
        if let Some(c) = &self.choices {
            s.insert("enum".into(), json!(c));
        }
        if let Some(m) = self.max_length {
            s.insert("maxLength".into(), json!(m));
        }
        Value::Object(s)
    }
}

#[expect(
    clippy::cast_possible_truncation,
    reason = "only whole numbers below 2^53 are cast, which i64 holds exactly"
)]
fn num(v: f64) -> Value {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        json!(v as i64)
    } else {
        json!(v)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ParamFile {
    #[serde(default)]
    description: String,
    #[serde(default)]
    params: BTreeMap<String, Param>,
}

/// A loaded template.
#[derive(Debug, Clone)]
pub struct Template {
    /// File stem.
    pub name: String,
    /// For the docs.
    pub description: String,
    /// API-format graph.
    pub graph: Value,
    /// Parameters by name.
    pub params: BTreeMap<String, Param>,
}

impl Template {
    /// JSON Schema of the parameters object.
    pub fn params_schema(&self) -> Value {
        let props: Map<String, Value> = self
            .params
            .iter()
            .map(|(k, p)| (k.clone(), p.schema()))
            .collect();
        let required: Vec<&String> = self
            .params
            .iter()
            .filter(|(_, p)| p.default.is_none())
            .map(|(k, _)| k)
            .collect();
        json!({
            "type": "object",
            "description": self.description,
            "additionalProperties": false,
            "properties": props,
            "required": required,
        })
    }

    /// Names of the media parameters.
    pub fn media_params(&self) -> Vec<String> {
        self.params
            .iter()
            .filter(|(_, p)| p.is_media())
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The graph with `params` applied; media parameters are left as given (the caller
    /// replaces them after uploading) and listed as `(param, node, input, url)`.
    #[allow(clippy::type_complexity)]
    pub fn apply(
        &self,
        params: &Map<String, Value>,
    ) -> Result<(Value, Vec<(String, String, String, String)>), TemplateError> {
        if let Some(unknown) = params.keys().find(|k| !self.params.contains_key(*k)) {
            return Err(TemplateError::BadParams(format!(
                "workflow {:?} has no parameter {unknown:?}; it takes: {}",
                self.name,
                self.params.keys().cloned().collect::<Vec<_>>().join(", ")
            )));
        }
        let mut graph = self.graph.clone();
        let mut media = Vec::new();
        for (name, p) in &self.params {
            let Some(value) = params.get(name).or(p.default.as_ref()).cloned() else {
                return Err(TemplateError::BadParams(format!(
                    "workflow {:?} needs parameter {name:?}",
                    self.name
                )));
            };
            check_value(name, p, &value)?;
            if p.is_media() {
                media.push((
                    name.clone(),
                    p.node.clone(),
                    p.input.clone(),
                    value.as_str().unwrap_or_default().to_owned(),
                ));
            }
            graph[&p.node]["inputs"][&p.input] = value;
        }
        Ok((graph, media))
    }
}

fn check_value(name: &str, p: &Param, v: &Value) -> Result<(), TemplateError> {
    let bad = |what: String| {
        Err(TemplateError::BadParams(format!(
            "parameter {name:?}: {what}"
        )))
    };
    let ok_type = match p.kind {
        ParamType::String | ParamType::Image => v.is_string(),
        ParamType::Integer => v.is_i64() || v.is_u64(),
        ParamType::Number => v.is_number(),
        ParamType::Boolean => v.is_boolean(),
    };
    if !ok_type {
        return bad(format!("{v} is not of type {:?}", p.kind));
    }
    if let Some(n) = v.as_f64() {
        if p.minimum.is_some_and(|m| n < m) {
            return bad(format!(
                "{n} is less than the minimum {}",
                p.minimum.unwrap()
            ));
        }
        if p.maximum.is_some_and(|m| n > m) {
            return bad(format!(
                "{n} is greater than the maximum {}",
                p.maximum.unwrap()
            ));
        }
    }
    if let Some(c) = &p.choices
        && !c.contains(v)
    {
        return bad(format!("{v} is not one of {}", json!(c)));
    }
    Ok(())
}

/// Loads every `NAME.json` + `NAME.toml` pair of `dir`. A missing folder gives no templates;
/// a malformed pair is an error naming the file.
pub fn load_dir(dir: &Path) -> Result<Vec<Template>, TemplateError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(out);
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    for toml_path in files {
        let invalid = |reason: String| TemplateError::Invalid {
            file: toml_path.clone(),
            reason,
        };
        let name = toml_path
            .file_stem()
            .and_then(|s| s.to_str())
            .ok_or_else(|| invalid("the file name is not UTF-8".into()))?
            .to_owned();
        let text = std::fs::read_to_string(&toml_path).map_err(|e| invalid(e.to_string()))?;
        let pf: ParamFile = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        let json_path = toml_path.with_extension("json");
        let graph_text =
            std::fs::read_to_string(&json_path).map_err(|e| TemplateError::Invalid {
                file: json_path.clone(),
                reason: e.to_string(),
            })?;
        let graph: Value =
            serde_json::from_str(&graph_text).map_err(|e| TemplateError::Invalid {
                file: json_path.clone(),
                reason: e.to_string(),
            })?;
        if !graph.is_object() || graph.as_object().is_some_and(|o| o.is_empty()) {
            return Err(TemplateError::Invalid {
                file: json_path,
                reason: "the graph must be a non-empty API-format object".into(),
            });
        }
        for (pname, p) in &pf.params {
            if graph.get(&p.node).and_then(|n| n.get("inputs")).is_none() {
                return Err(invalid(format!(
                    "parameter {pname:?} names node {:?}, which the graph lacks",
                    p.node
                )));
            }
            if let Some(d) = &p.default {
                check_value(pname, p, d).map_err(|e| invalid(format!("default: {e}")))?;
            }
        }
        out.push(Template {
            name,
            description: pf.description,
            graph,
            params: pf.params,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo_workflows() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../workflows")
    }

    #[test]
    fn shipped_templates_load_and_apply_their_defaults() {
        let all = load_dir(&repo_workflows()).unwrap();
        let names: Vec<&str> = all.iter().map(|t| t.name.as_str()).collect();
        for n in ["basic_generation", "img2img", "solid_color", "invert_scale"] {
            assert!(names.contains(&n), "{names:?}");
        }
        for t in &all {
            let schema = t.params_schema();
            assert_eq!(schema["additionalProperties"], false);
            let defaults: Map<String, Value> = t
                .params
                .iter()
                .filter(|(_, p)| p.default.is_none())
                .map(|(k, _)| (k.clone(), json!("https://example.com/a.png")))
                .collect();
            let (graph, _) = t.apply(&defaults).unwrap();
            assert!(graph.as_object().unwrap().len() >= 2, "{}", t.name);
        }
    }

    #[test]
    fn unknown_and_out_of_range_params_are_refused() {
        let all = load_dir(&repo_workflows()).unwrap();
        let t = all.iter().find(|t| t.name == "basic_generation").unwrap();
        let err = t
            .apply(json!({"nope": 1}).as_object().unwrap())
            .unwrap_err();
        assert_eq!(err.code(), "invalid_input");
        assert!(err.to_string().contains("nope"), "{err}");
        let err = t
            .apply(json!({"steps": 100000}).as_object().unwrap())
            .unwrap_err();
        assert!(err.to_string().contains("maximum"), "{err}");
        let (g, _) = t
            .apply(
                json!({"prompt": "a red fox", "steps": 5})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
        let text = g.to_string();
        assert!(text.contains("a red fox"));
        let schema = t.params_schema();
        assert_eq!(schema["properties"]["steps"]["type"], "integer");
    }

    #[test]
    fn media_params_are_listed() {
        let all = load_dir(&repo_workflows()).unwrap();
        let t = all.iter().find(|t| t.name == "invert_scale").unwrap();
        assert_eq!(t.media_params(), vec!["image".to_owned()]);
        let (_, media) = t
            .apply(
                json!({"image": "https://example.com/x.png"})
                    .as_object()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(media.len(), 1);
        assert_eq!(media[0].3, "https://example.com/x.png");
    }

    #[test]
    fn a_param_naming_a_missing_node_is_reported_with_its_file() {
        let dir = std::env::temp_dir().join(format!("comfy-tpl-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("x.json"),
            r#"{"1": {"class_type": "A", "inputs": {}}}"#,
        )
        .unwrap();
        std::fs::write(
            dir.join("x.toml"),
            "[params.a]\nnode = \"9\"\ninput = \"b\"\ntype = \"integer\"\n",
        )
        .unwrap();
        let err = load_dir(&dir).unwrap_err();
        assert_eq!(err.code(), "invalid_template");
        assert!(err.to_string().contains("x.toml"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
