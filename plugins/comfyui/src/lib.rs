//! # comfyui: drives ComfyUI over HTTP and one WebSocket per instance
//!
//! One task type, `comfyui.workflow`: a workflow template with parameters
//! (`{"workflow": NAME, "params": {...}}`) or any API-format graph
//! (`{"workflow": {...}}` or `{"workflow_json": {...}}`). Media parameters given as URLs are fetched through the host
//! and uploaded to ComfyUI's input folder under a per-task subfolder.
//!
//! How a task runs:
//! 1. take a slot on a reachable instance of the pool (`queue_depth` prompts per instance,
//!    so the next prompt already waits in ComfyUI when one finishes); the host runs twice as
//!    many tasks as there are slots, so finished tasks download their outputs while the next
//!    ones already hold the slots;
//! 2. upload media, then `POST /prompt` with our `client_id` and a prompt id we choose, so the
//!    socket's messages can be routed before the answer arrives;
//! 3. follow the instance's one shared WebSocket (every message filtered by `prompt_id`) until
//!    `executing` with `node: null`; while the socket is down, and every
//!    `history_check_secs` while it is up, poll `/history/{prompt_id}` so no task waits
//!    forever; a prompt that is neither in the history nor in the queue was lost by a restart
//!    and the attempt fails retryably;
//! 4. stream every output file `/history` lists from `/view` into the work folder.
//!
//! Supervised instances (`supervise.rs`, launched and restarted by the plugin), the model
//! manifest and per-task model URLs (`models.rs`), and model-aware routing (`routing.rs`)
//! hang off each instance in `managed.rs`.
//!
//! Ops: `queue_status`, `system_stats`, `interrupt`, `list_workflows`, `availability` (the
//! host leaves tasks in its queue while no instance is reachable).
//!
//! Where things are: `config.rs` (the `[plugin.config]` table), `input.rs` (task input,
//! schema, graph), `pool.rs` (instance slots), `run.rs` (one task from upload to outputs),
//! `graph.rs` (what an API-format graph is), `ops.rs` (ops and health), `error.rs` (error code and messages), `engine.rs` (one
//! instance's HTTP calls and socket), `templates.rs` (workflow templates). This file holds the
//! plugin's state and its `Plugin` impl.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use aihost_plugin_api::{
    codes,
    sdk::{Context, Description, Output, Plugin, PluginError, Task, TaskType, Value},
};

mod attach;
mod availability;
mod config;
pub mod engine;
mod error;
mod graph;
mod input;
mod managed;
mod models;
mod ops;
mod outputs;
mod pool;
mod previews;
mod routing;
mod run;
mod supervise;
pub mod templates;

pub use config::Config;
pub use error::{INVALID_WORKFLOW, describe_validation};
pub use input::input_schema;
pub use models::{MODEL_URL_REFUSED, ModelSpec};
pub use routing::MODEL_UNAVAILABLE;
pub use supervise::{InstanceConfig, Launch};

use engine::Instance;
use error::fatal;
use templates::Template;

/// The task type this plugin runs.
pub const TASK_TYPE: &str = "comfyui.workflow";

/// Templates known to `describe` once `init` has loaded them.
static TEMPLATES: OnceLock<Vec<Template>> = OnceLock::new();

/// The plugin.
pub struct ComfyUi {
    config: Config,
    instances: Vec<Arc<Instance>>,
    /// Per instance (same order): supervisor, manifest, known models (`managed.rs`).
    managed: Vec<Arc<managed::Managed>>,
    templates: Vec<Template>,
    /// task id -> (instance, prompt id) while a prompt of the task is in ComfyUI.
    running: Mutex<HashMap<String, (Arc<Instance>, String)>>,
    /// Tasks being cancelled: their interrupt is reported as `cancelled`.
    cancelled: Mutex<HashSet<String>>,
    /// Held while a slot is chosen, so two tasks never take the same last slot.
    pick: Mutex<()>,
    /// Woken whenever a slot is freed.
    slot_freed: tokio::sync::Notify,
}

impl Plugin for ComfyUi {
    type Config = Config;

    fn describe() -> Description {
        let templates = TEMPLATES.get().map(Vec::as_slice).unwrap_or(&[]);
        Description {
            name: "comfyui".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Runs ComfyUI workflows (templates or API-format graphs) on a pool of ComfyUI servers.".into(),
            task_types: vec![TaskType {
                name: TASK_TYPE.into(),
                description: "Runs a ComfyUI workflow and returns every output file.".into(),
                input_schema: input_schema(templates),
                max_concurrency: Config::default().queue_depth,
            }],
            ops: ops::describe(),
        }
    }

    fn worker_threads(config: &Config) -> usize {
        config.runtime_threads.clamp(1, 16)
    }

    async fn init(config: Config) -> Result<Self, PluginError> {
        let mut config = config.with_env(|k| std::env::var(k).ok());
        config.check()?;
        if config.client_id.is_empty() {
            config.client_id = uuid::Uuid::new_v4().to_string();
        }
        let templates = templates::load_dir(std::path::Path::new(&config.workflows_dir))
            .map_err(|e| fatal(codes::INVALID_CONFIG, e.to_string()))?;
        if templates.is_empty() {
            tracing::warn!(dir = %config.workflows_dir, "no workflow templates found");
        }
        let _ = TEMPLATES.set(templates.clone());
        let timeout = Duration::from_secs(config.request_timeout_secs.max(1));
        let manifest = models::manifest(&config.models, &config.models_file)?;
        let configured = config.all_instances();
        let instances: Vec<Arc<Instance>> = configured
            .iter()
            .map(|c| Instance::new(&c.url, &config.client_id, timeout))
            .collect();
        let managed: Vec<Arc<managed::Managed>> =
            configured.iter().map(managed::Managed::new).collect();
        for (i, m) in instances.iter().zip(&managed) {
            i.spawn_socket(
                Duration::from_millis(config.reconnect_max_ms.max(100)),
                Duration::from_secs(config.ws_idle_secs.max(1)),
            );
            m.start(
                i,
                manifest.clone(),
                Duration::from_secs(config.idle_free_secs),
                Duration::from_secs(config.stall_secs),
            );
        }
        let urls: Vec<&str> = instances.iter().map(|i| i.url.as_str()).collect();
        tracing::info!(?urls, templates = templates.len(), "comfyui ready");
        Ok(ComfyUi {
            config,
            instances,
            managed,
            templates,
            running: Mutex::default(),
            cancelled: Mutex::default(),
            pick: Mutex::new(()),
            slot_freed: tokio::sync::Notify::new(),
        })
    }

    async fn run_task(self: Arc<Self>, task: Task, ctx: Context) -> Result<Output, PluginError> {
        self.run(task, ctx).await
    }

    async fn cancel_task(self: Arc<Self>, task_id: String) {
        self.cancel(task_id).await
    }

    fn stops_on_cancel(&self) -> bool {
        // The task's future ends with `cancelled` once ComfyUI reports the prompt stopped.
        true
    }

    async fn call_op(self: Arc<Self>, name: String, args: Value) -> Result<Value, PluginError> {
        self.call(&name, &args).await
    }

    async fn health(self: Arc<Self>) -> Result<Value, PluginError> {
        self.health_report().await
    }

    fn shutdown(&self) {
        // Supervised children are stopped (SIGTERM, then SIGKILL to their process group).
        for s in self.managed.iter().filter_map(|m| m.supervisor.as_ref()) {
            s.shutdown();
        }
    }

    fn max_concurrency(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            // Twice the slots: while `queue_depth` prompts per instance are in ComfyUI, as many
            // tasks can download their outputs or wait ready for the next free slot (the
            // slots alone bound what is queued in ComfyUI).
            u32::try_from(self.instances.len() * self.depth() * 2).unwrap_or(u32::MAX)
        } else {
            0
        }
    }
}

aihost_plugin_api::export_plugin!(ComfyUi);
