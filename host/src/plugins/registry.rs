//! The set of loaded plugins and the task types they registered.
//!
//! Loading follows `plugins.toml` (see [`crate::manifest`]): every enabled entry, then (with
//! `autoload = true`) every other library in `dir`. A plugin that fails is recorded in
//! [`Registry::failures`] and the others load, unless its entry says `required = true`.
//! [`Registry::reload`] loads libraries added since; it never unloads or replaces one.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::SystemTime,
};

use serde::Serialize;
use serde_json::Value;

pub(crate) use super::library::Library;
use super::{
    library::{LoadError, TaskTypeDesc},
    services::host_services,
};
use crate::manifest::{PluginEntry, PluginManifest};

/// A registered task type: its plugin, description and compiled input validator.
#[derive(Clone)]
pub(crate) struct TaskTypeEntry {
    /// The plugin that runs it.
    pub plugin: Arc<Library>,
    /// Name, description, schema, concurrency.
    pub desc: Arc<TaskTypeDesc>,
    /// The compiled input schema.
    pub validator: Arc<jsonschema::Validator>,
}

/// A plugin that could not be loaded.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadFailure {
    /// The manifest entry's name, if it came from one.
    pub name: Option<String>,
    /// The library path.
    pub path: PathBuf,
    /// Stable code (`plugin_missing_file`, ...).
    pub code: String,
    /// One line.
    pub message: String,
}

impl LoadFailure {
    fn new(name: Option<&str>, path: &Path, e: &LoadError) -> Self {
        Self {
            name: name.map(str::to_owned),
            path: path.to_path_buf(),
            code: e.code().to_owned(),
            message: e.to_string(),
        }
    }
}

/// What a reload did.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReloadReport {
    /// Plugins newly loaded.
    pub loaded: Vec<String>,
    /// Libraries that failed (this time).
    pub failed: Vec<LoadFailure>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileStamp {
    len: u64,
    modified: Option<SystemTime>,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        len: m.len(),
        modified: m.modified().ok(),
    })
}

#[derive(Default)]
struct State {
    plugins: Vec<Arc<Library>>,
    types: BTreeMap<String, TaskTypeEntry>,
    files: HashMap<PathBuf, FileStamp>,
    failures: Vec<LoadFailure>,
    generation: u64,
}

/// Loaded plugins. Cheap to share behind an `Arc`.
pub(crate) struct Registry {
    manifest: PluginManifest,
    state: RwLock<State>,
}

/// A required plugin failed: the host must not start.
#[derive(Debug, thiserror::Error)]
#[error("required plugin failed to load: {0}")]
pub(crate) struct RequiredPluginFailed(pub LoadError);

/// Keywords whose meaning differs from draft 7, or that draft 7 lacks.
const BEYOND_DRAFT7: &[&str] = &[
    "$ref",
    "$dynamicRef",
    "$dynamicAnchor",
    "$recursiveRef",
    "$recursiveAnchor",
    "$anchor",
    "prefixItems",
    "unevaluatedProperties",
    "unevaluatedItems",
    "dependentRequired",
    "dependentSchemas",
    "minContains",
    "maxContains",
];

fn uses_beyond_draft7(v: &Value) -> bool {
    match v {
        Value::Object(map) => map
            .iter()
            .any(|(k, v)| BEYOND_DRAFT7.contains(&k.as_str()) || uses_beyond_draft7(v)),
        Value::Array(items) => items.iter().any(uses_beyond_draft7),
        _ => false,
    }
}

/// Compiles a task type's input schema.
///
/// A schema that uses only keywords whose meaning is the same in draft 7 and 2020-12 (every
/// schema of the plugins shipped here) is compiled as draft 7: the result validates the same,
/// and the process never builds jsonschema's draft 2020-12 meta-schema validator, which costs
/// about 40 MiB of resident memory and a few hundred milliseconds at start. Any other schema is
/// compiled under the draft it declares.
pub(crate) fn compile_schema(schema: &Value) -> Result<jsonschema::Validator, String> {
    if uses_beyond_draft7(schema) {
        return jsonschema::validator_for(schema).map_err(|e| e.to_string());
    }
    let mut plain = schema.clone();
    if let Some(obj) = plain.as_object_mut() {
        obj.remove("$schema");
    }
    jsonschema::options()
        .with_draft(jsonschema::Draft::Draft7)
        .build(&plain)
        .map_err(|e| e.to_string())
}

fn is_library_file(p: &Path) -> bool {
    matches!(
        p.extension().and_then(|e| e.to_str()),
        Some("so" | "dylib" | "dll")
    )
}

impl Registry {
    /// Loads every plugin of the manifest. Blocking (plugins initialise here): call it from a
    /// blocking thread inside a runtime.
    pub(crate) fn load(manifest: PluginManifest) -> Result<Registry, RequiredPluginFailed> {
        let reg = Registry {
            manifest,
            state: RwLock::default(),
        };
        let report = reg.load_new(true)?;
        for f in &report.failed {
            tracing::error!(code = %f.code, "{}", f.message);
        }
        Ok(reg)
    }

    /// Loads libraries that appeared since the last load (new manifest entries are not
    /// re-read: the manifest is read at start). Blocking.
    pub(crate) fn reload(&self) -> ReloadReport {
        // Only `required` entries can fail the load, and those were loaded at start.
        let report = self.load_new(false).unwrap_or_else(|e| ReloadReport {
            loaded: Vec::new(),
            failed: vec![LoadFailure::new(None, Path::new(""), &e.0)],
        });
        for f in &report.failed {
            tracing::warn!(code = %f.code, path = %f.path.display(), "plugin reload refused: {}", f.message);
        }
        report
    }

    fn candidates(&self) -> Vec<(Option<&PluginEntry>, PathBuf)> {
        let dir = self.manifest.dir.as_deref();
        let mut out: Vec<(Option<&PluginEntry>, PathBuf)> = Vec::new();
        let mut named: Vec<PathBuf> = Vec::new();
        for entry in &self.manifest.plugins {
            let path = entry.library_path(dir);
            named.push(path.canonicalize().unwrap_or_else(|_| path.clone()));
            if entry.enabled {
                out.push((Some(entry), path));
            }
        }
        if self.manifest.autoload
            && let Some(dir) = dir
            && let Ok(rd) = std::fs::read_dir(dir)
        {
            let mut files: Vec<PathBuf> = rd
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| is_library_file(p))
                .collect();
            files.sort();
            for p in files {
                let canon = p.canonicalize().unwrap_or_else(|_| p.clone());
                if !named.contains(&canon) {
                    out.push((None, p));
                }
            }
        }
        out
    }

    fn load_new(&self, first: bool) -> Result<ReloadReport, RequiredPluginFailed> {
        let mut report = ReloadReport::default();
        let mut loaded_paths = Vec::new();
        for (entry, path) in self.candidates() {
            let canon = path.canonicalize().unwrap_or_else(|_| path.clone());
            {
                let st = self.state.read().expect("registry lock");
                if let Some(old) = st.files.get(&canon) {
                    if stamp(&canon) != Some(*old) {
                        let e = LoadError::NeedsRestart {
                            path: canon.clone(),
                        };
                        report.failed.push(LoadFailure::new(
                            entry.map(|e| e.name.as_str()),
                            &canon,
                            &e,
                        ));
                    }
                    continue;
                }
            }
            match self.load_one(entry, &path) {
                Ok(name) => {
                    report.loaded.push(name);
                    loaded_paths.push(path);
                }
                Err(e) => {
                    if first && entry.is_some_and(|e| e.required) {
                        return Err(RequiredPluginFailed(e));
                    }
                    report
                        .failed
                        .push(LoadFailure::new(entry.map(|e| e.name.as_str()), &path, &e));
                }
            }
        }
        let mut st = self.state.write().expect("registry lock");
        // Keep the latest failure per path: a library fixed later should not stay reported.
        for f in &report.failed {
            st.failures.retain(|old| old.path != f.path);
            st.failures.push(f.clone());
        }
        st.failures.retain(|f| !loaded_paths.contains(&f.path));
        st.generation += 1;
        Ok(report)
    }

    fn load_one(&self, entry: Option<&PluginEntry>, path: &Path) -> Result<String, LoadError> {
        let mut lib = Library::open(path)?;
        let name = lib.desc.name.clone();
        if let Some(entry) = entry {
            if entry.name != name {
                return Err(LoadError::NameMismatch {
                    path: lib.path.clone(),
                    entry: entry.name.clone(),
                    found: name,
                });
            }
            let version = semver::Version::parse(&lib.desc.version);
            if !version.as_ref().is_ok_and(|v| entry.version.matches(v)) {
                return Err(LoadError::VersionMismatch {
                    path: lib.path.clone(),
                    name,
                    version: lib.desc.version.clone(),
                    required: entry.version.to_string(),
                });
            }
        }
        self.check_conflicts(&lib)?;
        let mut validators = Vec::new();
        for t in &lib.desc.task_types {
            let v = compile_schema(&t.input_schema).map_err(|e| LoadError::InvalidSchema {
                path: lib.path.clone(),
                task_type: t.name.clone(),
                reason: e.to_string(),
            })?;
            validators.push(Arc::new(v));
        }
        let config = entry.map_or(Value::Null, |e| e.config.clone());
        lib.init(host_services(&name), &config)?;
        // The description after init may refine a schema (e.g. the comfyui plugin adds the
        // parameters of the templates it found): validate against that one.
        let validators: Vec<_> = lib
            .desc
            .task_types
            .iter()
            .zip(validators)
            .map(|(t, pre)| compile_schema(&t.input_schema).map_or(pre, Arc::new))
            .collect();
        let stamp = stamp(&lib.path);
        let lib = Arc::new(lib);
        let mut st = self.state.write().expect("registry lock");
        for (t, validator) in lib.desc.task_types.iter().zip(validators) {
            st.types.insert(
                t.name.clone(),
                TaskTypeEntry {
                    plugin: lib.clone(),
                    desc: Arc::new(t.clone()),
                    validator,
                },
            );
        }
        if let Some(s) = stamp {
            st.files.insert(lib.path.clone(), s);
        }
        tracing::info!(
            plugin = %name,
            version = %lib.desc.version,
            path = %lib.path.display(),
            task_types = ?lib.desc.task_types.iter().map(|t| &t.name).collect::<Vec<_>>(),
            "plugin loaded"
        );
        st.plugins.push(lib);
        Ok(name)
    }

    fn check_conflicts(&self, lib: &Library) -> Result<(), LoadError> {
        let st = self.state.read().expect("registry lock");
        if let Some(other) = st.plugins.iter().find(|p| p.desc.name == lib.desc.name) {
            return Err(LoadError::DuplicateName {
                path: lib.path.clone(),
                name: lib.desc.name.clone(),
                other: other.path.clone(),
            });
        }
        for t in &lib.desc.task_types {
            if let Some(existing) = st.types.get(&t.name) {
                return Err(LoadError::DuplicateTaskType {
                    path: lib.path.clone(),
                    name: lib.desc.name.clone(),
                    task_type: t.name.clone(),
                    other: existing.plugin.desc.name.clone(),
                });
            }
        }
        Ok(())
    }

    /// The entry of a task type.
    pub(crate) fn task_type(&self, name: &str) -> Option<TaskTypeEntry> {
        self.state
            .read()
            .expect("registry lock")
            .types
            .get(name)
            .cloned()
    }

    /// Every registered task type, by name.
    pub(crate) fn task_types(&self) -> Vec<TaskTypeEntry> {
        self.state
            .read()
            .expect("registry lock")
            .types
            .values()
            .cloned()
            .collect()
    }

    /// Loaded plugins in load order.
    pub(crate) fn plugins(&self) -> Vec<Arc<Library>> {
        self.state.read().expect("registry lock").plugins.clone()
    }

    /// A loaded plugin by name.
    pub(crate) fn plugin(&self, name: &str) -> Option<Arc<Library>> {
        self.state
            .read()
            .expect("registry lock")
            .plugins
            .iter()
            .find(|p| p.desc.name == name)
            .cloned()
    }

    /// Libraries that failed to load, latest failure per library.
    pub(crate) fn failures(&self) -> Vec<LoadFailure> {
        self.state.read().expect("registry lock").failures.clone()
    }

    /// Increments on every load or reload (for caches such as the merged OpenAPI spec).
    pub(crate) fn generation(&self) -> u64 {
        self.state.read().expect("registry lock").generation
    }

    /// Calls `shutdown` on every plugin.
    pub(crate) fn shutdown(&self) {
        for p in self.plugins() {
            p.shutdown();
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn draft7_compilation_validates_like_2020_12_for_plain_schemas() {
        let schema = json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["a"],
            "additionalProperties": false,
            "properties": {
                "a": {"type": "integer", "minimum": 1},
                "b": {"oneOf": [{"const": "x"}, {"enum": ["y", "z"]}]},
                "c": {"type": "string", "pattern": "^[0-9]+x[0-9]+$"}
            }
        });
        let fast = compile_schema(&schema).unwrap();
        let full = jsonschema::validator_for(&schema).unwrap();
        for doc in [
            json!({"a": 1}),
            json!({"a": 0}),
            json!({"b": "x"}),
            json!({"a": 2, "b": "q"}),
            json!({"a": 2, "c": "64x64"}),
            json!({"a": 2, "c": "big"}),
            json!({"a": 2, "extra": true}),
        ] {
            assert_eq!(fast.is_valid(&doc), full.is_valid(&doc), "{doc}");
        }
    }

    #[test]
    fn schemas_with_newer_keywords_keep_their_draft() {
        let schema = json!({"type": "array", "prefixItems": [{"type": "integer"}], "items": false});
        assert!(uses_beyond_draft7(&schema));
        let v = compile_schema(&schema).unwrap();
        assert!(v.is_valid(&json!([1])));
        assert!(
            !v.is_valid(&json!([1, 2])),
            "2020-12 items=false after prefixItems"
        );
    }
}
