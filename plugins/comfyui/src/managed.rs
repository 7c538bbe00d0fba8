//! What the plugin keeps per instance beside its connection (`engine.rs`): the supervisor of
//! a launched instance (`supervise.rs`), its model manifest (`models.rs`), what it has and has
//! loaded (`routing.rs`), its ComfyUI folder; and the one monitor task per instance that reads
//! its model lists on (re)connect, calls `/free` when it has been idle `idle_free_secs`, and
//! restarts a supervised instance whose running prompt made no progress for `stall_secs`.
//!
//! Separate from `lib.rs` so the plugin's state stays one table and the background work per
//! instance lives in one place.

use std::{
    path::PathBuf,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use serde_json::{Value, json};

use crate::{
    engine::Instance,
    models::{ModelSpec, Provision},
    routing::{Fit, Known, Want},
    supervise::{InstanceConfig, Supervisor},
};

/// The plugin's extras for one instance.
pub(crate) struct Managed {
    /// Present when the plugin launches the instance.
    pub(crate) supervisor: Option<Arc<Supervisor>>,
    /// ComfyUI's folder when known (supervised).
    pub(crate) dir: Option<PathBuf>,
    /// ComfyUI's input folder when known (supervised, or `input_dir` given).
    pub(crate) input_dir: Option<PathBuf>,
    /// The manifest's progress.
    pub(crate) provision: Provision,
    /// Its models.
    pub(crate) known: Known,
    /// Bumped whenever a task takes or leaves it (the idle clock of `/free` restarts).
    activity: std::sync::atomic::AtomicU64,
}

impl Managed {
    /// The extras of one configured instance.
    pub(crate) fn new(cfg: &InstanceConfig) -> Arc<Managed> {
        let dir = cfg.comfyui_dir();
        let input_dir = cfg
            .input_dir
            .as_ref()
            .map(PathBuf::from)
            .or_else(|| dir.as_ref().map(|d| d.join("input")));
        Arc::new(Managed {
            supervisor: cfg
                .launch
                .as_ref()
                .map(|l| Supervisor::new(&cfg.url, l.clone())),
            dir,
            input_dir,
            provision: Provision::default(),
            known: Known::default(),
            activity: std::sync::atomic::AtomicU64::new(0),
        })
    }

    /// Records work on it (a task took or left it).
    pub(crate) fn touch(&self) {
        self.activity.fetch_add(1, Ordering::AcqRel);
    }

    /// Whether it may take tasks now: manifest done, and (supervised) the child answers.
    pub(crate) fn ready(&self) -> bool {
        self.provision.done() && self.supervisor.as_ref().is_none_or(|s| s.running())
    }

    /// How well it fits a task: `No` when lacking a model, or (per-task model URLs) without
    /// a models folder.
    pub(crate) fn fit(&self, want: &Want) -> Fit {
        if want.folder && self.dir.is_none() {
            return Fit::No;
        }
        self.known.fit(&want.needs)
    }

    /// The health entry of its extras.
    pub(crate) fn report(&self) -> Value {
        let mut v = json!({"ready": self.ready(), "models": self.known.report()});
        if let Some(s) = &self.supervisor {
            v["supervised"] = s.report();
        }
        if self.dir.is_some() {
            v["manifest"] = self.provision.report();
        }
        v
    }

    /// Starts its background work: the manifest then the supervisor (launched instances),
    /// and the monitor.
    pub(crate) fn start(
        self: &Arc<Self>,
        inst: &Arc<Instance>,
        manifest: Vec<ModelSpec>,
        idle_free: Duration,
        stall: Duration,
    ) {
        match (&self.supervisor, &self.dir) {
            (Some(sup), Some(dir)) => {
                let (me, sup, dir, url) =
                    (self.clone(), sup.clone(), dir.clone(), inst.url.clone());
                tokio::spawn(async move {
                    if manifest.is_empty() {
                        me.provision.skip();
                    } else {
                        sup.set_phase("downloading_models");
                        me.provision.run(&dir, &manifest, &url).await;
                    }
                    let known = me.clone();
                    sup.run(move || {
                        known.known.invalidate();
                        known.known.unloaded();
                    })
                    .await;
                });
            }
            _ => self.provision.skip(),
        }
        let (me, inst) = (self.clone(), inst.clone());
        tokio::spawn(async move { me.monitor(inst, idle_free, stall).await });
    }

    /// Every 500 ms: read the model lists when stale; `/free` after `idle_free` without work;
    /// restart a supervised instance whose prompt is silent for `stall`.
    async fn monitor(self: Arc<Self>, inst: Arc<Instance>, idle_free: Duration, stall: Duration) {
        let mut last_busy = Instant::now();
        let mut freed = true;
        let mut busy_since: Option<Instant> = None;
        let mut seen_activity = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let conns = inst.connections.load(Ordering::Relaxed);
            if inst.is_connected() && self.known.stale(conns) {
                match inst.get_json("/object_info").await {
                    Ok(info) => {
                        self.known.set_from_object_info(&info);
                        self.known.read_done(conns);
                    }
                    Err(e) => {
                        tracing::debug!(url = %inst.url, error = %e, "cannot read ComfyUI's models")
                    }
                }
            }
            let activity = self.activity.load(Ordering::Acquire);
            if activity != seen_activity {
                seen_activity = activity;
                last_busy = Instant::now();
                freed = false;
            }
            let busy = inst.inflight.load(Ordering::Acquire) > 0;
            if busy {
                last_busy = Instant::now();
                freed = false;
                let since = *busy_since.get_or_insert_with(Instant::now);
                let quiet = inst.last_message().map_or(since, |m| m.max(since));
                if let Some(sup) = &self.supervisor
                    && !stall.is_zero()
                    && sup.running()
                    && quiet.elapsed() >= stall
                {
                    sup.request_restart(format!(
                        "its running prompt made no progress for {} s",
                        stall.as_secs()
                    ));
                    busy_since = Some(Instant::now());
                }
            } else {
                busy_since = None;
                if !idle_free.is_zero()
                    && !freed
                    && last_busy.elapsed() >= idle_free
                    && inst.is_connected()
                {
                    let body = json!({"unload_models": true, "free_memory": true});
                    match inst.post_json("/free", &body).await {
                        Ok(_) => {
                            tracing::info!(url = %inst.url, "ComfyUI idle: models unloaded");
                            self.known.unloaded();
                            freed = true;
                        }
                        Err(e) => tracing::debug!(url = %inst.url, error = %e, "/free failed"),
                    }
                }
            }
        }
    }

    /// Removes the task's uploads from ComfyUI's input folder (known folders only).
    pub(crate) async fn remove_uploads(&self, subfolder: &str) {
        if let Some(input) = &self.input_dir {
            let dir = input.join(subfolder);
            if let Err(e) = tokio::fs::remove_dir_all(&dir).await
                && e.kind() != std::io::ErrorKind::NotFound
            {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a task's uploads");
            }
        }
    }
}

/// `model_unavailable` when no instance fits `want` (every one known to lack a model).
pub(crate) fn none_fits(
    managed: &[Arc<Managed>],
    want: &Want,
) -> Option<aihost_plugin_api::PluginError> {
    if managed.iter().any(|m| m.fit(want) != Fit::No) {
        return None;
    }
    let mut missing = Vec::new();
    for m in managed {
        for n in m.known.missing(&want.needs).unwrap_or_default() {
            if !missing.contains(&n) {
                missing.push(n);
            }
        }
    }
    Some(crate::routing::unavailable(&missing))
}

impl crate::ComfyUi {
    /// The extras of `inst`.
    pub(crate) fn managed_of(&self, inst: &Arc<Instance>) -> Arc<Managed> {
        let k = self
            .instances
            .iter()
            .position(|i| Arc::ptr_eq(i, inst))
            .expect("an instance of the pool");
        self.managed[k].clone()
    }

    /// What a task asks of an instance: the models its graph names (less the inputs its
    /// per-task models will set), a models folder when it brings model URLs. Refuses a model
    /// URL outside the allow-list at once (`model_url_refused`), and a task no instance can
    /// serve (`model_unavailable`).
    pub(crate) fn want(
        &self,
        graph: &Value,
        models: &[crate::models::TaskModel],
    ) -> Result<Want, aihost_plugin_api::PluginError> {
        for m in models {
            crate::models::check_task_model(m, &self.config.model_url_hosts)?;
        }
        let needs = crate::routing::needs(graph)
            .into_iter()
            .filter(|n| {
                !models
                    .iter()
                    .any(|m| m.node == n.node && m.input == n.input)
            })
            .collect();
        let want = Want {
            needs,
            folder: !models.is_empty(),
        };
        if let Some(e) = none_fits(&self.managed, &want) {
            return Err(e);
        }
        Ok(want)
    }

    /// Fetches the task's model URLs into the instance's models folder and sets their names
    /// in the graph.
    pub(crate) async fn fetch_models(
        &self,
        ctx: &aihost_plugin_api::sdk::Context,
        managed: &Managed,
        models: &[crate::models::TaskModel],
        graph: &mut Value,
    ) -> Result<(), aihost_plugin_api::PluginError> {
        let Some(dir) = &managed.dir else {
            return Ok(());
        };
        for (n, m) in models.iter().enumerate() {
            ctx.progress(
                1.5,
                &format!("fetching model {} of {}", n + 1, models.len()),
            );
            let name =
                crate::models::fetch_task_model(ctx, m, dir, self.config.model_url_max_bytes)
                    .await?;
            if graph.get(&m.node).is_none() {
                return Err(crate::error::fatal(
                    aihost_plugin_api::codes::INVALID_INPUT,
                    format!("models: the graph has no node {:?}", m.node),
                ));
            }
            graph[&m.node]["inputs"][&m.input] = json!(name);
            managed.known.invalidate();
        }
        Ok(())
    }
}

/// What a supervised instance is doing, for the health error while no instance answers:
/// `; supervised: downloading_models; manifest: 1 of 2 files, 120 of 300 bytes` (empty when
/// it is not supervised).
pub(crate) fn summary(report: &Value) -> String {
    let sup = &report["supervised"];
    let Some(phase) = sup["phase"].as_str() else {
        return String::new();
    };
    let mut out = format!("; supervised: {phase}, {} restarts", sup["restarts"]);
    if let Some(exit) = sup["last_exit"].as_str() {
        out.push_str(&format!(", last exit {exit}"));
    }
    if let Some(files) = report["manifest"]["files"].as_array()
        && !files.is_empty()
    {
        let done = files.iter().filter(|f| f["status"] == "ready").count();
        let bytes: u64 = files.iter().filter_map(|f| f["bytes"].as_u64()).sum();
        let total: u64 = files.iter().filter_map(|f| f["total"].as_u64()).sum();
        out.push_str(&format!(
            "; manifest: {done} of {} files ready, {bytes} of {total} bytes",
            files.len()
        ));
    }
    out
}
