//! The node classes the fake ComfyUI knows: the `object_info` entries recorded from ComfyUI
//! 0.3.64 (`tests/fixtures/comfyui/08_object_info_full.json`) of the classes its executor
//! runs. Validation reads the input specs from them, so types, bounds, combo lists and the
//! `input_config` in error bodies are the real ones. Separate from validation and execution
//! because both read it, and so does `GET /object_info`.
//!
//! Deliberate differences: only these classes exist (any other is "does not exist");
//! `CheckpointLoaderSimple` lists one fake checkpoint (the recording had none installed).

use std::{path::Path, sync::OnceLock};

use serde_json::{Map, Value, json};

/// The recorded `GET /object_info` body.
const OBJECT_INFO: &str = include_str!("../../fixtures/comfyui/08_object_info_full.json");

/// The classes the executor runs.
const CLASSES: &[&str] = &[
    "EmptyImage",
    "SaveImage",
    "PreviewImage",
    "LoadImage",
    "ImageInvert",
    "ImageBlur",
    "ImageSharpen",
    "ImageScale",
    "GetImageSize",
    "CheckpointLoaderSimple",
    "CLIPTextEncode",
    "EmptyLatentImage",
    "KSampler",
    "VAEDecode",
    "VAEEncode",
    "SaveWEBM",
    "PreviewAny",
];

/// The checkpoints the fake pretends to have.
pub(crate) const CHECKPOINTS: &[&str] = &["v1-5-pruned-emaonly.safetensors"];

fn catalog() -> &'static Map<String, Value> {
    static CATALOG: OnceLock<Map<String, Value>> = OnceLock::new();
    CATALOG.get_or_init(|| {
        let all: Map<String, Value> =
            serde_json::from_str(OBJECT_INFO).expect("08_object_info_full.json");
        let mut out = Map::new();
        for name in CLASSES {
            let mut entry = all
                .get(*name)
                .cloned()
                .unwrap_or_else(|| panic!("{name} is not in the recorded object_info"));
            if *name == "CheckpointLoaderSimple" {
                entry["input"]["required"]["ckpt_name"][0] = json!(CHECKPOINTS);
            }
            out.insert((*name).to_owned(), entry);
        }
        out
    })
}

/// The `object_info` entry of a class the fake knows.
pub(crate) fn class(name: &str) -> Option<&'static Value> {
    catalog().get(name)
}

/// Whether the class is an output node.
pub(crate) fn is_output(entry: &Value) -> bool {
    entry["output_node"] == true
}

/// The class's output types by slot.
pub(crate) fn outputs(entry: &Value) -> Vec<&str> {
    entry["output"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// One input of a class: name, `required`/`optional`, and its spec `[type, {options}]`.
pub(crate) struct InputSpec<'a> {
    pub(crate) name: &'a str,
    pub(crate) required: bool,
    pub(crate) spec: &'a Value,
}

impl InputSpec<'_> {
    /// The type: a name (`"INT"`, `"IMAGE"`, `"COMBO"`, `"*"`) or a V1 combo list.
    pub(crate) fn kind(&self) -> &Value {
        &self.spec[0]
    }

    /// The options dict (`{}` when the spec has none).
    pub(crate) fn extra(&self) -> Value {
        self.spec
            .get(1)
            .filter(|v| v.is_object())
            .cloned()
            .unwrap_or_else(|| json!({}))
    }

    /// `input_config` as ComfyUI reports it in errors: `[type, options]`.
    pub(crate) fn config(&self) -> Value {
        json!([self.kind(), self.extra()])
    }

    /// The combo choices (V1 list, or V3 `COMBO` with `options`), if it is a combo.
    pub(crate) fn combo(&self) -> Option<Vec<Value>> {
        match self.kind() {
            Value::Array(list) => Some(list.clone()),
            Value::String(s) if s == "COMBO" => Some(
                self.extra()["options"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            ),
            _ => None,
        }
    }
}

/// The class's required then optional inputs, in `input_order` (hidden ones left out).
pub(crate) fn inputs(entry: &Value) -> Vec<InputSpec<'_>> {
    let mut out = Vec::new();
    for (group, required) in [("required", true), ("optional", false)] {
        let specs = &entry["input"][group];
        let order: Vec<&str> = match entry["input_order"][group].as_array() {
            Some(o) => o.iter().filter_map(Value::as_str).collect(),
            None => specs
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default(),
        };
        for name in order {
            if let Some(spec) = specs.get(name) {
                out.push(InputSpec {
                    name,
                    required,
                    spec,
                });
            }
        }
    }
    out
}

/// `GET /object_info[/{class}]` entry: LoadImage's combo lists the top-level files of the
/// input folder, CheckpointLoaderSimple's the instance's checkpoints, as in ComfyUI.
pub(crate) fn object_info(name: &str, input_dir: &Path, checkpoints: &[String]) -> Option<Value> {
    let mut entry = class(name)?.clone();
    if name == "CheckpointLoaderSimple" {
        entry["input"]["required"]["ckpt_name"][0] = json!(checkpoints);
    }
    if name == "LoadImage" {
        let mut files: Vec<String> = std::fs::read_dir(input_dir)
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.path().is_file())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        files.sort();
        entry["input"]["required"]["image"][0] = json!(files);
    }
    Some(entry)
}

/// Every class the fake knows, as `GET /object_info` answers.
pub(crate) fn all_object_info(input_dir: &Path, checkpoints: &[String]) -> Value {
    let mut out = Map::new();
    for name in CLASSES {
        if let Some(e) = object_info(name, input_dir, checkpoints) {
            out.insert((*name).to_owned(), e);
        }
    }
    Value::Object(out)
}
