//! # facefusion: face swapping with FaceFusion 3.x
//!
//! One task type, `facefusion.faceswap`. FaceFusion has no service of its own, so each task
//! runs its CLI (`python facefusion.py headless-run …`) as a child process, following the
//! contract recorded from real runs of FaceFusion 3.8.1:
//!
//! - inputs are fetched through the host into the task's scratch folder, which is also
//!   FaceFusion's `--temp-path` and `--jobs-path` (FaceFusion's shared defaults make concurrent
//!   runs destroy each other);
//! - the child runs in the checkout folder, in its own process group, with
//!   `--output-audio-encoder aac` for mp4/mov/m4v (the default, flac, silently drops audio);
//! - progress comes from stderr (tqdm bars separated by `\r`);
//! - success is exit 0 **and** a non-empty output; exit 0 without output is
//!   `content_rejected`, exit-1 messages become codes, exit 2 is `engine_misconfigured`;
//! - cancel, timeout and a dropped task future stop the whole group: SIGTERM, then SIGKILL
//!   after `kill_grace_secs`; the scratch folders are removed in every case.
//!
//! The plugin loads when FaceFusion is not installed: its health then says what is missing.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use aihost_plugin_api::{
    codes, level,
    sdk::{Context, Description, Output, Plugin, PluginError, Task, TaskType, Value, json},
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub mod error;
pub mod input;
pub mod progress;
pub mod runner;

use error::Error;
use input::{Input, MediaType};

/// The task type this plugin runs.
pub const TASK_TYPE: &str = "facefusion.faceswap";
/// Environment variable overriding [`Config::dir`].
pub const ENV_DIR: &str = "FACEFUSION_DIR";
/// Environment variable overriding [`Config::python`].
pub const ENV_PYTHON: &str = "FACEFUSION_PYTHON";

/// The plugin's configuration: the `[plugin.config]` table of `plugins.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The FaceFusion checkout folder (holds `facefusion.py`); FaceFusion runs there. Empty:
    /// not installed. Overridden by `FACEFUSION_DIR`.
    pub dir: String,
    /// The Python interpreter of FaceFusion's environment (e.g. its venv's `bin/python`).
    /// Overridden by `FACEFUSION_PYTHON`.
    pub python: String,
    /// The entry script, relative to `dir`.
    pub script: String,
    /// The one-shot sub-command: `headless-run` in 3.x (`run` on FaceFusion 4).
    pub command: String,
    /// `--execution-providers`, e.g. `["cuda"]` or `["cpu"]`; empty lets FaceFusion choose.
    pub execution_providers: Vec<String>,
    /// `--execution-thread-count` (1 to 32; frames processed in parallel).
    pub execution_thread_count: u32,
    /// Extra arguments appended to every run (e.g. `["--video-memory-strategy", "tolerant"]`).
    pub extra_args: Vec<String>,
    /// A run is stopped after this many seconds (`timeout`).
    pub timeout_secs: u64,
    /// Seconds between SIGTERM and SIGKILL when a run is stopped.
    pub kill_grace_secs: u64,
    /// Face swaps that run at once in one host (one per GPU is the safe choice).
    pub concurrency: u32,
    /// ffprobe, used to read a video target's size when `resolution` is given.
    pub ffprobe: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            dir: String::new(),
            python: "python3".into(),
            script: "facefusion.py".into(),
            command: "headless-run".into(),
            execution_providers: vec!["cpu".into()],
            execution_thread_count: 4,
            extra_args: Vec::new(),
            timeout_secs: 3600,
            kill_grace_secs: 5,
            concurrency: 1,
            ffprobe: "ffprobe".into(),
        }
    }
}

impl Config {
    /// Applies `FACEFUSION_DIR` and `FACEFUSION_PYTHON` (non-empty values win).
    pub fn with_env(mut self, get: impl Fn(&str) -> Option<String>) -> Self {
        if let Some(d) = get(ENV_DIR).filter(|v| !v.trim().is_empty()) {
            self.dir = d;
        }
        if let Some(p) = get(ENV_PYTHON).filter(|v| !v.trim().is_empty()) {
            self.python = p;
        }
        self
    }

    /// Why FaceFusion cannot run, if it cannot.
    pub fn missing(&self) -> Option<String> {
        if self.dir.trim().is_empty() {
            return Some(format!(
                "FaceFusion is not installed: set `dir` in the facefusion plugin's config or \
                 {ENV_DIR} to a FaceFusion 3.x checkout (see plugins/facefusion/README.md)"
            ));
        }
        let script = Path::new(&self.dir).join(&self.script);
        if !script.is_file() {
            return Some(format!(
                "FaceFusion is not installed: {} does not exist (set `dir` or {ENV_DIR} to a \
                 FaceFusion 3.x checkout; see plugins/facefusion/README.md)",
                script.display()
            ));
        }
        None
    }
}

/// A running task, for `cancel_task`.
struct Running {
    stop: Arc<watch::Sender<runner::Stop>>,
    done: watch::Receiver<bool>,
}

/// Asks the supervisor to stop the run when the task's future is dropped (the host drops it to
/// cancel, when its lease is lost, or at shutdown). Harmless once the run has ended.
struct StopOnDrop(Arc<watch::Sender<runner::Stop>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(runner::Stop::Cancel);
    }
}

/// The plugin.
pub struct FaceFusion {
    config: Config,
    running: Arc<Mutex<HashMap<String, Running>>>,
}

/// Removes FaceFusion's scratch folders and the fetched inputs when dropped (every exit path,
/// including a dropped future).
struct Scratch(Vec<PathBuf>);

impl Drop for Scratch {
    fn drop(&mut self) {
        for p in &self.0 {
            if p.is_dir() {
                let _ = std::fs::remove_dir_all(p);
            } else {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

fn io(what: &str) -> impl Fn(std::io::Error) -> Error + '_ {
    move |e| Error::Io(format!("{what}: {e}"))
}

/// Formats a grid value the way Python prints a float (`1.0`, `0.25`).
fn py_float(v: f64) -> String {
    format!("{v:?}")
}

/// The MIME type of an output extension.
fn content_type(ext: &str) -> &'static str {
    match ext {
        "png" => "image/png",
        "jpg" | "jpeg" => "image/jpeg",
        "webp" => "image/webp",
        "bmp" => "image/bmp",
        "tif" | "tiff" => "image/tiff",
        "mp4" | "m4v" => "video/mp4",
        "mov" => "video/quicktime",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "avi" => "video/x-msvideo",
        "mpeg" | "mpg" => "video/mpeg",
        "wmv" => "video/x-ms-wmv",
        "mxf" => "application/mxf",
        _ => "application/octet-stream",
    }
}

impl FaceFusion {
    /// The `headless-run` arguments for one task (after the interpreter).
    #[allow(clippy::too_many_arguments)]
    pub fn arguments(
        &self,
        input: &Input,
        sources: &[PathBuf],
        target: &Path,
        output: &Path,
        temp: &Path,
        jobs: &Path,
        kind: MediaType,
        scale: Option<f64>,
    ) -> Vec<String> {
        let c = &self.config;
        let mut a: Vec<String> = vec![c.script.clone(), c.command.clone()];
        let mut push = |flag: &str, values: Vec<String>| {
            a.push(flag.to_owned());
            a.extend(values);
        };
        let p = |p: &Path| p.to_string_lossy().into_owned();
        push("-s", sources.iter().map(|s| p(s)).collect());
        push("-t", vec![p(target)]);
        push("-o", vec![p(output)]);
        push("--temp-path", vec![p(temp)]);
        push("--jobs-path", vec![p(jobs)]);
        let mut processors = vec!["face_swapper".to_owned()];
        if input.face_enhancer_model.is_some() {
            processors.push("face_enhancer".into());
        }
        push("--processors", processors);
        let model = input
            .face_swapper_model
            .clone()
            .unwrap_or_else(|| input::DEFAULT_SWAPPER_MODEL.into());
        push("--face-swapper-model", vec![model]);
        if let Some(v) = &input.face_swapper_pixel_boost {
            push("--face-swapper-pixel-boost", vec![v.clone()]);
        }
        if let Some(v) = &input.face_enhancer_model {
            push("--face-enhancer-model", vec![v.clone()]);
        }
        if let Some(v) = input.face_enhancer_blend {
            push("--face-enhancer-blend", vec![v.to_string()]);
        }
        if let Some(v) = &input.face_selector_mode {
            push("--face-selector-mode", vec![v.clone()]);
        }
        if let Some(v) = &input.face_selector_order {
            push("--face-selector-order", vec![v.clone()]);
        }
        if let Some(v) = input.reference_face_position {
            push("--reference-face-position", vec![v.to_string()]);
        }
        if let Some(v) = input.reference_face_distance {
            push("--reference-face-distance", vec![py_float(v)]);
        }
        if let Some(v) = input.reference_frame_number {
            push("--reference-frame-number", vec![v.to_string()]);
        }
        match kind {
            MediaType::Image => {
                if let Some(s) = scale {
                    push("--output-image-scale", vec![py_float(s)]);
                }
                if let Some(q) = input.output_quality {
                    push("--output-image-quality", vec![q.to_string()]);
                }
            }
            MediaType::Video => {
                if let Some(s) = scale {
                    push("--output-video-scale", vec![py_float(s)]);
                }
                if let Some(q) = input.output_quality {
                    push("--output-video-quality", vec![q.to_string()]);
                }
                if let Some(v) = &input.output_video_encoder {
                    push("--output-video-encoder", vec![v.clone()]);
                }
                if let Some(v) = &input.output_video_preset {
                    push("--output-video-preset", vec![v.clone()]);
                }
                if let Some(v) = input.trim_frame_start {
                    push("--trim-frame-start", vec![v.to_string()]);
                }
                if let Some(v) = input.trim_frame_end {
                    push("--trim-frame-end", vec![v.to_string()]);
                }
                // FaceFusion's default audio encoder (flac) cannot go into these containers
                // with Debian's ffmpeg: the output silently loses its audio.
                let ext = target.extension().and_then(|e| e.to_str()).unwrap_or("");
                if matches!(ext, "mp4" | "mov" | "m4v") {
                    push("--output-audio-encoder", vec!["aac".into()]);
                }
            }
        }
        if !c.execution_providers.is_empty() {
            push("--execution-providers", c.execution_providers.clone());
        }
        push(
            "--execution-thread-count",
            vec![c.execution_thread_count.to_string()],
        );
        push("--log-level", vec!["info".into()]);
        a.extend(c.extra_args.iter().cloned());
        a
    }

    /// Reads a video's size with ffprobe.
    async fn probe_video(&self, path: &Path) -> Result<(u32, u32), Error> {
        let out = tokio::process::Command::new(&self.config.ffprobe)
            .args([
                "-v",
                "error",
                "-select_streams",
                "v:0",
                "-show_entries",
                "stream=width,height",
                "-of",
                "csv=p=0:s=x",
            ])
            .arg(path)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .map_err(|e| {
                Error::ProbeFailed(format!(
                    "cannot run {:?} to read the target's size: {e}",
                    self.config.ffprobe
                ))
            })?;
        let text = String::from_utf8_lossy(&out.stdout);
        input::parse_resolution(text.lines().next().unwrap_or("").trim_end_matches('x'))
            .filter(|_| out.status.success())
            .ok_or_else(|| {
                Error::InvalidTarget(format!(
                    "ffprobe found no video stream in the target: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ))
            })
    }

    async fn target_size(&self, path: &Path, kind: MediaType) -> Result<(u32, u32), Error> {
        if kind == MediaType::Image
            && let Ok(dims) = image::image_dimensions(path)
        {
            return Ok(dims);
        }
        self.probe_video(path).await
    }

    async fn swap(&self, task: Task, ctx: Context) -> Result<Output, Error> {
        if let Some(why) = self.config.missing() {
            return Err(Error::NotInstalled(why));
        }
        let input = input::parse(task.input)?;
        let work = task.work_dir.clone();
        let temp = work.join("facefusion-temp");
        let jobs = work.join("facefusion-jobs");
        let out_dir = work.join("out");
        let mut scratch = Scratch(vec![temp.clone(), jobs.clone()]);

        // Fetch: sources, then the target, each renamed to the extension FaceFusion expects.
        let mut sources = Vec::new();
        for (i, url) in input.sources().iter().enumerate() {
            let fetched = ctx.fetch(url).await.map_err(fetch_error)?;
            scratch.0.push(fetched.clone());
            let (kind, ext) = input::detect(&fetched)
                .map_err(|_| Error::InvalidSource(format!("source {} is not an image", i + 1)))?;
            if kind != MediaType::Image {
                return Err(Error::InvalidSource(format!(
                    "source {} is a video; sources must be images of the face",
                    i + 1
                )));
            }
            let path = work.join(format!("source-{i}.{ext}"));
            tokio::fs::rename(&fetched, &path)
                .await
                .map_err(io("rename source"))?;
            scratch.0.push(path.clone());
            sources.push(path);
        }
        ctx.progress(3.0, "fetched the source");
        let fetched = ctx.fetch(&input.target_url).await.map_err(fetch_error)?;
        scratch.0.push(fetched.clone());
        let (kind, ext) = input::detect(&fetched)?;
        if let Some(asked) = input.media_type
            && asked != kind
        {
            return Err(Error::InvalidInput(format!(
                "media_type is {} but the target is a {}",
                asked.name(),
                kind.name()
            )));
        }
        let target = work.join(format!("target.{ext}"));
        tokio::fs::rename(&fetched, &target)
            .await
            .map_err(io("rename target"))?;
        scratch.0.push(target.clone());
        ctx.progress(8.0, &format!("fetched the target ({})", kind.name()));

        let scale = match (&input.resolution, input.scale) {
            (_, Some(s)) => Some(s),
            (Some(r), None) => {
                let (bw, bh) = input::parse_resolution(r).expect("checked by parse");
                let (w, h) = self.target_size(&target, kind).await?;
                Some(input::scale_for_box(w, h, bw, bh))
            }
            (None, None) => None,
        };

        for d in [&temp, &jobs, &out_dir] {
            tokio::fs::create_dir_all(d)
                .await
                .map_err(io("create scratch folder"))?;
        }
        let output = out_dir.join(format!("result.{ext}"));
        let args = self.arguments(
            &input, &sources, &target, &output, &temp, &jobs, kind, scale,
        );
        let inv = runner::Invocation {
            python: self.config.python.clone(),
            args,
            cwd: PathBuf::from(&self.config.dir),
            output: output.clone(),
            timeout: Duration::from_secs(self.config.timeout_secs.max(1)),
            grace: Duration::from_secs(self.config.kill_grace_secs),
        };
        tracing::debug!(task_id = %task.id, args = ?inv.args, "starting FaceFusion");
        ctx.log(
            level::INFO,
            &format!("starting FaceFusion ({})", kind.name()),
        );
        ctx.progress(10.0, &format!("swapping faces ({})", kind.name()));

        let (stop_tx, stop_rx) = watch::channel(runner::Stop::No);
        let stop_tx = Arc::new(stop_tx);
        let _stop_on_drop = StopOnDrop(stop_tx.clone());
        let (done_tx, done_rx) = watch::channel(false);
        self.running.lock().expect("running lock").insert(
            task.id.clone(),
            Running {
                stop: stop_tx,
                done: done_rx,
            },
        );
        // Once the process group is gone (also when this future is dropped): remove the
        // scratch folders and inputs, and forget the run.
        let (running, id) = (self.running.clone(), task.id.clone());
        let on_exit = Box::new(move || {
            drop(scratch);
            if let Ok(mut m) = running.lock() {
                m.remove(&id);
            }
        });
        let pctx = ctx.clone();
        let finished = runner::run(
            inv,
            move |r| pctx.progress(r.percent, &r.message),
            stop_rx,
            done_tx,
            on_exit,
        )
        .await?;
        let size = runner::classify(&finished, &output)?;
        ctx.progress(100.0, "done");
        let (w, h) = self.target_size(&output, kind).await.unwrap_or((0, 0));
        let mut result = json!({"media_type": kind.name(), "size": size});
        if w > 0 {
            result["width"] = json!(w);
            result["height"] = json!(h);
        }
        if let Some(s) = scale {
            result["scale"] = json!(s);
        }
        Ok(Output::result(result).with_file(output, content_type(&ext), format!("result.{ext}")))
    }
}

fn fetch_error(e: PluginError) -> Error {
    Error::Fetch(e)
}

impl Plugin for FaceFusion {
    type Config = Config;

    fn describe() -> Description {
        Description {
            name: "facefusion".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: concat!(
                "Swaps faces in images and videos with FaceFusion 3.x, run as a child process ",
                "(headless-run) with a private scratch folder per task."
            )
            .into(),
            task_types: vec![TaskType {
                name: TASK_TYPE.into(),
                description: "Puts the face of the source image onto the faces of the target \
                              image or video."
                    .into(),
                input_schema: input::schema(),
                max_concurrency: Config::default().concurrency,
            }],
            ops: vec![],
        }
    }

    async fn init(config: Config) -> Result<Self, PluginError> {
        let config = config.with_env(|k| std::env::var(k).ok());
        if config.concurrency == 0
            || config.python.trim().is_empty()
            || config.command.trim().is_empty()
            || !(1..=32).contains(&config.execution_thread_count)
        {
            return Err(PluginError::fatal(
                codes::INVALID_CONFIG,
                "concurrency must be > 0, python and command non-empty, and \
                 execution_thread_count between 1 and 32",
            ));
        }
        match config.missing() {
            Some(why) => tracing::warn!("{why}"),
            None => tracing::info!(dir = %config.dir, python = %config.python, "facefusion ready"),
        }
        Ok(Self {
            config,
            running: Arc::new(Mutex::new(HashMap::new())),
        })
    }

    async fn run_task(self: Arc<Self>, task: Task, ctx: Context) -> Result<Output, PluginError> {
        self.swap(task, ctx).await.map_err(PluginError::from)
    }

    async fn cancel_task(self: Arc<Self>, task_id: String) {
        let done = {
            let map = self.running.lock().expect("running lock");
            map.get(&task_id).map(|r| {
                let _ = r.stop.send(runner::Stop::Cancel);
                r.done.clone()
            })
        };
        // Wait until the process group is gone and the scratch folders are removed (the host
        // drops the task's future first; the supervisor acts on that by itself and removes the
        // entry when it is done).
        if let Some(mut done) = done {
            let wait = Duration::from_secs(self.config.kill_grace_secs + 5);
            let _ = tokio::time::timeout(wait, done.wait_for(|d| *d)).await;
        }
    }

    async fn health(self: Arc<Self>) -> Result<Value, PluginError> {
        match self.config.missing() {
            Some(why) => Err(PluginError::fatal(codes::ENGINE_UNAVAILABLE, why)),
            None => Ok(json!({
                "status": "ok",
                "dir": self.config.dir,
                "python": self.config.python,
                "command": self.config.command,
                "concurrency": self.config.concurrency,
            })),
        }
    }

    fn max_concurrency(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            self.config.concurrency
        } else {
            0
        }
    }
}

aihost_plugin_api::export_plugin!(FaceFusion);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips_and_env_overrides() {
        let c = Config::default();
        let back: Config = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
        let partial: Config = serde_json::from_str(r#"{"concurrency": 2}"#).unwrap();
        assert_eq!(partial.concurrency, 2);
        assert_eq!(partial.command, "headless-run");
        assert!(serde_json::from_str::<Config>(r#"{"nope": 1}"#).is_err());
        let env = c.clone().with_env(|k| match k {
            ENV_DIR => Some("/opt/ff".into()),
            ENV_PYTHON => Some("/opt/ff/venv/bin/python".into()),
            _ => None,
        });
        assert_eq!(env.dir, "/opt/ff");
        assert_eq!(env.python, "/opt/ff/venv/bin/python");
        assert!(c.missing().unwrap().contains(ENV_DIR));
    }

    #[test]
    fn the_shipped_plugins_toml_entry_is_the_default_config() {
        let text = include_str!("../../../plugins.toml");
        let manifest: toml::Value = toml::from_str(text).unwrap();
        let entry = manifest["plugin"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"].as_str() == Some("facefusion"))
            .expect("plugins.toml lists facefusion");
        let config: Config = entry["config"].clone().try_into().unwrap();
        assert_eq!(config, Config::default());
    }

    #[test]
    fn arguments_follow_the_cli_contract() {
        let plugin = FaceFusion {
            config: Config::default(),
            running: Arc::new(Mutex::new(HashMap::new())),
        };
        let input = input::parse(json!({"source_url": "s", "target_url": "t"})).unwrap();
        let p = PathBuf::from;
        let args = plugin.arguments(
            &input,
            &[p("/w/source-0.png")],
            &p("/w/target.mp4"),
            &p("/w/out/result.mp4"),
            &p("/w/facefusion-temp"),
            &p("/w/facefusion-jobs"),
            MediaType::Video,
            Some(2.0),
        );
        let s = args.join(" ");
        assert!(s.starts_with("facefusion.py headless-run -s /w/source-0.png -t /w/target.mp4 -o /w/out/result.mp4 --temp-path /w/facefusion-temp --jobs-path /w/facefusion-jobs"), "{s}");
        assert!(s.contains("--output-audio-encoder aac"), "{s}");
        assert!(s.contains("--output-video-scale 2.0"), "{s}");
        assert!(s.contains("--face-swapper-model hyperswap_1a_256"), "{s}");
        let img = plugin.arguments(
            &input,
            &[p("/w/s.png")],
            &p("/w/target.png"),
            &p("/w/out/result.png"),
            &p("/t"),
            &p("/j"),
            MediaType::Image,
            Some(0.25),
        );
        let s = img.join(" ");
        assert!(!s.contains("--output-audio-encoder"), "{s}");
        assert!(s.contains("--output-image-scale 0.25"), "{s}");
    }
}
