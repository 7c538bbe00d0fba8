//! # imageops: the example aihost plugin
//!
//! One task type, `imageops.transform`: fetch an image, apply a list of operations (resize,
//! crop, rotate, flip, grayscale, blur), encode it as PNG, JPEG or WebP and hand the file back
//! to the host.
//!
//! The crate is laid out the way we suggest every plugin is, one concern a file:
//!
//! 1. **`input.rs`: input types** (serde) and the **JSON Schema** the host validates
//!    submissions against, with the limits both share.
//! 2. **`transform.rs`: plain functions** that do the work (`decode`, `apply`, `encode`). They
//!    know nothing about the host, so unit tests call them directly.
//! 3. **This file:** the configuration, a **thin [`Plugin`] impl** that parses the input,
//!    fetches, runs the plain functions on a blocking thread, reports progress and returns the
//!    output, and `export_plugin!` once, at the end.
//!
//! Output formats: PNG and JPEG as usual; WebP is encoded **lossless** (the `image` crate 0.25
//! has no lossy WebP encoder), so `quality` only affects JPEG.

use std::{
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use aihost_plugin_api::{
    codes,
    sdk::{Context, Description, Output, Plugin, PluginError, Task, TaskType, json},
};
use serde::{Deserialize, Serialize};

mod input;
mod transform;

pub use input::{
    Direction, Fit, Format, Input, MAX_OPERATIONS, MAX_SIDE, MAX_SIGMA, Operation, input_schema,
    parse_input,
};
pub use transform::{apply, apply_op, decode, encode};

/// The task type this plugin runs.
pub const TASK_TYPE: &str = "imageops.transform";

// ---------------------------------------------------------------------------------------------
// 1. Configuration
// ---------------------------------------------------------------------------------------------

/// The plugin's configuration: the `[plugin.config]` table of `plugins.toml`.
///
/// `#[serde(default)]` lets an operator set only the fields they care about.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Largest image (width × height) the plugin decodes or produces.
    pub max_pixels: u64,
    /// How many transforms may run at once in one host.
    pub concurrency: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_pixels: 100_000_000,
            concurrency: 2,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 2. The plugin
// ---------------------------------------------------------------------------------------------

/// The plugin. It holds only its configuration; all state of a task lives in `run_task`.
pub struct ImageOps {
    config: Config,
}

/// Sets a flag when dropped. The host drops a task's future to cancel it; the blocking thread
/// cannot be interrupted, but it checks the flag between operations and stops early.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Plugin for ImageOps {
    type Config = Config;

    fn describe() -> Description {
        Description {
            name: "imageops".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            description: concat!(
                "Resizes, crops, rotates, flips, grayscales and blurs images, ",
                "and converts them to PNG, JPEG or lossless WebP."
            )
            .into(),
            task_types: vec![TaskType {
                name: TASK_TYPE.into(),
                description: "Applies a list of operations to an image and encodes the result."
                    .into(),
                input_schema: input_schema(),
                max_concurrency: Config::default().concurrency,
            }],
            ops: vec![],
        }
    }

    async fn init(config: Config) -> Result<Self, PluginError> {
        if config.max_pixels == 0 || config.concurrency == 0 {
            return Err(PluginError::fatal(
                codes::INVALID_CONFIG,
                "max_pixels and concurrency must be greater than 0",
            ));
        }
        tracing::info!(
            max_pixels = config.max_pixels,
            concurrency = config.concurrency,
            "imageops ready"
        );
        Ok(Self { config })
    }

    async fn run_task(self: Arc<Self>, task: Task, ctx: Context) -> Result<Output, PluginError> {
        let input = parse_input(task.input)?;
        let source = ctx.fetch(&input.source).await?;
        ctx.progress(5.0, "fetched");

        let output: PathBuf = task
            .work_dir
            .join(format!("output.{}", input.format.extension()));
        let max_pixels = self.config.max_pixels;
        let cancelled = Arc::new(AtomicBool::new(false));
        let _cancel_on_drop = CancelOnDrop(cancelled.clone());

        // Decoding, the operations and encoding are CPU-bound: run them on a blocking thread so
        // the plugin's async workers stay free.
        let (ctx2, path2) = (ctx.clone(), output.clone());
        let (width, height) = tokio::task::spawn_blocking(move || {
            let mut img = decode(&source, max_pixels)?;
            ctx2.progress(10.0, &format!("decoded {}x{}", img.width(), img.height()));
            let n = input.operations.len();
            for (i, op) in input.operations.iter().enumerate() {
                if cancelled.load(Ordering::Relaxed) {
                    return Err(PluginError::fatal(codes::CANCELLED, "cancelled"));
                }
                img = apply_op(img, op, max_pixels)?;
                let percent = 10.0 + 80.0 * (i + 1) as f32 / n as f32;
                ctx2.progress(percent, &format!("operation {} of {n} done", i + 1));
            }
            encode(&img, input.format, input.quality, &path2)?;
            ctx2.progress(100.0, "encoded");
            Ok((img.width(), img.height()))
        })
        .await
        .map_err(|e| PluginError::fatal(codes::INTERNAL, format!("image worker failed: {e}")))??;

        let format = input.format;
        let name = format!("output.{}", format.extension());
        Ok(
            Output::result(json!({"width": width, "height": height, "format": format.name()}))
                .with_file(output, format.content_type(), name),
        )
    }

    fn max_concurrency(&self, task_type: &str) -> u32 {
        if task_type == TASK_TYPE {
            self.config.concurrency
        } else {
            0
        }
    }
}

// ---------------------------------------------------------------------------------------------
// 3. Export
// ---------------------------------------------------------------------------------------------

aihost_plugin_api::export_plugin!(ImageOps);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_round_trips() {
        let config = Config::default();
        let text = serde_json::to_string(&config).unwrap();
        let back: Config = serde_json::from_str(&text).unwrap();
        assert_eq!(back, config);
        // A partial table keeps the other defaults.
        let partial: Config = serde_json::from_str(r#"{"concurrency": 4}"#).unwrap();
        assert_eq!(
            partial,
            Config {
                concurrency: 4,
                ..Config::default()
            }
        );
    }
}
