//! Standard Webhooks signatures: `webhook-signature: v1,<base64 HMAC-SHA256(key,
//! "{id}.{timestamp}.{body}")>`, one per configured secret, space-separated, where the key is
//! the base64-decoded part of a `whsec_...` secret.

use base64::{Engine, engine::general_purpose::STANDARD};
use hmac::{Hmac, Mac};
use sha2::Sha256;

pub(crate) use crate::config::parse_webhook_secret as parse_secret;

/// The signing keys of the configured secrets (validated at load; a bad one is skipped).
#[derive(Clone, Default)]
pub(crate) struct Signer {
    keys: Vec<Vec<u8>>,
}

impl std::fmt::Debug for Signer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Signer")
            .field("keys", &self.keys.len())
            .finish()
    }
}

impl Signer {
    /// A signer of every secret in `secrets`.
    pub(crate) fn new(secrets: &[String]) -> Signer {
        Signer {
            keys: secrets
                .iter()
                .filter_map(|s| parse_secret(s).ok())
                .collect(),
        }
    }

    /// The `webhook-signature` header value of message `id` sent at `timestamp` (Unix
    /// seconds) with `body`: `v1,<sig>` per key, space-separated; `None` without keys.
    pub(crate) fn sign(&self, id: &str, timestamp: i64, body: &[u8]) -> Option<String> {
        if self.keys.is_empty() {
            return None;
        }
        let sigs: Vec<String> = self
            .keys
            .iter()
            .map(|key| {
                let mut mac =
                    Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes a key of any length");
                mac.update(id.as_bytes());
                mac.update(b".");
                mac.update(timestamp.to_string().as_bytes());
                mac.update(b".");
                mac.update(body);
                format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()))
            })
            .collect();
        Some(sigs.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_the_specification_example() {
        // The example of the Standard Webhooks specification's reference libraries.
        let signer = Signer::new(&["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw".to_owned()]);
        let body = br#"{"test": 2432232314}"#;
        let sig = signer
            .sign("msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body)
            .unwrap();
        assert_eq!(sig, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
    }

    #[test]
    fn every_secret_signs() {
        let a = "whsec_".to_owned() + &STANDARD.encode([1u8; 32]);
        let b = "whsec_".to_owned() + &STANDARD.encode([2u8; 32]);
        let sig = Signer::new(&[a, b]).sign("msg_1", 1, b"{}").unwrap();
        assert_eq!(sig.split(' ').count(), 2);
        assert!(sig.split(' ').all(|s| s.starts_with("v1,")));
        assert!(Signer::default().sign("msg_1", 1, b"{}").is_none());
    }

    #[test]
    fn bad_secrets_are_told() {
        assert!(parse_secret("abc").unwrap_err().contains("whsec_"));
        assert!(parse_secret("whsec_!!!").unwrap_err().contains("base64"));
        assert!(parse_secret("whsec_YWJj").unwrap_err().contains("16 bytes"));
    }
}
