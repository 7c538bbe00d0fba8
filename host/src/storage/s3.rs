//! The `s3` backend (any S3-compatible service) and its `r2` variant (Cloudflare R2: the
//! account endpoint and region `auto`): their settings, their translation from the config,
//! and how their opendal operator is built.
//!
//! Separate because each backend owns its settings and its operator; what is done with the
//! operator is shared ([`OpBackend`]).

use opendal::Operator;

use super::error::config_error;
use super::operator::OpBackend;
use super::settings::nonempty;
use super::{Secret, StorageError};
use crate::config::StorageConfig;

/// Settings of the `s3` and `r2` backends.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct S3Settings {
    /// Bucket name.
    pub bucket: String,
    /// Endpoint URL with scheme (`http://127.0.0.1:9000`). `s3`: AWS when absent; `r2`:
    /// `https://{account_id}.r2.cloudflarestorage.com` when absent.
    pub endpoint: Option<String>,
    /// Region. `s3`: `us-east-1` when absent; `r2`: always `auto` unless given.
    pub region: Option<String>,
    /// Access key id; without one (and without a secret) credentials come from the usual AWS
    /// sources (environment, profile, instance metadata).
    pub access_key_id: Option<String>,
    /// Secret access key.
    pub secret_access_key: Option<Secret>,
    /// Cloudflare account id (`r2`; builds the default endpoint).
    pub account_id: Option<String>,
    /// Public base URL of the bucket (`https://cdn.example.com`): URLs are this + `/` + the
    /// object's path in the bucket. Without it, URLs are presigned GETs.
    pub public_base_url: Option<String>,
    /// Lifetime of presigned GET URLs, in seconds.
    pub presign_secs: u64,
}

impl S3Settings {
    /// The `s3`/`r2` keys of the `[storage]` section (blank strings count as absent).
    pub fn from_config(c: &StorageConfig) -> S3Settings {
        S3Settings {
            bucket: nonempty(&c.bucket).unwrap_or_default(),
            endpoint: nonempty(&c.endpoint),
            region: nonempty(&c.region),
            access_key_id: nonempty(&c.access_key_id),
            secret_access_key: nonempty(&c.secret_access_key).map(Secret),
            account_id: nonempty(&c.account_id),
            public_base_url: nonempty(&c.public_base_url),
            presign_secs: c.presign_secs,
        }
    }
}

/// Builds the `s3` backend, or the `r2` one when `r2` is set. Refuses incomplete settings
/// before any request.
pub(super) fn backend(s: &S3Settings, r2: bool) -> Result<OpBackend, StorageError> {
    let name = if r2 { "r2" } else { "s3" };
    if s.bucket.trim().is_empty() {
        return Err(config_error(format!(
            "storage.bucket is required for {name}"
        )));
    }
    let endpoint = match (&s.endpoint, r2, &s.account_id) {
        (Some(e), _, _) => Some(e.trim_end_matches('/').to_owned()),
        (None, true, Some(account)) => Some(format!(
            "https://{}.r2.cloudflarestorage.com",
            account.trim()
        )),
        (None, true, None) => {
            return Err(config_error(
                "storage.account_id (or storage.endpoint) is required for r2",
            ));
        }
        (None, false, _) => None,
    };
    let region = s
        .region
        .clone()
        .unwrap_or_else(|| if r2 { "auto" } else { "us-east-1" }.to_owned());
    let mut b = opendal::services::S3::default()
        .bucket(&s.bucket)
        .region(&region);
    if let Some(e) = &endpoint {
        b = b.endpoint(e);
    }
    match (&s.access_key_id, &s.secret_access_key) {
        (Some(id), Some(secret)) => {
            b = b
                .access_key_id(id)
                .secret_access_key(&secret.0)
                .disable_config_load()
                .disable_ec2_metadata();
        }
        (None, None) => {}
        _ => {
            return Err(config_error(format!(
                "{name}: set both storage.access_key_id and storage.secret_access_key, or neither"
            )));
        }
    }
    let op = Operator::new(b).map_err(|e| StorageError::backend("open", "", e))?;
    // The bucket's own URLs are known only with an explicit (or the R2) endpoint.
    let bucket_bases = endpoint
        .iter()
        .map(|e| format!("{e}/{}", s.bucket))
        .collect();
    Ok(OpBackend::remote(
        op,
        s.public_base_url.clone(),
        s.presign_secs,
        bucket_bases,
        false,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error_codes;
    use crate::storage::StorageKind;
    use crate::storage::tests::{BASE, remote};

    #[test]
    fn storage_r2_settings_and_own_urls() {
        // r2 without an endpoint uses the account endpoint; its bucket URLs (presigned ones
        // included) name stored objects, below the prefix.
        let r2 = remote(StorageKind::R2(S3Settings {
            bucket: "media".into(),
            account_id: Some("acc123".into()),
            access_key_id: Some("k".into()),
            secret_access_key: Some(Secret("s".into())),
            ..S3Settings::default()
        }))
        .unwrap();
        assert_eq!(
            r2.key_from_url(
                "https://acc123.r2.cloudflarestorage.com/media/p/outputs/t/a%20b.png?X-Amz-Signature=x"
            )
            .as_deref(),
            Some("outputs/t/a b.png")
        );
        // Outside the prefix, or another bucket: not ours.
        for other in [
            "https://acc123.r2.cloudflarestorage.com/media/outputs/t/a.png",
            "https://acc123.r2.cloudflarestorage.com/other/p/outputs/t/a.png",
        ] {
            assert_eq!(r2.key_from_url(other), None, "{other}");
        }
        assert_eq!(
            r2.key_from_url(&format!("{BASE}/outputs/t/a.png"))
                .as_deref(),
            Some("outputs/t/a.png")
        );
        assert!(!format!("{:?}", r2.settings()).contains("\"s\""));

        // Incomplete settings are refused before any request.
        let half = S3Settings {
            bucket: "b".into(),
            access_key_id: Some("k".into()),
            ..S3Settings::default()
        };
        for kind in [
            StorageKind::S3(half),
            StorageKind::S3(S3Settings::default()),
            StorageKind::R2(S3Settings {
                bucket: "b".into(),
                ..S3Settings::default()
            }),
        ] {
            let name = kind.name();
            assert_eq!(
                remote(kind).unwrap_err().code(),
                error_codes::STORAGE_MISCONFIGURED,
                "{name}"
            );
        }
    }
}
