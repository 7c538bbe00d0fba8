//! The frozen v1 binary interface between the aihost host and its plugins.
//!
//! Everything here crosses a dynamic-library boundary, so every type is `#[repr(C)]` and
//! `StableAbi`, strings and vectors are abi_stable's `RString`/`RVec`, and values that will
//! evolve (task input, output metadata, op arguments, future fields) travel as JSON strings.
//!
//! **The layout of everything in this file is frozen for all of 1.x.** abi_stable's layout check
//! accepts a plugin whose root module has *more* entries than the host's, but refuses one with
//! *fewer* ("too many fields"): a host that appended an entry after `shutdown` would refuse every
//! plugin built before it. The same holds for the callback traits and every type that crosses.
//! `tests/e2e/abi_compat.rs` proves this with frozen copies of the 1.0 layout and a test-only 1.1
//! that grew by one entry. So new capabilities arrive without touching the layout:
//!
//! - new engine operations as `call_op` names (listed in `PluginInfo::ops`);
//! - new fields inside the JSON strings (`input_json`, `result_json`, `extra_json`,
//!   `meta_json`, `default_config_json`), which both sides ignore when they do not know them;
//! - new task types.
//!
//! A change of layout is a 2.0, which the host refuses to mix with 1.x plugins in one line
//! (`plugin_wrong_interface`) before abi_stable's check runs.

use abi_stable::{
    StableAbi, declare_root_module_statics,
    library::RootModule,
    package_version_strings, sabi_trait,
    sabi_types::VersionStrings,
    std_types::{RArc, ROption, RResult, RStr, RString, RVec},
};
use async_ffi::FfiFuture;

/// Log levels as they cross the boundary (a plain integer, so the set can grow).
pub mod level {
    /// An error the operator must look at.
    pub const ERROR: u8 = 1;
    /// Something unexpected that was handled.
    pub const WARN: u8 = 2;
    /// Normal operation.
    pub const INFO: u8 = 3;
    /// Detail for debugging.
    pub const DEBUG: u8 = 4;
    /// Very verbose detail.
    pub const TRACE: u8 = 5;
    /// Not a log line: on a task's log (`TaskContextApi::log`), the message is a JSON object
    /// `{"path", "content_type"}` naming a live preview image the plugin wrote in the task's
    /// work folder (see `Context::preview`). Hosts that predate it record the message as a
    /// TRACE line (levels above TRACE are TRACE), which is harmless.
    pub const PREVIEW: u8 = 64;
}

/// An error returned by a plugin.
///
/// `code` is a stable snake_case string. The codes the host understands are listed in
/// [`crate::codes`]; a plugin may use others, which the host reports as they are.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct PluginError {
    /// Stable, machine-readable snake_case code, e.g. `invalid_input`.
    pub code: RString,
    /// Human-readable explanation.
    pub message: RString,
    /// Whether running the task again may succeed.
    pub retryable: bool,
}

/// A task type a plugin can run.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct TaskTypeInfo {
    /// Globally unique name, `plugin.verb` by convention (e.g. `imageops.transform`).
    pub name: RString,
    /// One sentence for the API docs.
    pub description: RString,
    /// JSON Schema (draft 2020-12) of the task's `input`, as JSON text.
    pub input_schema_json: RString,
    /// How many tasks of this type may run at once in one host process; 0 lets the host decide.
    pub max_concurrency: u32,
    /// Later fields, as a JSON object. Known keys: `timeout_secs` (integer, the plugin's
    /// default time limit of one attempt; absent or 0 for none). Unknown keys are ignored.
    pub extra_json: RString,
}

/// An engine operation a plugin offers through `call_op` (e.g. ComfyUI's queue status).
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct OpInfo {
    /// Name passed to `call_op`.
    pub name: RString,
    /// One sentence for the docs.
    pub description: RString,
}

/// What a plugin is and what it offers.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct PluginInfo {
    /// Plugin name (unique among loaded plugins).
    pub name: RString,
    /// The plugin's own version (semver).
    pub version: RString,
    /// The plugin-api version the plugin was built against.
    pub api_version: RString,
    /// One paragraph for operators.
    pub description: RString,
    /// Task types the plugin runs.
    pub task_types: RVec<TaskTypeInfo>,
    /// Engine operations the plugin offers.
    pub ops: RVec<OpInfo>,
    /// The plugin's default configuration as a JSON object.
    pub default_config_json: RString,
    /// Reserved for later fields, as a JSON object (`{}` today).
    pub extra_json: RString,
}

/// One task handed to a plugin.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct TaskRequest {
    /// The task's id (a UUIDv7 string).
    pub task_id: RString,
    /// The task type, one of those the plugin registered.
    pub task_type: RString,
    /// 1 for the first run, 2 for the first retry, and so on.
    pub attempt: u32,
    /// The task input (already validated against the type's schema), as JSON text.
    pub input_json: RString,
    /// A folder that belongs to this attempt alone; output files go here. The host removes it.
    pub work_dir: RString,
    /// More about the task, as a JSON object; keys a side does not know are ignored. Today:
    /// `first_run` (true when no earlier attempt of this task can have reached an engine; see
    /// `sdk::Task::first_run`), absent otherwise.
    pub meta_json: RString,
}

/// A file a task produced, to be stored by the host.
#[repr(C)]
#[derive(StableAbi, Debug, Clone, PartialEq)]
pub struct OutputFile {
    /// Absolute path of the file (normally inside the task's work folder).
    pub path: RString,
    /// MIME type, e.g. `image/png`.
    pub content_type: RString,
    /// File name to store it under (the key becomes `outputs/{task_id}/{name}`).
    pub name: RString,
}

/// The result of a successful task.
#[repr(C)]
#[derive(StableAbi, Debug, Clone)]
pub struct TaskOutput {
    /// Files to store.
    pub files: RVec<OutputFile>,
    /// Any further result data, a JSON object merged into the task's `result`.
    pub result_json: RString,
}

/// Services the host offers to a plugin for its whole life.
#[sabi_trait]
pub trait HostServicesApi: Send + Sync + Clone {
    /// The most verbose level the host will record (see [`level`]).
    fn max_level(&self) -> u8;

    /// Records a log event from the plugin. Never blocks.
    #[sabi(last_prefix_field)]
    fn log(&self, level: u8, target: RStr<'_>, message: RStr<'_>);
}

/// Host services as the plugin holds them.
pub type HostServices = HostServicesApi_TO<'static, RArc<()>>;

/// Services the host offers to one running task.
#[sabi_trait]
pub trait TaskContextApi: Send + Sync + Clone {
    /// Reports progress (0 to 100) with a short message. Never blocks; the host throttles.
    fn progress(&self, percent: f32, message: RStr<'_>);

    /// Records a log line attached to this task. Never blocks.
    fn log(&self, level: u8, message: RStr<'_>);

    /// Fetches a URL (or a key of the host's own storage) into the task's work folder through
    /// the host's fetcher and its policy (size limit, timeout, SSRF guard). `file_name` is the
    /// name to give the file, or none to derive one. Answers the local path.
    #[sabi(last_prefix_field)]
    fn fetch(
        &self,
        url: RString,
        file_name: ROption<RString>,
    ) -> FfiFuture<RResult<RString, PluginError>>;
}

/// Task services as the plugin holds them.
pub type TaskContext = TaskContextApi_TO<'static, RArc<()>>;

/// The root module every plugin library exports: the v1 interface, frozen for all of 1.x (see the
/// module docs for why, and how the interface grows instead).
#[repr(C)]
#[derive(StableAbi)]
#[sabi(kind(Prefix(prefix_ref = PluginModRef)))]
pub struct PluginMod {
    /// Describes the plugin. Callable before `init`; after `init` it may reflect the config.
    pub describe: extern "C" fn() -> RResult<PluginInfo, PluginError>,
    /// Initialises the plugin once with the host's services and its config (a JSON object).
    pub init: extern "C" fn(host: HostServices, config_json: RString) -> RResult<(), PluginError>,
    /// Runs one task. Dropping the future aborts the task's work.
    pub run_task: extern "C" fn(
        req: TaskRequest,
        ctx: TaskContext,
    ) -> FfiFuture<RResult<TaskOutput, PluginError>>,
    /// Asks the engine to stop a running task (e.g. ComfyUI interrupt, SIGTERM to FaceFusion).
    pub cancel_task: extern "C" fn(task_id: RString) -> FfiFuture<()>,
    /// Calls an engine operation with JSON arguments; answers JSON.
    pub call_op: extern "C" fn(
        name: RString,
        args_json: RString,
    ) -> FfiFuture<RResult<RString, PluginError>>,
    /// Reports the health of the plugin and its engines as JSON.
    pub health: extern "C" fn() -> FfiFuture<RResult<RString, PluginError>>,
    /// Stops background work before the host exits.
    #[sabi(last_prefix_field)]
    pub shutdown: extern "C" fn(),
}

impl RootModule for PluginModRef {
    declare_root_module_statics! {PluginModRef}
    const BASE_NAME: &'static str = "aihost_plugin";
    const NAME: &'static str = "aihost plugin";
    const VERSION_STRINGS: VersionStrings = package_version_strings!();
}
