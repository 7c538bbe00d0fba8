//! Model-aware routing: which models each instance has (the combo lists of the model inputs
//! in its `/object_info`, read when its socket connects and after downloads) and which ones it
//! loaded last (from the graphs it ran), so a task goes only to an instance that has every
//! model its graph names, preferring one that has them loaded.
//!
//! Separate from the pool (`pool.rs`), which only counts slots: this decides which instances
//! qualify for a graph and in which order of preference.

use std::{
    collections::{HashMap, HashSet},
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
};

use aihost_plugin_api::PluginError;
use serde_json::{Value, json};

use crate::error::fatal;

/// Error code of a task whose graph names a model no instance has (non-retryable).
pub const MODEL_UNAVAILABLE: &str = "model_unavailable";

/// Inputs that name a model file.
const MODEL_INPUTS: &[&str] = &[
    "ckpt_name",
    "lora_name",
    "vae_name",
    "unet_name",
    "clip_name",
    "clip_name1",
    "clip_name2",
    "clip_name3",
    "control_net_name",
    "upscale_model_name",
    "style_model_name",
    "gligen_name",
    "hypernetwork_name",
    "model_name",
];

/// One model a graph names: node, class, input and the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Need {
    pub(crate) node: String,
    pub(crate) class: String,
    pub(crate) input: String,
    pub(crate) value: String,
}

impl Need {
    fn key(&self) -> String {
        format!("{}.{}", self.class, self.input)
    }
}

/// The models a graph names (literal string values of model inputs).
pub(crate) fn needs(graph: &Value) -> Vec<Need> {
    let mut out = Vec::new();
    for (node, n) in graph.as_object().into_iter().flatten() {
        let class = n["class_type"].as_str().unwrap_or_default();
        for (input, v) in n["inputs"].as_object().into_iter().flatten() {
            if let Some(value) = v.as_str()
                && MODEL_INPUTS.contains(&input.as_str())
            {
                out.push(Need {
                    node: node.clone(),
                    class: class.to_owned(),
                    input: input.clone(),
                    value: value.to_owned(),
                });
            }
        }
    }
    out
}

/// What a task asks of an instance.
#[derive(Debug, Clone, Default)]
pub(crate) struct Want {
    /// The models its graph names.
    pub(crate) needs: Vec<Need>,
    /// It brings per-task model URLs: only instances with a models folder (supervised).
    pub(crate) folder: bool,
}

/// How well an instance fits a graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fit {
    /// It has every model; the number is how many of them it has not loaded (lower first).
    Yes(usize),
    /// Not known yet (its models were never read).
    Maybe,
    /// It lacks a model.
    No,
}

/// What one instance is known to have.
#[derive(Default)]
pub(crate) struct Known {
    /// `Class.input` -> the files its combo offers; `None` until first read.
    lists: Mutex<Option<HashMap<String, HashSet<String>>>>,
    /// The model files of the last graph it ran.
    loaded: Mutex<HashSet<String>>,
    /// The socket connection count at the last read (a new connection reads again).
    read_at: AtomicU64,
}

/// The combo options of an input spec (V1 list or V3 `COMBO`).
fn combo(spec: &Value) -> Option<Vec<String>> {
    let list = match &spec[0] {
        Value::Array(a) => a.clone(),
        Value::String(s) if s == "COMBO" => spec[1]["options"].as_array()?.clone(),
        _ => return None,
    };
    Some(
        list.iter()
            .filter_map(|v| v.as_str().map(str::to_owned))
            .collect(),
    )
}

impl Known {
    /// Reads the model lists from an `/object_info` body.
    pub(crate) fn set_from_object_info(&self, info: &Value) {
        let mut lists = HashMap::new();
        for (class, entry) in info.as_object().into_iter().flatten() {
            for group in ["required", "optional"] {
                for (input, spec) in entry["input"][group].as_object().into_iter().flatten() {
                    if MODEL_INPUTS.contains(&input.as_str())
                        && let Some(files) = combo(spec)
                    {
                        lists.insert(format!("{class}.{input}"), files.into_iter().collect());
                    }
                }
            }
        }
        *self.lists.lock().unwrap() = Some(lists);
    }

    /// Whether the lists must be read (never read, or a new connection since).
    pub(crate) fn stale(&self, connections: u64) -> bool {
        self.lists.lock().unwrap().is_none() || self.read_at.load(Ordering::Acquire) != connections
    }

    /// Records that the lists were read at this connection count.
    pub(crate) fn read_done(&self, connections: u64) {
        self.read_at.store(connections, Ordering::Release);
    }

    /// Forces a read at the next check (files were added).
    pub(crate) fn invalidate(&self) {
        self.read_at.store(u64::MAX, Ordering::Release);
    }

    /// The needs it lacks (`None` when its lists are not known). An input it has no combo
    /// for (an unknown class, a non-combo input) constrains nothing: ComfyUI's validation
    /// speaks for it.
    pub(crate) fn missing<'a>(&self, needs: &'a [Need]) -> Option<Vec<&'a Need>> {
        let lists = self.lists.lock().unwrap();
        let lists = lists.as_ref()?;
        Some(
            needs
                .iter()
                .filter(|n| lists.get(&n.key()).is_some_and(|l| !l.contains(&n.value)))
                .collect(),
        )
    }

    /// How well it fits `needs`.
    pub(crate) fn fit(&self, needs: &[Need]) -> Fit {
        match self.missing(needs) {
            None if needs.is_empty() => Fit::Yes(0),
            None => Fit::Maybe,
            Some(m) if !m.is_empty() => Fit::No,
            Some(_) => {
                let loaded = self.loaded.lock().unwrap();
                Fit::Yes(needs.iter().filter(|n| !loaded.contains(&n.value)).count())
            }
        }
    }

    /// Records the models of a graph it ran (they stay loaded until a free or restart).
    pub(crate) fn ran(&self, needs: &[Need]) {
        if needs.is_empty() {
            return;
        }
        *self.loaded.lock().unwrap() = needs.iter().map(|n| n.value.clone()).collect();
    }

    /// Nothing is loaded any more (`/free`, restart).
    pub(crate) fn unloaded(&self) {
        self.loaded.lock().unwrap().clear();
    }

    /// The health entry: what it has loaded and how many files each loader offers.
    pub(crate) fn report(&self) -> Value {
        let lists = self.lists.lock().unwrap();
        let mut loaded: Vec<String> = self.loaded.lock().unwrap().iter().cloned().collect();
        loaded.sort();
        let mut checkpoints: Vec<String> = lists
            .as_ref()
            .and_then(|l| l.get("CheckpointLoaderSimple.ckpt_name"))
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default();
        checkpoints.sort();
        json!({"known": lists.is_some(), "checkpoints": checkpoints, "loaded": loaded})
    }
}

/// The `model_unavailable` error naming the models no instance has (or, with none named,
/// that per-task model URLs need a supervised instance).
pub(crate) fn unavailable(missing: &[&Need]) -> PluginError {
    if missing.is_empty() {
        return fatal(
            MODEL_UNAVAILABLE,
            "per-task model URLs need a supervised instance (one with `launch`), and the pool has none",
        );
    }
    let names: Vec<String> = missing
        .iter()
        .map(|n| format!("{:?} (node {} {}.{})", n.value, n.node, n.class, n.input))
        .collect();
    fatal(
        MODEL_UNAVAILABLE,
        format!(
            "no ComfyUI instance of the pool has the model {}",
            names.join(", ")
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fits_by_lists_and_prefers_loaded() {
        let graph = json!({"4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
            "5": {"class_type": "KSampler", "inputs": {"model": ["4", 0], "seed": 1}}});
        let n = needs(&graph);
        assert_eq!(n.len(), 1);
        let k = Known::default();
        assert_eq!(k.fit(&n), Fit::Maybe);
        let info = json!({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": [["a.safetensors", "b.safetensors"], {}]}}}});
        k.set_from_object_info(&info);
        assert_eq!(k.fit(&n), Fit::Yes(1));
        k.ran(&n);
        assert_eq!(k.fit(&n), Fit::Yes(0));
        let other = Known::default();
        other.set_from_object_info(&json!({"CheckpointLoaderSimple": {"input": {"required": {"ckpt_name": ["COMBO", {"options": ["b.safetensors"]}]}}}}));
        assert_eq!(other.fit(&n), Fit::No);
        let e = unavailable(&other.missing(&n).unwrap());
        assert!(e.message.contains("a.safetensors"), "{}", e.message);
    }
}
