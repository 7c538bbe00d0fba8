//! `[webhooks]`: how task webhooks are signed (Standard Webhooks) and delivered (durable
//! delivery rows in the task store, retried with backoff until `max_age_secs`).

use serde::{Deserialize, Serialize};

/// `[webhooks]`: signing secrets, retry schedule and the deliverer's limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub(crate) struct WebhooksConfig {
    /// Signing secrets, `whsec_` + base64 of the key (Standard Webhooks). Every secret signs
    /// every message and all signatures are sent in `webhook-signature`, so a receiver can move
    /// to a new secret while the old one is still listed (rotation). Empty (default): messages
    /// are sent unsigned (with `webhook-id` and `webhook-timestamp` still).
    pub secrets: Vec<String>,
    /// Seconds a delivery is retried (from its creation or its last redelivery) before it is
    /// dead-lettered. Default 86400 (24 h).
    pub max_age_secs: u64,
    /// First retry delay in milliseconds; each further retry doubles it (with jitter).
    /// Default 5000.
    pub backoff_base_ms: u64,
    /// Longest retry delay in milliseconds. Default 3600000 (1 h).
    pub backoff_max_ms: u64,
    /// Deliveries sent at once by one process. Default 8.
    pub concurrency: u32,
    /// Seconds one delivery attempt may take (connect to last byte). Default 15.
    pub timeout_secs: u64,
    /// Least milliseconds between two `task.progress` messages of one task. Default 2000.
    pub progress_interval_ms: u64,
    /// Milliseconds between two looks for due deliveries. Default 500.
    pub poll_interval_ms: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        WebhooksConfig {
            secrets: Vec::new(),
            max_age_secs: 86_400,
            backoff_base_ms: 5_000,
            backoff_max_ms: 3_600_000,
            concurrency: 8,
            timeout_secs: 15,
            progress_interval_ms: 2_000,
            poll_interval_ms: 500,
        }
    }
}

/// The prefix of a Standard Webhooks secret.
const SECRET_PREFIX: &str = "whsec_";

/// The key of a `whsec_` secret (the base64 after the prefix, at least 16 bytes), or why it is
/// not one. Checked at load (`validate.rs`) and used by the signer (`webhooks/signing.rs`).
pub(crate) fn parse_webhook_secret(secret: &str) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = secret
        .strip_prefix(SECRET_PREFIX)
        .ok_or_else(|| format!("must start with `{SECRET_PREFIX}`"))?;
    let key = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| format!("the part after `{SECRET_PREFIX}` is not base64: {e}"))?;
    if key.len() < 16 {
        return Err("the key must be at least 16 bytes (24 base64 characters)".into());
    }
    Ok(key)
}
