//! The plugin SDK: write a plugin as plain async Rust, export it with [`export_plugin!`].
//!
//! The crate docs (`README.md` of plugin-api) show a complete plugin, compiled as a doc test;
//! `plugins/README.md` walks through one.
//!
//! What the SDK does for you:
//! - owns one tokio runtime per plugin library, created in `init`; every task, op and health
//!   check runs on it, and the host awaits the result without blocking a thread;
//! - catches panics in every entry point and every poll, and turns them into a
//!   [`PluginError`] with code `plugin_panic`;
//! - aborts a task's work when the host drops its future (cancel, timeout, shutdown);
//! - sends the plugin's `tracing` events to the host log, tagged with the plugin's name.

use std::{
    any::Any,
    future::Future,
    panic::{AssertUnwindSafe, catch_unwind},
    path::PathBuf,
    pin::Pin,
    sync::{Arc, OnceLock},
    task::Poll,
};

use abi_stable::{
    prefix_type::PrefixTypeTrait,
    std_types::{RErr, ROk, RResult, RSome, RStr, RString, RVec},
};
use async_ffi::{FfiFuture, FutureExt as _};
pub use serde_json::{Value, json};

pub use crate::{OutputFile as AbiOutputFile, PluginError, level};
use crate::{
    abi::{HostServices, OpInfo, PluginMod, PluginModRef, TaskContext, TaskRequest, TaskTypeInfo},
    codes,
};

/// Name of the symbol under which a plugin library exports its header (abi_stable's mangled
/// root-module loader name). Checked against abi_stable's constant by a unit test.
pub const ROOT_MODULE_SYMBOL: &str = "_1as_0lib_1header_0root_bmodule_bloader";

/// What a plugin tells the host about itself.
#[derive(Debug, Clone)]
pub struct Description {
    /// Plugin name, unique among loaded plugins (e.g. `imageops`).
    pub name: String,
    /// The plugin's version; use `env!("CARGO_PKG_VERSION")`.
    pub version: String,
    /// One paragraph for operators.
    pub description: String,
    /// Task types the plugin runs.
    pub task_types: Vec<TaskType>,
    /// Engine operations offered through `call_op`.
    pub ops: Vec<Op>,
}

/// A task type and the JSON Schema of its input.
#[derive(Debug, Clone)]
pub struct TaskType {
    /// `plugin.verb`, e.g. `imageops.transform`.
    pub name: String,
    /// One sentence for the API docs.
    pub description: String,
    /// JSON Schema of the task input. The host validates every submission against it.
    pub input_schema: Value,
    /// Tasks of this type that may run at once in one host; 0 lets the host decide.
    pub max_concurrency: u32,
}

/// An engine operation.
#[derive(Debug, Clone)]
pub struct Op {
    /// Name passed to `call_op`.
    pub name: String,
    /// One sentence for the docs.
    pub description: String,
}

/// A task as the plugin sees it.
#[derive(Debug, Clone)]
pub struct Task {
    /// The task id (UUIDv7).
    pub id: String,
    /// The task type.
    pub task_type: String,
    /// 1 for the first run, 2 for the first retry...
    pub attempt: u32,
    /// The validated input.
    pub input: Value,
    /// A folder of this attempt's own; write output files here.
    pub work_dir: PathBuf,
    /// True when no earlier attempt of this task can have reached an engine: the first
    /// attempt of a task never given back by a host that stopped. A plugin that looks for
    /// the work of earlier attempts (to re-attach to it) may skip looking. False when the
    /// host does not say (hosts older than this field do not), which is the safe side.
    pub first_run: bool,
}

/// A file the task produced.
#[derive(Debug, Clone)]
pub struct OutputFile {
    /// Where the file is (normally inside [`Task::work_dir`]).
    pub path: PathBuf,
    /// MIME type.
    pub content_type: String,
    /// Name to store it under.
    pub name: String,
}

/// What a successful task returns.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Files for the host to store.
    pub files: Vec<OutputFile>,
    /// Extra result data (a JSON object), merged into the task's `result`.
    pub result: Value,
}

impl Output {
    /// An output with only result data.
    pub fn result(result: Value) -> Self {
        Self {
            files: Vec::new(),
            result,
        }
    }

    /// Adds a file.
    pub fn with_file(
        mut self,
        path: impl Into<PathBuf>,
        content_type: &str,
        name: impl Into<String>,
    ) -> Self {
        self.files.push(OutputFile {
            path: path.into(),
            content_type: content_type.to_owned(),
            name: name.into(),
        });
        self
    }
}

/// The host's services for one running task.
#[derive(Clone)]
pub struct Context {
    inner: TaskContext,
}

impl Context {
    /// Reports progress, 0 to 100, with a short message. Cheap; the host throttles storage.
    pub fn progress(&self, percent: f32, message: &str) {
        self.inner.progress(percent, RStr::from_str(message));
    }

    /// Records a line in the task's log (also visible in the host log).
    pub fn log(&self, level: u8, message: &str) {
        self.inner.log(level, RStr::from_str(message));
    }

    /// Offers a live preview of the running task: an image file (`content_type` `image/jpeg`,
    /// `image/png`, `image/webp`, `image/gif`) that the plugin wrote inside the task's work
    /// folder. The host stores the latest one (at most about two a second; the file is read
    /// when stored, so write each preview to a new file) and publishes a `preview` event.
    /// Cheap; never blocks. A host that predates previews logs it at TRACE level instead.
    pub fn preview(&self, path: &std::path::Path, content_type: &str) {
        let message =
            serde_json::json!({"path": path.to_string_lossy(), "content_type": content_type});
        self.inner
            .log(crate::level::PREVIEW, RStr::from_str(&message.to_string()));
    }

    /// Fetches a URL (or a key of the host's storage) into the work folder through the host's
    /// fetcher (size limit, timeout, SSRF guard). Answers the local path.
    pub async fn fetch(&self, url: &str) -> Result<PathBuf, PluginError> {
        self.fetch_inner(url, None).await
    }

    /// Like [`Context::fetch`], saving the file under `file_name` in the work folder.
    pub async fn fetch_as(&self, url: &str, file_name: &str) -> Result<PathBuf, PluginError> {
        self.fetch_inner(url, Some(file_name)).await
    }

    async fn fetch_inner(&self, url: &str, name: Option<&str>) -> Result<PathBuf, PluginError> {
        let name = name
            .map(RString::from)
            .map_or(abi_stable::std_types::RNone, RSome);
        match self.inner.fetch(RString::from(url), name).await {
            ROk(path) => Ok(PathBuf::from(path.into_string())),
            RErr(e) => Err(e),
        }
    }
}

/// A plugin. Implement this and call [`export_plugin!`](crate::export_plugin) once.
pub trait Plugin: Sized + Send + Sync + 'static {
    /// The plugin's configuration (`[plugin.config]` in `plugins.toml`). `Default` is the
    /// default configuration the plugin ships; use `#[serde(default)]` so partial tables work.
    type Config: serde::Serialize + serde::de::DeserializeOwned + Default + Send + 'static;

    /// Describes the plugin. Called before `init` too, so it must not depend on state.
    fn describe() -> Description;

    /// Creates the plugin from its configuration. Runs on the plugin's runtime.
    fn init(config: Self::Config) -> impl Future<Output = Result<Self, PluginError>> + Send;

    /// Runs one task. Runs on the plugin's runtime; dropped (aborted) if the host cancels.
    fn run_task(
        self: Arc<Self>,
        task: Task,
        ctx: Context,
    ) -> impl Future<Output = Result<Output, PluginError>> + Send + 'static;

    /// Asks the engine to stop the task's work. When [`Plugin::stops_on_cancel`] is false (the
    /// default) the SDK then aborts the task's future; when it is true the future is left to
    /// end by itself (answering `cancelled` once the engine stopped), and the host drops it
    /// only after its cancel grace.
    fn cancel_task(self: Arc<Self>, task_id: String) -> impl Future<Output = ()> + Send + 'static {
        let _ = task_id;
        async {}
    }

    /// Runs an engine operation named in [`Description::ops`].
    fn call_op(
        self: Arc<Self>,
        name: String,
        args: Value,
    ) -> impl Future<Output = Result<Value, PluginError>> + Send + 'static {
        let _ = args;
        async move {
            Err(PluginError::fatal(
                codes::UNKNOWN_OP,
                format!("this plugin has no op {name:?}"),
            ))
        }
    }

    /// Reports health as a JSON object; `Err` when an engine is unreachable.
    fn health(
        self: Arc<Self>,
    ) -> impl Future<Output = Result<Value, PluginError>> + Send + 'static {
        async { Ok(json!({"status": "ok"})) }
    }

    /// Whether [`Plugin::cancel_task`] makes the task's `run_task` future end by itself (the
    /// host then waits for it, so the task's CANCELLED means the engine stopped). Default
    /// false: the SDK aborts the future right after `cancel_task` returns.
    fn stops_on_cancel(&self) -> bool {
        false
    }

    /// Concurrency limit for a task type once configured; 0 keeps the described value.
    fn max_concurrency(&self, task_type: &str) -> u32 {
        let _ = task_type;
        0
    }

    /// The plugin's default time limit, in seconds, for one attempt of a task type; 0 leaves it
    /// to the host (no limit unless its configuration sets one). The host cancels an attempt
    /// that runs longer (through [`Plugin::cancel_task`]) and fails the task with `timeout`. A
    /// task's own `timeout_secs` and the host's per-type setting take precedence.
    fn timeout_secs(&self, task_type: &str) -> u32 {
        let _ = task_type;
        0
    }

    /// Worker threads of the plugin's runtime.
    fn worker_threads(config: &Self::Config) -> usize {
        let _ = config;
        2
    }

    /// Called once before the host exits.
    fn shutdown(&self) {}
}

/// The `first_run` flag of a task request's `meta_json` (false when absent or unreadable).
fn first_run(meta_json: &str) -> bool {
    serde_json::from_str::<Value>(meta_json)
        .ok()
        .and_then(|m| m.get("first_run").and_then(Value::as_bool))
        .unwrap_or(false)
}

/// The `extra_json` of a task type: `{}`, or `{"timeout_secs": n}` when the plugin sets a
/// default time limit.
fn type_extra(timeout_secs: u32) -> RString {
    if timeout_secs == 0 {
        "{}".into()
    } else {
        json!({ "timeout_secs": timeout_secs }).to_string().into()
    }
}

/// The state behind one exported plugin. Created by [`export_plugin!`](crate::export_plugin).
#[doc(hidden)]
pub struct State<P> {
    runtime: OnceLock<tokio::runtime::Runtime>,
    plugin: OnceLock<Arc<P>>,
    /// The running tasks' futures by task id, so `cancel_task` can abort them.
    tasks: std::sync::Mutex<Vec<(String, tokio::task::AbortHandle)>>,
}

impl<P> Default for State<P> {
    fn default() -> Self {
        Self::new()
    }
}

impl<P> State<P> {
    /// An uninitialised plugin.
    pub const fn new() -> Self {
        Self {
            runtime: OnceLock::new(),
            plugin: OnceLock::new(),
            tasks: std::sync::Mutex::new(Vec::new()),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}

fn panic_error(place: &str, payload: &(dyn Any + Send)) -> PluginError {
    PluginError::fatal(
        codes::PLUGIN_PANIC,
        format!("plugin panicked in {place}: {}", panic_message(payload)),
    )
}

/// Runs `f`, turning a panic into a `plugin_panic` error.
fn guard<T>(place: &str, f: impl FnOnce() -> Result<T, PluginError>) -> Result<T, PluginError> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(r) => r,
        Err(p) => Err(panic_error(place, &*p)),
    }
}

/// A JoinHandle that aborts its task when dropped: the host dropping a future stops the work.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl<T> Future for AbortOnDrop<T> {
    type Output = Result<T, tokio::task::JoinError>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx)
    }
}

/// A future whose every poll is under `catch_unwind`; a panic ends it with `on_panic`'s value.
struct PollGuard<F: Future> {
    fut: Pin<Box<F>>,
    on_panic: fn(String) -> F::Output,
    done: bool,
}

impl<F: Future> Future for PollGuard<F> {
    type Output = F::Output;
    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> Poll<F::Output> {
        if self.done {
            return Poll::Ready((self.on_panic)("polled after a panic".into()));
        }
        let this = &mut *self;
        match catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx))) {
            Ok(p) => p,
            Err(payload) => {
                this.done = true;
                Poll::Ready((this.on_panic)(panic_message(&*payload)))
            }
        }
    }
}

fn guarded_ffi<T: Send + 'static>(
    fut: impl Future<Output = RResult<T, PluginError>> + Send + 'static,
) -> FfiFuture<RResult<T, PluginError>> {
    PollGuard {
        fut: Box::pin(fut),
        on_panic: |m| {
            RErr(PluginError::fatal(
                codes::PLUGIN_PANIC,
                format!("plugin panicked in poll: {m}"),
            ))
        },
        done: false,
    }
    .into_ffi()
}

/// Awaits a spawned job and maps its failure modes to `PluginError`.
async fn join<T>(
    started: Result<AbortOnDrop<Result<T, PluginError>>, PluginError>,
    place: &'static str,
) -> RResult<T, PluginError> {
    let handle = match started {
        Ok(h) => h,
        Err(e) => return RErr(e),
    };
    match handle.await {
        Ok(Ok(v)) => ROk(v),
        Ok(Err(e)) => RErr(e),
        Err(e) if e.is_panic() => RErr(panic_error(place, &*e.into_panic())),
        Err(_) => RErr(PluginError::fatal(codes::CANCELLED, "the task was aborted")),
    }
}

fn to_rstring(v: &Value) -> RString {
    RString::from(v.to_string())
}

impl<P: Plugin> State<P> {
    fn ready(&self) -> Result<(&tokio::runtime::Runtime, &Arc<P>), PluginError> {
        match (self.runtime.get(), self.plugin.get()) {
            (Some(rt), Some(p)) => Ok((rt, p)),
            _ => Err(PluginError::fatal(
                codes::NOT_INITIALIZED,
                "init was not called or failed",
            )),
        }
    }

    /// Spawns the future `make` builds on the plugin runtime, under the panic guards.
    fn spawn<T, Fut>(
        &'static self,
        place: &'static str,
        make: impl FnOnce(Arc<P>) -> Result<Fut, PluginError>,
    ) -> Result<AbortOnDrop<Result<T, PluginError>>, PluginError>
    where
        T: Send + 'static,
        Fut: Future<Output = Result<T, PluginError>> + Send + 'static,
    {
        guard(place, || {
            let (rt, plugin) = self.ready()?;
            let _enter = rt.enter();
            let fut = make(plugin.clone())?;
            Ok(AbortOnDrop(rt.spawn(fut)))
        })
    }

    /// Entry point `describe`.
    pub fn describe(&self) -> RResult<crate::PluginInfo, PluginError> {
        guard("describe", || {
            let d = P::describe();
            let plugin = self.plugin.get();
            let task_types = d
                .task_types
                .iter()
                .map(|t| {
                    let configured = plugin.map_or(0, |p| p.max_concurrency(&t.name));
                    TaskTypeInfo {
                        name: t.name.as_str().into(),
                        description: t.description.as_str().into(),
                        input_schema_json: to_rstring(&t.input_schema),
                        max_concurrency: if configured > 0 {
                            configured
                        } else {
                            t.max_concurrency
                        },
                        extra_json: type_extra(plugin.map_or(0, |p| p.timeout_secs(&t.name))),
                    }
                })
                .collect::<RVec<_>>();
            let default_config = serde_json::to_string(&P::Config::default())
                .map_err(|e| PluginError::fatal(codes::INTERNAL, format!("default config: {e}")))?;
            Ok(crate::PluginInfo {
                name: d.name.into(),
                version: d.version.into(),
                api_version: crate::API_VERSION.into(),
                description: d.description.into(),
                task_types,
                ops: d
                    .ops
                    .into_iter()
                    .map(|o| OpInfo {
                        name: o.name.into(),
                        description: o.description.into(),
                    })
                    .collect(),
                default_config_json: default_config.into(),
                extra_json: "{}".into(),
            })
        })
        .into()
    }

    /// Entry point `init`.
    pub fn init(
        &'static self,
        host: HostServices,
        config_json: RString,
    ) -> RResult<(), PluginError> {
        guard("init", || {
            if self.plugin.get().is_some() {
                return Err(PluginError::fatal(
                    codes::INTERNAL,
                    "init was already called",
                ));
            }
            let text = config_json.as_str().trim();
            let config: P::Config = if text.is_empty() || text == "null" {
                P::Config::default()
            } else {
                serde_json::from_str(text).map_err(|e| {
                    PluginError::fatal(codes::INVALID_CONFIG, format!("invalid config: {e}"))
                })?
            };
            crate::log_bridge::install(host);
            let name = P::describe().name;
            let rt = self.runtime.get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(P::worker_threads(&config).max(1))
                    .thread_name(format!("plugin-{name}"))
                    .enable_all()
                    .build()
                    .expect("plugin runtime")
            });
            let plugin = rt.block_on(P::init(config))?;
            let _ = self.plugin.set(Arc::new(plugin));
            Ok(())
        })
        .into()
    }

    /// Entry point `run_task`.
    pub fn run_task(
        &'static self,
        req: TaskRequest,
        ctx: TaskContext,
    ) -> FfiFuture<RResult<crate::TaskOutput, PluginError>> {
        let task_id = req.task_id.as_str().to_owned();
        let started = self.spawn("run_task", move |plugin| {
            let input: Value = serde_json::from_str(req.input_json.as_str())
                .map_err(|e| PluginError::invalid_input(format!("input is not JSON: {e}")))?;
            let task = Task {
                id: req.task_id.into_string(),
                task_type: req.task_type.into_string(),
                attempt: req.attempt,
                input,
                work_dir: PathBuf::from(req.work_dir.into_string()),
                first_run: first_run(req.meta_json.as_str()),
            };
            Ok(plugin.run_task(task, Context { inner: ctx }))
        });
        let key = started.as_ref().ok().map(|h| {
            let handle = h.0.abort_handle();
            let id = handle.id();
            self.tasks
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push((task_id, handle));
            id
        });
        guarded_ffi(async move {
            let out = join(started, "run_task").await;
            if let Some(key) = key {
                self.tasks
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .retain(|(_, h)| h.id() != key);
            }
            out.map(|out: Output| crate::TaskOutput {
                files: out
                    .files
                    .into_iter()
                    .map(|f| crate::OutputFile {
                        path: f.path.to_string_lossy().as_ref().into(),
                        content_type: f.content_type.into(),
                        name: f.name.into(),
                    })
                    .collect(),
                result_json: if out.result.is_null() {
                    "{}".into()
                } else {
                    to_rstring(&out.result)
                },
            })
        })
    }

    /// Entry point `cancel_task`.
    pub fn cancel_task(&'static self, task_id: RString) -> FfiFuture<()> {
        let started = self.spawn("cancel_task", move |plugin| {
            let id = task_id.into_string();
            let abort = !plugin.stops_on_cancel();
            let fut = plugin.cancel_task(id.clone());
            Ok(async move {
                fut.await;
                if abort {
                    for (t, h) in self
                        .tasks
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .iter()
                    {
                        if *t == id {
                            h.abort();
                        }
                    }
                }
                Ok(())
            })
        });
        let fut = guarded_ffi(join(started, "cancel_task"));
        async move {
            let _ = fut.await;
        }
        .into_ffi()
    }

    /// Entry point `call_op`.
    pub fn call_op(
        &'static self,
        name: RString,
        args_json: RString,
    ) -> FfiFuture<RResult<RString, PluginError>> {
        let started = self.spawn("call_op", move |plugin| {
            let text = args_json.as_str().trim();
            let args: Value = if text.is_empty() {
                Value::Null
            } else {
                serde_json::from_str(text).map_err(|e| {
                    PluginError::invalid_input(format!("op arguments are not JSON: {e}"))
                })?
            };
            Ok(plugin.call_op(name.into_string(), args))
        });
        guarded_ffi(async move { join(started, "call_op").await.map(|v| to_rstring(&v)) })
    }

    /// Entry point `health`.
    pub fn health(&'static self) -> FfiFuture<RResult<RString, PluginError>> {
        let started = self.spawn("health", |plugin| Ok(plugin.health()));
        guarded_ffi(async move { join(started, "health").await.map(|v| to_rstring(&v)) })
    }

    /// Entry point `shutdown`.
    pub fn shutdown(&'static self) {
        let _ = guard("shutdown", || {
            if let Some(p) = self.plugin.get() {
                p.shutdown();
            }
            Ok(())
        });
    }
}

/// Builds the root module from the entry points `export_plugin!` generates.
#[doc(hidden)]
pub fn build_module(module: PluginMod) -> PluginModRef {
    module.leak_into_prefix()
}

/// Exports a [`Plugin`] implementation as an aihost plugin library.
///
/// Use once, at the root of a `cdylib` crate: `aihost_plugin_api::export_plugin!(MyPlugin);`
#[macro_export]
macro_rules! export_plugin {
    ($plugin:ty) => {
        #[doc(hidden)]
        pub mod __aihost_plugin_exports {
            use super::*;
            use $crate::__private::abi_stable::{
                library::{
                    __call_root_module_loader, CheckTypeLayout, LibHeader, RootModuleResult,
                },
                std_types::{RResult, RString},
            };
            use $crate::__private::async_ffi::FfiFuture;

            static STATE: $crate::sdk::State<$plugin> = $crate::sdk::State::new();

            extern "C" fn describe() -> RResult<$crate::PluginInfo, $crate::PluginError> {
                STATE.describe()
            }
            extern "C" fn init(
                host: $crate::HostServices,
                config_json: RString,
            ) -> RResult<(), $crate::PluginError> {
                STATE.init(host, config_json)
            }
            extern "C" fn run_task(
                req: $crate::TaskRequest,
                ctx: $crate::TaskContext,
            ) -> FfiFuture<RResult<$crate::TaskOutput, $crate::PluginError>> {
                STATE.run_task(req, ctx)
            }
            extern "C" fn cancel_task(task_id: RString) -> FfiFuture<()> {
                STATE.cancel_task(task_id)
            }
            extern "C" fn call_op(
                name: RString,
                args_json: RString,
            ) -> FfiFuture<RResult<RString, $crate::PluginError>> {
                STATE.call_op(name, args_json)
            }
            extern "C" fn health() -> FfiFuture<RResult<RString, $crate::PluginError>> {
                STATE.health()
            }
            extern "C" fn shutdown() {
                STATE.shutdown()
            }

            fn root_module() -> $crate::PluginModRef {
                $crate::sdk::build_module($crate::PluginMod {
                    describe,
                    init,
                    run_task,
                    cancel_task,
                    call_op,
                    health,
                    shutdown,
                })
            }

            extern "C" fn erased_root_module() -> RootModuleResult {
                __call_root_module_loader(root_module)
            }

            /// The header the host looks up to load this library.
            #[unsafe(export_name = "_1as_0lib_1header_0root_bmodule_bloader")]
            pub static LIB_HEADER: LibHeader = unsafe {
                LibHeader::from_constructor::<$crate::PluginModRef>(
                    erased_root_module,
                    CheckTypeLayout::Yes,
                )
            };
        }
    };
}
