//! Opening one plugin library and talking to it through the v1 root module.
//!
//! Every way a library can be refused gets one line ([`LoadError`]); abi_stable's full layout
//! report is logged at debug level only.

use std::path::{Path, PathBuf};

use abi_stable::{
    library::{LibraryError, RootModule, lib_header_from_path},
    std_types::{RErr, ROk, RString},
};
use aihost_plugin_api::{
    HostServices, PluginError, PluginModRef, TaskContext, TaskOutput, TaskRequest,
    check_api_version,
};
use serde::Serialize;
use serde_json::Value;

use crate::error_codes;

/// A task type as the host keeps it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct TaskTypeDesc {
    /// Task type name.
    pub name: String,
    /// One sentence.
    pub description: String,
    /// JSON Schema of the input.
    pub input_schema: Value,
    /// Concurrency limit from the plugin (0: host default).
    pub max_concurrency: u32,
    /// The plugin's default time limit of one attempt, in seconds (0: none); from the task
    /// type's `extra_json`.
    pub timeout_secs: u32,
}

/// An engine operation.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct OpDesc {
    /// Name.
    pub name: String,
    /// One sentence.
    pub description: String,
}

/// What a plugin says about itself, in host types.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PluginDesc {
    /// Plugin name.
    pub name: String,
    /// Plugin version.
    pub version: String,
    /// plugin-api version it was built against.
    pub api_version: String,
    /// Description.
    pub description: String,
    /// Task types.
    pub task_types: Vec<TaskTypeDesc>,
    /// Ops.
    pub ops: Vec<OpDesc>,
    /// Default configuration.
    pub default_config: Value,
}

/// Why a library could not be loaded. Each renders as one line.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LoadError {
    /// No file at the path.
    #[error("{path}: no such file")]
    MissingFile {
        /// The path.
        path: PathBuf,
    },
    /// The file is not a loadable shared library.
    #[error("{path}: not a shared library ({reason})")]
    NotALibrary {
        /// The path.
        path: PathBuf,
        /// The loader's reason, first line.
        reason: String,
    },
    /// Not a complete ELF shared library for this machine (checked before opening).
    #[error("{path}: not a complete shared library for this machine ({reason}); not opened")]
    InvalidLibrary {
        /// The path.
        path: PathBuf,
        /// What is wrong, where.
        reason: String,
    },
    /// The private copy to open could not be made.
    #[error("{path}: {reason}")]
    CopyFailed {
        /// The path.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A shared library without an aihost plugin header.
    #[error(
        "{path}: not an aihost plugin (no plugin header exported; was it built with export_plugin!?)"
    )]
    NotAPlugin {
        /// The path.
        path: PathBuf,
    },
    /// An abi_stable library for some other program.
    #[error("{path}: not an aihost plugin (it exports abi_stable module {found:?})")]
    ForeignModule {
        /// The path.
        path: PathBuf,
        /// The module name it exports.
        found: String,
    },
    /// Built against an incompatible plugin-api.
    #[error("{path}: plugin {reason}")]
    WrongInterface {
        /// The path.
        path: PathBuf,
        /// One line from the semver check.
        reason: String,
    },
    /// The interface version matches but the layout does not.
    #[error(
        "{path}: layout of the plugin interface does not match this host (rebuild the plugin against plugin-api {host}; details at debug level)"
    )]
    LayoutMismatch {
        /// The path.
        path: PathBuf,
        /// This host's interface version.
        host: &'static str,
    },
    /// `describe` failed.
    #[error("{path}: describe failed: {error}")]
    DescribeFailed {
        /// The path.
        path: PathBuf,
        /// The plugin's error.
        error: PluginError,
    },
    /// The plugin's version does not meet the manifest's requirement.
    #[error("{path}: plugin {name} is version {version}, but plugins.toml requires {required}")]
    VersionMismatch {
        /// The path.
        path: PathBuf,
        /// Plugin name.
        name: String,
        /// Its version.
        version: String,
        /// The requirement.
        required: String,
    },
    /// The manifest entry names another plugin than the library holds.
    #[error("{path}: plugins.toml entry {entry:?} points at a library whose plugin is {found:?}")]
    NameMismatch {
        /// The path.
        path: PathBuf,
        /// Entry name.
        entry: String,
        /// Name from describe.
        found: String,
    },
    /// `init` failed.
    #[error("{path}: plugin {name} failed to initialise: {error}")]
    InitFailed {
        /// The path.
        path: PathBuf,
        /// Plugin name.
        name: String,
        /// The plugin's error.
        error: PluginError,
    },
    /// Two plugins register the same task type.
    #[error(
        "{path}: plugin {name} registers task type {task_type:?}, already registered by plugin {other}"
    )]
    DuplicateTaskType {
        /// The path.
        path: PathBuf,
        /// Plugin name.
        name: String,
        /// The task type.
        task_type: String,
        /// The plugin that has it.
        other: String,
    },
    /// Two plugins with one name.
    #[error("{path}: a plugin named {name} is already loaded from {other}")]
    DuplicateName {
        /// The path.
        path: PathBuf,
        /// Plugin name.
        name: String,
        /// The loaded one's path.
        other: PathBuf,
    },
    /// The library file changed after it was loaded.
    #[error(
        "{path}: this library is already loaded and has changed on disk; restart aihost to load the new version (libraries are never unloaded)"
    )]
    NeedsRestart {
        /// The path.
        path: PathBuf,
    },
    /// A task type's schema is not a valid JSON Schema.
    #[error("{path}: task type {task_type:?} has an invalid input schema: {reason}")]
    InvalidSchema {
        /// The path.
        path: PathBuf,
        /// Task type.
        task_type: String,
        /// Why.
        reason: String,
    },
}

impl LoadError {
    /// Stable error code.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            LoadError::MissingFile { .. } => error_codes::PLUGIN_MISSING_FILE,
            LoadError::NotALibrary { .. } => error_codes::PLUGIN_NOT_A_LIBRARY,
            LoadError::InvalidLibrary { .. } => error_codes::PLUGIN_INVALID_LIBRARY,
            LoadError::CopyFailed { .. } => error_codes::PLUGIN_COPY_FAILED,
            LoadError::NotAPlugin { .. } | LoadError::ForeignModule { .. } => {
                error_codes::PLUGIN_NOT_A_PLUGIN
            }
            LoadError::WrongInterface { .. } => error_codes::PLUGIN_WRONG_INTERFACE,
            LoadError::LayoutMismatch { .. } => error_codes::PLUGIN_LAYOUT_MISMATCH,
            LoadError::DescribeFailed { .. } => error_codes::PLUGIN_DESCRIBE_FAILED,
            LoadError::VersionMismatch { .. } => error_codes::PLUGIN_VERSION_MISMATCH,
            LoadError::NameMismatch { .. } => error_codes::PLUGIN_NAME_MISMATCH,
            LoadError::InitFailed { .. } => error_codes::PLUGIN_INIT_FAILED,
            LoadError::DuplicateTaskType { .. } => error_codes::PLUGIN_DUPLICATE_TASK_TYPE,
            LoadError::DuplicateName { .. } => error_codes::PLUGIN_DUPLICATE_NAME,
            LoadError::NeedsRestart { .. } => error_codes::PLUGIN_NEEDS_RESTART,
            LoadError::InvalidSchema { .. } => error_codes::PLUGIN_INVALID_SCHEMA,
        }
    }
}

/// An opened (not yet initialised) plugin library.
#[derive(Clone)]
pub(crate) struct Library {
    /// Where it was loaded from (canonical).
    pub path: PathBuf,
    /// What it says about itself.
    pub desc: PluginDesc,
    module: PluginModRef,
}

/// Longest message of a plugin error whose code was replaced (characters).
const MAX_REPLACED_MESSAGE: usize = 500;

/// Whether a plugin's error code is acceptable as it is: `[a-z0-9_]{1,64}`.
fn is_clean_code(code: &str) -> bool {
    (1..=64).contains(&code.len())
        && code
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A plugin's error as clients may see it: a code outside `[a-z0-9_]{1,64}` (markup, NUL,
/// thousands of characters) becomes `plugin_error`, with the original code (cut to 64
/// characters) at the start of the message; that message loses its control characters and
/// is cut to [`MAX_REPLACED_MESSAGE`] characters.
pub(crate) fn clean_plugin_error(e: PluginError) -> PluginError {
    if is_clean_code(e.code.as_str()) {
        return e;
    }
    let original: String = e.code.as_str().chars().take(64).collect();
    let message: String = format!("plugin error code `{original}`: {}", e.message.as_str())
        .chars()
        .filter(|c| !c.is_control())
        .take(MAX_REPLACED_MESSAGE)
        .collect();
    PluginError {
        code: RString::from(error_codes::PLUGIN_ERROR),
        message: RString::from(message),
        retryable: e.retryable,
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").trim().to_owned()
}

/// `timeout_secs` of a task type's `extra_json`; 0 when absent or not a number that fits.
fn extra_timeout(extra_json: &str) -> u32 {
    serde_json::from_str::<Value>(extra_json)
        .ok()
        .and_then(|v| v.get("timeout_secs").and_then(Value::as_u64))
        .and_then(|n| u32::try_from(n).ok())
        .unwrap_or(0)
}

fn describe(module: PluginModRef, path: &Path) -> Result<PluginDesc, LoadError> {
    let info = match (module.describe())() {
        ROk(info) => info,
        RErr(error) => {
            return Err(LoadError::DescribeFailed {
                path: path.into(),
                error,
            });
        }
    };
    let task_types = info
        .task_types
        .iter()
        .map(|t| {
            let schema = serde_json::from_str(t.input_schema_json.as_str()).map_err(|e| {
                LoadError::InvalidSchema {
                    path: path.into(),
                    task_type: t.name.to_string(),
                    reason: e.to_string(),
                }
            })?;
            Ok(TaskTypeDesc {
                name: t.name.to_string(),
                description: t.description.to_string(),
                input_schema: schema,
                max_concurrency: t.max_concurrency,
                timeout_secs: extra_timeout(t.extra_json.as_str()),
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(PluginDesc {
        name: info.name.to_string(),
        version: info.version.to_string(),
        api_version: info.api_version.to_string(),
        description: info.description.to_string(),
        task_types,
        ops: info
            .ops
            .iter()
            .map(|o| OpDesc {
                name: o.name.to_string(),
                description: o.description.to_string(),
            })
            .collect(),
        default_config: serde_json::from_str(info.default_config_json.as_str())
            .unwrap_or(Value::Null),
    })
}

impl Library {
    /// Opens a library: copies it to a private folder (see `private_copy.rs`), checks that the
    /// copy is a complete ELF shared library for this machine (`elf.rs`), opens the copy, then
    /// checks the plugin header, the interface version (with semver, before the layout) and
    /// the layout, and calls `describe`. `path` (the original, canonical) is what reports name.
    pub(crate) fn open(path: &Path) -> Result<Library, LoadError> {
        if !path.is_file() {
            return Err(LoadError::MissingFile { path: path.into() });
        }
        let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
        let copy = super::private_copy::PrivateCopy::of(&path).map_err(|reason| {
            LoadError::CopyFailed {
                path: path.clone(),
                reason,
            }
        })?;
        super::elf::check(&copy.file).map_err(|refusal| match refusal {
            super::elf::Refusal::NotElf(reason) => LoadError::NotALibrary {
                path: path.clone(),
                reason,
            },
            super::elf::Refusal::Invalid(reason) => LoadError::InvalidLibrary {
                path: path.clone(),
                reason,
            },
        })?;
        // The loader's messages name the file it opened: name the original instead.
        let copy_name = copy.path.display().to_string();
        let original = path.display().to_string();
        let header = lib_header_from_path(&copy.path).map_err(|e| match e {
            LibraryError::OpenError { err, .. } => LoadError::NotALibrary {
                path: path.clone(),
                reason: first_line(&err.to_string()).replace(&copy_name, &original),
            },
            LibraryError::GetSymbolError { .. } => LoadError::NotAPlugin { path: path.clone() },
            other => LoadError::NotALibrary {
                path: path.clone(),
                reason: first_line(&other.to_string()),
            },
        })?;
        let consts = header.root_mod_consts();
        let base = consts.base_name().as_str().to_owned();
        if base != PluginModRef::BASE_NAME {
            return Err(LoadError::ForeignModule { path, found: base });
        }
        let version = header.version_strings().version.as_str().to_owned();
        check_api_version(&version).map_err(|reason| LoadError::WrongInterface {
            path: path.clone(),
            reason,
        })?;
        let module = header.init_root_module::<PluginModRef>().map_err(|e| {
            tracing::debug!(path = %path.display(), "abi_stable layout report:\n{e}");
            match e {
                LibraryError::AbiInstability(_) => LoadError::LayoutMismatch {
                    path: path.clone(),
                    host: aihost_plugin_api::API_VERSION,
                },
                other => LoadError::NotALibrary {
                    path: path.clone(),
                    reason: first_line(&other.to_string()),
                },
            }
        })?;
        // The copy can go: the loader keeps its mapping (and the contents) alive.
        drop(copy);
        let desc = describe(module, &path)?;
        Ok(Library { path, desc, module })
    }

    /// Initialises the plugin with its config (blocking: the plugin builds its runtime and runs
    /// its async init; call from a blocking thread), then describes it again so configured
    /// concurrency limits show.
    pub(crate) fn init(&mut self, host: HostServices, config: &Value) -> Result<(), LoadError> {
        let text = if config.is_null() {
            String::new()
        } else {
            config.to_string()
        };
        if let RErr(error) = (self.module.init())(host, RString::from(text)) {
            return Err(LoadError::InitFailed {
                path: self.path.clone(),
                name: self.desc.name.clone(),
                error,
            });
        }
        self.desc = describe(self.module, &self.path)?;
        Ok(())
    }

    /// Runs a task; dropping the returned future aborts the plugin's work.
    pub(crate) async fn run_task(
        &self,
        req: TaskRequest,
        ctx: TaskContext,
    ) -> Result<TaskOutput, PluginError> {
        (self.module.run_task())(req, ctx)
            .await
            .into_result()
            .map_err(clean_plugin_error)
    }

    /// Asks the engine to stop a task.
    pub(crate) async fn cancel_task(&self, task_id: &str) {
        (self.module.cancel_task())(RString::from(task_id)).await
    }

    /// Calls an engine operation.
    pub(crate) async fn call_op(&self, name: &str, args: &Value) -> Result<Value, PluginError> {
        let out = (self.module.call_op())(RString::from(name), RString::from(args.to_string()))
            .await
            .into_result()
            .map_err(clean_plugin_error)?;
        Ok(serde_json::from_str(out.as_str()).unwrap_or(Value::String(out.into_string())))
    }

    /// Asks the plugin for its health.
    pub(crate) async fn health(&self) -> Result<Value, PluginError> {
        let out = (self.module.health())()
            .await
            .into_result()
            .map_err(clean_plugin_error)?;
        Ok(serde_json::from_str(out.as_str()).unwrap_or(Value::String(out.into_string())))
    }

    /// Tells the plugin the host is stopping.
    pub(crate) fn shutdown(&self) {
        (self.module.shutdown())()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: &str, message: &str) -> PluginError {
        PluginError {
            code: RString::from(code),
            message: RString::from(message),
            retryable: true,
        }
    }

    #[test]
    fn clean_codes_pass_and_others_become_plugin_error() {
        let ok = clean_plugin_error(err("invalid_workflow_2", "m\nline"));
        assert_eq!(ok.code.as_str(), "invalid_workflow_2");
        assert_eq!(ok.message.as_str(), "m\nline");
        for bad in [
            "<script>alert(1)</script>",
            "a\0b",
            "",
            "Upper",
            "dash-code",
            &"x".repeat(65),
        ] {
            let e = clean_plugin_error(err(bad, "boom\u{7}"));
            assert_eq!(e.code.as_str(), error_codes::PLUGIN_ERROR, "{bad:?}");
            assert!(e.retryable);
            assert!(
                !e.message.as_str().chars().any(char::is_control),
                "{:?}",
                e.message
            );
            assert!(e.message.as_str().ends_with("boom"), "{:?}", e.message);
        }
        let long = clean_plugin_error(err(&"<".repeat(5000), &"y".repeat(5000)));
        assert_eq!(long.message.as_str().chars().count(), MAX_REPLACED_MESSAGE);
        assert!(long.message.as_str().contains(&"<".repeat(64)));
        assert!(!long.message.as_str().contains(&"<".repeat(65)));
    }
}
