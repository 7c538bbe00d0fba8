//! `testkit`: a test-only aihost plugin for the host's integration tests.
//!
//! One task type, `testkit.run`, whose `mode` picks a behaviour (success, progress, the three
//! kinds of panic, failures with retries, logging, fetching, counting executions); one op,
//! `echo`; and a health check. Each mode is documented on [`Mode`].

use std::{sync::Arc, time::Duration};

use aihost_plugin_api::{
    codes,
    sdk::{Context, Description, Op, Output, Plugin, PluginError, Task, TaskType, Value, json},
};
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt as _;

/// The task type.
pub const TASK_TYPE: &str = "testkit.run";

/// Configuration (`[plugin.config]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Per-type concurrency reported to the host; 0 (the default) lets the host decide.
    pub concurrency: u32,
    /// The plugin's default time limit of `testkit.run`, in seconds; 0 (the default): none.
    pub timeout_secs: u32,
}

/// What `testkit.run` does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Sleep `ms` (default 0), then write the file `marker` if given (its content is the task
    /// id), then succeed with `{"ok":true,"attempt":N}` and an output file `out.txt` holding the
    /// task id. A test that drops the task before `ms` elapse can check the marker is absent.
    Ok,
    /// Succeed at once with `{"ok":true}` and no file: the processor of the benchmarks, so they
    /// measure the host alone.
    Noop,
    /// Report `steps` (default 5) progress events, percent `i*100/steps`, message `step i`,
    /// for i in 1..=steps, sleeping 5 ms before each, then succeed with
    /// `{"ok":true,"steps":steps}`.
    Progress,
    /// Panic synchronously in `run_task`, before the future exists.
    PanicEntry,
    /// Panic inside the task future, on its first poll.
    PanicPoll,
    /// Panic inside a `tokio::spawn`ed task; `.await.unwrap()` re-raises it in the task future.
    PanicRuntime,
    /// Fail with code `code` (default `engine_error`), retryable if `retryable` is true, while
    /// `attempt <= fail_times`; without `fail_times`, always. Once past, succeed like `ok`
    /// (without sleeping or a marker): `{"ok":true,"attempt":N}`.
    Fail,
    /// Emit one `tracing::info!` (field `marker`, message `testkit log line {task id}`) and one
    /// `tracing::warn!` (message `testkit warn line {task id}`), then succeed with `{"ok":true}`.
    Log,
    /// Fetch `url` through the host and succeed with `{"path":..,"size":..}`, or fail with the
    /// host's fetch error unchanged.
    Fetch,
    /// Append one line, the task id, to the file `marker` (required; opened with O_APPEND,
    /// created if missing), then sleep `ms` (default 0), then succeed with `{"ok":true}`.
    /// Counting the lines counts executions.
    Count,
}

/// The input of `testkit.run`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Input {
    pub mode: Mode,
    #[serde(default)]
    pub ms: u64,
    pub marker: Option<String>,
    pub steps: Option<u32>,
    pub fail_times: Option<u32>,
    pub code: Option<String>,
    #[serde(default)]
    pub retryable: bool,
    pub url: Option<String>,
}

fn input_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": false,
        "required": ["mode"],
        "properties": {
            "mode": {"type": "string", "enum": [
                "ok", "progress", "panic_entry", "panic_poll", "panic_runtime",
                "fail", "log", "fetch", "count", "noop"
            ]},
            "ms": {"type": "integer", "minimum": 0},
            "marker": {"type": "string"},
            "steps": {"type": "integer", "minimum": 0, "maximum": 10000},
            "fail_times": {"type": "integer", "minimum": 0},
            "code": {"type": "string", "minLength": 1},
            "retryable": {"type": "boolean"},
            "url": {"type": "string"},
        },
    })
}

/// The plugin.
pub struct Testkit {
    config: Config,
}

fn io_error(what: &str, e: std::io::Error) -> PluginError {
    PluginError::fatal(codes::INTERNAL, format!("{what}: {e}"))
}

async fn sleep_ms(ms: u64) {
    if ms > 0 {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
}

async fn run(input: Input, task: Task, ctx: Context) -> Result<Output, PluginError> {
    match input.mode {
        Mode::Noop => Ok(Output::result(json!({"ok": true}))),
        Mode::Ok => {
            sleep_ms(input.ms).await;
            if let Some(marker) = &input.marker {
                tokio::fs::write(marker, &task.id)
                    .await
                    .map_err(|e| io_error("write marker", e))?;
            }
            let out = task.work_dir.join("out.txt");
            tokio::fs::write(&out, &task.id)
                .await
                .map_err(|e| io_error("write out.txt", e))?;
            Ok(
                Output::result(json!({"ok": true, "attempt": task.attempt})).with_file(
                    out,
                    "text/plain",
                    "out.txt",
                ),
            )
        }
        Mode::Progress => {
            let steps = input.steps.unwrap_or(5);
            for i in 1..=steps {
                sleep_ms(5).await;
                ctx.progress((i * 100 / steps) as f32, &format!("step {i}"));
            }
            Ok(Output::result(json!({"ok": true, "steps": steps})))
        }
        Mode::PanicEntry => unreachable!("handled in run_task"),
        Mode::PanicPoll => panic!("testkit panic_poll"),
        Mode::PanicRuntime => {
            tokio::spawn(async { panic!("testkit panic_runtime") })
                .await
                .unwrap();
            Ok(Output::default())
        }
        Mode::Fail => {
            let failing = input.fail_times.is_none_or(|n| task.attempt <= n);
            if failing {
                let code = input.code.as_deref().unwrap_or(codes::ENGINE_ERROR);
                let message = format!("testkit failure on attempt {}", task.attempt);
                return Err(if input.retryable {
                    PluginError::retryable(code, message)
                } else {
                    PluginError::fatal(code, message)
                });
            }
            Ok(Output::result(json!({"ok": true, "attempt": task.attempt})))
        }
        Mode::Log => {
            let marker = input.marker.as_deref().unwrap_or("none");
            tracing::info!(marker = %marker, "testkit log line {}", task.id);
            tracing::warn!("testkit warn line {}", task.id);
            Ok(Output::result(json!({"ok": true})))
        }
        Mode::Fetch => {
            let url = input
                .url
                .ok_or_else(|| PluginError::invalid_input("fetch needs url"))?;
            let path = ctx.fetch(&url).await?;
            let size = tokio::fs::metadata(&path)
                .await
                .map_err(|e| io_error("stat fetched file", e))?
                .len();
            Ok(Output::result(
                json!({"path": path.to_string_lossy(), "size": size}),
            ))
        }
        Mode::Count => {
            let marker = input
                .marker
                .ok_or_else(|| PluginError::invalid_input("count needs marker"))?;
            // Sleep first: a run killed during the sleep leaves no line, so the file counts
            // completed executions.
            sleep_ms(input.ms).await;
            let mut file = tokio::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&marker)
                .await
                .map_err(|e| io_error("open marker", e))?;
            // One write call per line, so concurrent appends never interleave.
            file.write_all(format!("{}\n", task.id).as_bytes())
                .await
                .map_err(|e| io_error("append marker", e))?;
            file.flush()
                .await
                .map_err(|e| io_error("flush marker", e))?;
            drop(file);
            Ok(Output::result(json!({"ok": true})))
        }
    }
}

impl Plugin for Testkit {
    type Config = Config;

    fn describe() -> Description {
        let mut task_types = vec![TaskType {
            name: TASK_TYPE.into(),
            description:
                "Does what `mode` says: succeed, progress, panic, fail, log, fetch or count.".into(),
            input_schema: input_schema(),
            max_concurrency: 0,
        }];
        // Lets the host's tests make two plugins claim one task type.
        if let Ok(extra) = std::env::var("AIHOST_TESTKIT_EXTRA_TYPE") {
            task_types.push(TaskType {
                name: extra,
                description: "A second name for testkit.run (tests only).".into(),
                input_schema: input_schema(),
                max_concurrency: 0,
            });
        }
        Description {
            name: "testkit".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: "Test-only plugin for the host's integration tests.".into(),
            task_types,
            ops: vec![Op {
                name: "echo".into(),
                description: "Answers its arguments.".into(),
            }],
        }
    }

    async fn init(config: Config) -> Result<Self, PluginError> {
        Ok(Self { config })
    }

    // Not `async fn`: `panic_entry` must panic here, before the future is built.
    #[allow(clippy::manual_async_fn)]
    fn run_task(
        self: Arc<Self>,
        task: Task,
        ctx: Context,
    ) -> impl Future<Output = Result<Output, PluginError>> + Send + 'static {
        let parsed = serde_json::from_value::<Input>(task.input.clone())
            .map_err(|e| PluginError::invalid_input(format!("invalid input: {e}")));
        if matches!(&parsed, Ok(i) if i.mode == Mode::PanicEntry) {
            panic!("testkit panic_entry");
        }
        async move { run(parsed?, task, ctx).await }
    }

    async fn call_op(self: Arc<Self>, name: String, args: Value) -> Result<Value, PluginError> {
        match name.as_str() {
            "echo" => Ok(args),
            _ => Err(PluginError::fatal(
                codes::UNKNOWN_OP,
                format!("testkit has no op {name:?}"),
            )),
        }
    }

    async fn health(self: Arc<Self>) -> Result<Value, PluginError> {
        Ok(json!({"status": "ok", "plugin": "testkit"}))
    }

    fn max_concurrency(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            self.config.concurrency
        } else {
            0
        }
    }

    fn timeout_secs(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            self.config.timeout_secs
        } else {
            0
        }
    }
}

aihost_plugin_api::export_plugin!(Testkit);
