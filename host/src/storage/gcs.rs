//! The `gcs` backend (Google Cloud Storage through its JSON API, with resumable uploads): its
//! settings, their translation from the config, and how its opendal operator is built.
//!
//! Separate because each backend owns its settings and its operator; what is done with the
//! operator is shared ([`OpBackend`]).

use std::path::PathBuf;

use opendal::Operator;

use super::StorageError;
use super::error::config_error;
use super::operator::OpBackend;
use super::settings::nonempty;
use crate::config::StorageConfig;

/// Settings of the `gcs` backend.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct GcsSettings {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL (a local fake server); `https://storage.googleapis.com` when absent.
    pub endpoint: Option<String>,
    /// Service-account JSON file. Without it, credentials come from the usual Google sources
    /// (`GOOGLE_APPLICATION_CREDENTIALS`, VM metadata), except with an explicit `endpoint`,
    /// where requests are sent unsigned (local emulators ignore auth).
    pub credential_path: Option<PathBuf>,
    /// Public base URL of the bucket (`https://storage.googleapis.com/my-bucket`); without it,
    /// URLs are presigned GETs (which need a service account, or an emulator).
    pub public_base_url: Option<String>,
    /// Lifetime of presigned GET URLs, in seconds.
    pub presign_secs: u64,
}

impl GcsSettings {
    /// The `gcs` keys of the `[storage]` section (blank strings count as absent).
    pub fn from_config(c: &StorageConfig) -> GcsSettings {
        GcsSettings {
            bucket: nonempty(&c.bucket).unwrap_or_default(),
            endpoint: nonempty(&c.endpoint),
            credential_path: c.credential_path.clone(),
            public_base_url: nonempty(&c.public_base_url),
            presign_secs: c.presign_secs,
        }
    }
}

/// Builds the `gcs` backend. Refuses incomplete settings before any request.
pub(super) fn backend(s: &GcsSettings) -> Result<OpBackend, StorageError> {
    if s.bucket.trim().is_empty() {
        return Err(config_error("storage.bucket is required for gcs"));
    }
    let endpoint = s.endpoint.as_deref().map(|e| e.trim_end_matches('/'));
    let mut b = opendal::services::Gcs::default().bucket(&s.bucket);
    if let Some(e) = endpoint {
        b = b.endpoint(e);
    }
    if let Some(path) = &s.credential_path {
        b = b
            .credential_path(&path.to_string_lossy())
            .disable_config_load()
            .disable_vm_metadata();
    } else if endpoint.is_some() {
        // A local emulator: it ignores auth.
        b = b
            .skip_signature()
            .disable_config_load()
            .disable_vm_metadata();
    }
    let op = Operator::new(b).map_err(|e| StorageError::backend("open", "", e))?;
    let base = endpoint.unwrap_or("https://storage.googleapis.com");
    Ok(OpBackend::remote(
        op,
        s.public_base_url.clone(),
        s.presign_secs,
        vec![format!("{base}/{}", s.bucket)],
        true,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes;
    use crate::storage::StorageKind;
    use crate::storage::tests::remote;

    #[test]
    fn storage_gcs_settings_and_own_urls() {
        // gcs defaults to storage.googleapis.com; a public base is recognised too.
        let gcs = remote(StorageKind::Gcs(GcsSettings {
            bucket: "b".into(),
            public_base_url: Some("https://cdn.example.com/media".into()),
            ..GcsSettings::default()
        }))
        .unwrap();
        for url in [
            "https://storage.googleapis.com/b/p/outputs/t/x.png",
            "https://cdn.example.com/media/p/outputs/t/x.png",
        ] {
            assert_eq!(
                gcs.key_from_url(url).as_deref(),
                Some("outputs/t/x.png"),
                "{url}"
            );
        }

        // Incomplete settings are refused before any request.
        assert_eq!(
            remote(StorageKind::Gcs(GcsSettings::default()))
                .unwrap_err()
                .code(),
            error_codes::STORAGE_MISCONFIGURED
        );
    }
}
