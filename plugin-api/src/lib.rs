#![doc = include_str!("../README.md")]
#![allow(non_local_definitions)]

pub mod abi;
mod log_bridge;
pub mod sdk;

pub use abi::{
    HostServices, OpInfo, OutputFile, PluginError, PluginInfo, PluginMod, PluginModRef,
    TaskContext, TaskOutput, TaskRequest, TaskTypeInfo, level,
};

/// The plugin walk-through of `plugins/README.md`, compiled as a doc test so it cannot rot.
#[cfg(doctest)]
#[doc = include_str!("../../plugins/README.md")]
pub struct PluginsReadmeWalkthrough;

#[doc(hidden)]
pub mod __private {
    pub use abi_stable;
    pub use async_ffi;
}

/// The version of this interface crate; plugins report the one they were built against.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");

/// Stable error codes that the host understands in a [`PluginError`].
pub mod codes {
    /// The task input is wrong; retrying cannot help.
    pub const INVALID_INPUT: &str = "invalid_input";
    /// The plugin's configuration is wrong.
    pub const INVALID_CONFIG: &str = "invalid_config";
    /// The engine cannot be reached right now; a retry may help.
    pub const ENGINE_UNAVAILABLE: &str = "engine_unavailable";
    /// The engine ran and failed.
    pub const ENGINE_ERROR: &str = "engine_error";
    /// The task ran out of time.
    pub const TIMEOUT: &str = "timeout";
    /// The task was cancelled.
    pub const CANCELLED: &str = "cancelled";
    /// The plugin panicked; the panic was caught at the boundary.
    pub const PLUGIN_PANIC: &str = "plugin_panic";
    /// A call reached a plugin that was not initialised.
    pub const NOT_INITIALIZED: &str = "not_initialized";
    /// `call_op` named an operation the plugin does not offer.
    pub const UNKNOWN_OP: &str = "unknown_op";
    /// `ctx.fetch`: the input could not be fetched (network, HTTP or local I/O error, an HTTP
    /// status other than 404/410). Retryable when the fetcher says so.
    pub const FETCH_FAILED: &str = "fetch_failed";
    /// `ctx.fetch`: fetching the input took longer than the fetcher's timeout.
    pub const FETCH_TIMEOUT: &str = "fetch_timeout";
    /// `ctx.fetch`: the input does not exist (HTTP 404/410, or a storage key with no object).
    pub const FETCH_NOT_FOUND: &str = "fetch_not_found";
    /// `ctx.fetch`: the input is larger than the fetcher's size limit.
    pub const FETCH_TOO_LARGE: &str = "fetch_too_large";
    /// `ctx.fetch`: the fetcher's policy refused the URL or one of its redirects (the SSRF
    /// guard, a non-http(s) redirect, too many redirects).
    pub const FETCH_BLOCKED: &str = "fetch_blocked";
    /// `ctx.fetch`: the source is neither an http(s) URL nor a key of the host's storage.
    pub const FETCH_INVALID_URL: &str = "fetch_invalid_url";
    /// An internal error of the plugin.
    pub const INTERNAL: &str = "internal";
}

impl PluginError {
    /// An error that a retry cannot fix.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into().into(),
            retryable: false,
        }
    }

    /// An error that a retry may fix.
    pub fn retryable(code: &str, message: impl Into<String>) -> Self {
        Self {
            code: code.into(),
            message: message.into().into(),
            retryable: true,
        }
    }

    /// Shorthand for a non-retryable `invalid_input`.
    pub fn invalid_input(message: impl Into<String>) -> Self {
        Self::fatal(codes::INVALID_INPUT, message)
    }
}

impl std::fmt::Display for PluginError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for PluginError {}

/// Checks a plugin's declared interface version against this host. `Err` is one line for users.
pub fn check_api_version(plugin_version: &str) -> Result<(), String> {
    let parsed = semver::Version::parse(plugin_version).map_err(|e| {
        format!("declares interface version {plugin_version:?}, which is not semver ({e})")
    })?;
    let host = semver::Version::parse(API_VERSION).expect("crate version is semver");
    if parsed.major != host.major || parsed.minor > host.minor {
        return Err(format!(
            "was built against plugin-api {parsed}; this host needs ^{}.0 up to {}.{}",
            host.major, host.major, host.minor
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_major_older_minor_is_accepted() {
        assert!(check_api_version("1.0.0").is_ok());
        assert!(check_api_version(API_VERSION).is_ok());
    }

    #[test]
    fn other_major_or_newer_minor_is_refused_in_one_line() {
        let err = check_api_version("2.0.0").unwrap_err();
        assert!(err.contains("plugin-api 2.0.0"), "{err}");
        assert!(!err.contains('\n'));
        assert!(check_api_version("0.9.0").is_err());
        assert!(check_api_version("1.99.0").is_err());
        assert!(check_api_version("not-a-version").is_err());
    }

    #[test]
    fn export_symbol_name_matches_abi_stable() {
        assert_eq!(
            sdk::ROOT_MODULE_SYMBOL,
            abi_stable::library::ROOT_MODULE_LOADER_NAME
        );
    }
}
