//! The plugin's one error enum, with stable codes.

use aihost_plugin_api::{PluginError, codes};

/// Everything that can go wrong in a face swap. [`Error::code`] is stable API.
#[derive(Debug)]
pub enum Error {
    /// The input does not make sense (e.g. `media_type` disagrees with the target).
    InvalidInput(String),
    /// FaceFusion is not installed where the config says (checkout folder or interpreter).
    NotInstalled(String),
    /// The source is not an image FaceFusion accepts (`choose an image for the source!`).
    InvalidSource(String),
    /// The target is not an image or video FaceFusion accepts.
    InvalidTarget(String),
    /// FaceFusion found no face in the source image.
    NoSourceFace(String),
    /// A model is missing or corrupt and could not be downloaded.
    ModelUnavailable(String),
    /// FaceFusion finished without an output: its content analyser declined the target.
    ContentRejected(String),
    /// FaceFusion refused its arguments or its environment (exit 2): a configuration error.
    EngineMisconfigured(String),
    /// FaceFusion failed for another reason (traceback, crash, unexpected exit code).
    EngineFailed {
        /// What happened, with the tail of FaceFusion's output.
        message: String,
        /// Whether a new attempt may succeed.
        retryable: bool,
    },
    /// The run took longer than `timeout_secs`.
    Timeout(String),
    /// Reading the target's size with ffprobe failed.
    ProbeFailed(String),
    /// A local file operation failed.
    Io(String),
    /// The host's fetcher could not fetch an input; its own code is kept.
    Fetch(aihost_plugin_api::PluginError),
}

impl Error {
    /// The stable code reported as the task's `error.code`.
    pub fn code(&self) -> &str {
        match self {
            Error::Fetch(e) => e.code.as_str(),
            Error::InvalidInput(_) => codes::INVALID_INPUT,
            Error::NotInstalled(_) => codes::ENGINE_UNAVAILABLE,
            Error::InvalidSource(_) => "invalid_source",
            Error::InvalidTarget(_) => "invalid_target",
            Error::NoSourceFace(_) => "no_source_face",
            Error::ModelUnavailable(_) => "model_unavailable",
            Error::ContentRejected(_) => "content_rejected",
            Error::EngineMisconfigured(_) => "engine_misconfigured",
            Error::EngineFailed { .. } => codes::ENGINE_ERROR,
            Error::Timeout(_) => codes::TIMEOUT,
            Error::ProbeFailed(_) => "probe_failed",
            Error::Io(_) => codes::INTERNAL,
        }
    }

    /// Whether the host should try again (only where a new attempt can help).
    pub fn retryable(&self) -> bool {
        match self {
            Error::EngineFailed { retryable, .. } => *retryable,
            Error::Io(_) => true,
            Error::Fetch(e) => e.retryable,
            _ => false,
        }
    }

    fn message(&self) -> &str {
        match self {
            Error::InvalidInput(m)
            | Error::NotInstalled(m)
            | Error::InvalidSource(m)
            | Error::InvalidTarget(m)
            | Error::NoSourceFace(m)
            | Error::ModelUnavailable(m)
            | Error::ContentRejected(m)
            | Error::EngineMisconfigured(m)
            | Error::Timeout(m)
            | Error::ProbeFailed(m)
            | Error::Io(m) => m,
            Error::EngineFailed { message, .. } => message,
            Error::Fetch(e) => e.message.as_str(),
        }
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

impl From<Error> for PluginError {
    fn from(e: Error) -> Self {
        if e.retryable() {
            PluginError::retryable(e.code(), e.message())
        } else {
            PluginError::fatal(e.code(), e.message())
        }
    }
}
