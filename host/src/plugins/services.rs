//! The host side of the plugin callbacks: logging and per-task services.
//!
//! Callbacks run on plugin threads. They never block and never touch the host runtime directly:
//! progress goes into a channel, fetches are spawned on the host runtime and awaited by the
//! plugin through a JoinHandle.

use std::{path::PathBuf, sync::Arc};

use abi_stable::{
    sabi_trait::TD_Opaque,
    std_types::{RArc, ROption, RResult, RStr, RString},
};
use aihost_plugin_api::{
    HostServices, PluginError, TaskContext,
    abi::{HostServicesApi, HostServicesApi_TO, TaskContextApi, TaskContextApi_TO},
    level,
};
use async_ffi::{FfiFuture, FutureExt as _};
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::fetch::Fetcher;

/// Emits one event at a runtime-chosen level.
macro_rules! event_at {
    ($lvl:expr, $($rest:tt)*) => {
        match $lvl {
            level::ERROR => tracing::error!($($rest)*),
            level::WARN => tracing::warn!($($rest)*),
            level::INFO => tracing::info!($($rest)*),
            level::DEBUG => tracing::debug!($($rest)*),
            _ => tracing::trace!($($rest)*),
        }
    };
}

/// The services one plugin holds for its life: a log tagged with its name.
#[derive(Clone)]
struct PluginLog {
    plugin: Arc<str>,
}

impl HostServicesApi for PluginLog {
    fn max_level(&self) -> u8 {
        use tracing::level_filters::LevelFilter;
        match LevelFilter::current() {
            LevelFilter::OFF => 0,
            LevelFilter::ERROR => level::ERROR,
            LevelFilter::WARN => level::WARN,
            LevelFilter::INFO => level::INFO,
            LevelFilter::DEBUG => level::DEBUG,
            _ => level::TRACE,
        }
    }

    fn log(&self, lvl: u8, target: RStr<'_>, message: RStr<'_>) {
        event_at!(lvl, plugin = %self.plugin, plugin_target = target.as_str(), "{}", message.as_str());
    }
}

/// Host services for the plugin called `plugin`.
pub(crate) fn host_services(plugin: &str) -> HostServices {
    HostServicesApi_TO::from_ptr(
        RArc::new(PluginLog {
            plugin: plugin.into(),
        }),
        TD_Opaque,
    )
}

/// A progress report from a running task.
#[derive(Debug, Clone)]
pub(crate) struct ProgressReport {
    /// 0 to 100.
    pub percent: f32,
    /// Message.
    pub message: String,
    /// A live preview instead of a progress change (`percent` and `message` are then unset):
    /// the image file, inside the task's work folder, and its content type.
    pub preview: Option<(PathBuf, String)>,
}

/// The content types a preview may have.
const PREVIEW_TYPES: [&str; 4] = ["image/jpeg", "image/png", "image/webp", "image/gif"];

/// The preview a `level::PREVIEW` message names: its path and image content type (`None`
/// otherwise). Only parsed here, on the plugin's thread; the writer checks that the file is in
/// the task's work folder (`previews.rs`).
fn preview_of(message: &str) -> Option<(PathBuf, String)> {
    let v: serde_json::Value = serde_json::from_str(message).ok()?;
    let ct = v["content_type"].as_str()?;
    if !PREVIEW_TYPES.contains(&ct) {
        return None;
    }
    Some((PathBuf::from(v["path"].as_str()?), ct.to_owned()))
}

/// What one running attempt gives its plugin.
#[derive(Clone)]
struct TaskServices {
    task_id: Uuid,
    plugin: Arc<str>,
    progress: mpsc::UnboundedSender<ProgressReport>,
    fetcher: Fetcher,
    work_dir: PathBuf,
    runtime: tokio::runtime::Handle,
}

impl TaskContextApi for TaskServices {
    fn progress(&self, percent: f32, message: RStr<'_>) {
        let percent = if percent.is_finite() {
            percent.clamp(0.0, 100.0)
        } else {
            0.0
        };
        let _ = self.progress.send(ProgressReport {
            percent,
            message: message.as_str().to_owned(),
            preview: None,
        });
    }

    fn log(&self, lvl: u8, message: RStr<'_>) {
        if lvl == level::PREVIEW {
            match preview_of(message.as_str()) {
                Some(preview) => {
                    let _ = self.progress.send(ProgressReport {
                        percent: 0.0,
                        message: String::new(),
                        preview: Some(preview),
                    });
                }
                None => {
                    tracing::debug!(plugin = %self.plugin, task_id = %self.task_id, "preview refused: not {{\"path\", \"content_type\"}} of an image");
                }
            }
            return;
        }
        event_at!(lvl, plugin = %self.plugin, task_id = %self.task_id, "{}", message.as_str());
    }

    fn fetch(
        &self,
        url: RString,
        file_name: ROption<RString>,
    ) -> FfiFuture<RResult<RString, PluginError>> {
        let fetcher = self.fetcher.clone();
        let dir = self.work_dir.clone();
        let handle = self.runtime.spawn(async move {
            let name = file_name.into_option().map(RString::into_string);
            fetcher
                .fetch_to(url.as_str(), &dir, name.as_deref())
                .await
                .map(|p| RString::from(p.to_string_lossy().as_ref()))
                // `FetchError::code` is already namespaced (`fetch_timeout`, `fetch_blocked`…),
                // so the task error says the input could not be fetched.
                .map_err(|e| PluginError {
                    code: e.code().into(),
                    message: e.to_string().into(),
                    retryable: e.retryable(),
                })
        });
        async move {
            match handle.await {
                Ok(r) => r.into(),
                Err(e) => RResult::RErr(PluginError::fatal(
                    crate::error_codes::INTERNAL,
                    format!("fetch task failed: {e}"),
                )),
            }
        }
        .into_ffi()
    }
}

/// Builds the context for one attempt; progress reports arrive on the returned receiver.
pub(crate) fn task_context(
    task_id: Uuid,
    plugin: &str,
    fetcher: Fetcher,
    work_dir: PathBuf,
) -> (TaskContext, mpsc::UnboundedReceiver<ProgressReport>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let services = TaskServices {
        task_id,
        plugin: plugin.into(),
        progress: tx,
        fetcher,
        work_dir,
        runtime: tokio::runtime::Handle::current(),
    };
    (
        TaskContextApi_TO::from_ptr(RArc::new(services), TD_Opaque),
        rx,
    )
}
