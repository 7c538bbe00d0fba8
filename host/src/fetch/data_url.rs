//! `data:` URL sources (`data:image/png;base64,iVBOR...`): a client that sends the bytes inline
//! (RunPod's and Salad's clients do) gets them decoded to a work file, as a fetched file would
//! be: named after the media type, within `fetch.max_bytes`. Only base64 data URLs are
//! accepted (a percent-encoded one is refused with `fetch_invalid_url`). Separate from
//! `source.rs` because it is the one source that is neither storage nor network.

use std::path::{Path, PathBuf};

use base64::{Engine, engine::general_purpose::STANDARD};
use tokio::io::AsyncWriteExt;

use super::error::{FetchError, shorten};
use super::work_file::{ensure_dir, reserve, sanitize, with_extension};

/// Whether `source` (trimmed) is a `data:` URL.
pub(super) fn is_data_url(source: &str) -> bool {
    source
        .get(..5)
        .is_some_and(|p| p.eq_ignore_ascii_case("data:"))
}

/// The media type and bytes of a base64 `data:` URL, at most `max_bytes` of them.
pub(super) fn decode(source: &str, max_bytes: u64) -> Result<(String, Vec<u8>), FetchError> {
    let invalid = |reason: &str| FetchError::InvalidUrl {
        input: shorten(source),
        reason: reason.to_owned(),
    };
    let rest = &source[5..];
    let (meta, data) = rest
        .split_once(',')
        .ok_or_else(|| invalid("a data: URL needs a comma before its data"))?;
    let mut parts = meta.split(';').map(str::trim);
    let media = parts.next().unwrap_or("").to_ascii_lowercase();
    if !parts.any(|p| p.eq_ignore_ascii_case("base64")) {
        return Err(invalid(
            "only base64 data: URLs are accepted (data:<type>;base64,<data>)",
        ));
    }
    let media = if media.is_empty() {
        "application/octet-stream".to_owned()
    } else {
        media
    };
    let (kind, sub) = media
        .split_once('/')
        .ok_or_else(|| invalid("the media type of a data: URL must be type/subtype"))?;
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(kind) || !token(sub) {
        return Err(invalid(
            "the media type of a data: URL must be type/subtype",
        ));
    }
    // Decoded size is at most 3/4 of the text: refuse before decoding what cannot fit.
    let approx = (data.len() as u64).saturating_mul(3) / 4;
    if approx > max_bytes.saturating_add(3) {
        return Err(FetchError::TooLarge {
            url: format!("data:{media};base64,…"),
            limit: max_bytes,
            size: Some(approx),
        });
    }
    let cleaned: String = data.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    let bytes = STANDARD
        .decode(cleaned.as_bytes())
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(cleaned.as_bytes()))
        .map_err(|e| invalid(&format!("the data of the data: URL is not base64: {e}")))?;
    if bytes.len() as u64 > max_bytes {
        return Err(FetchError::TooLarge {
            url: format!("data:{media};base64,…"),
            limit: max_bytes,
            size: Some(bytes.len() as u64),
        });
    }
    Ok((media, bytes))
}

/// Decodes `source` into a new file in `dest_dir`, named `file_name`, else `input` with the
/// extension of its media type.
pub(super) async fn write(
    source: &str,
    max_bytes: u64,
    dest_dir: &Path,
    file_name: Option<&str>,
) -> Result<PathBuf, FetchError> {
    let (media, bytes) = decode(source, max_bytes)?;
    ensure_dir(dest_dir).await?;
    let name = match file_name {
        Some(n) => sanitize(n),
        None => with_extension("input".to_owned(), Some(&media)),
    };
    let (path, mut file) = reserve(dest_dir, &name).await?;
    let written = async {
        file.write_all(&bytes).await?;
        file.flush().await
    }
    .await;
    if let Err(e) = written {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(FetchError::io("write the data: URL input", e));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_base64_data_urls() {
        let (media, bytes) = decode("data:image/png;base64,aGVsbG8=", 100).unwrap();
        assert_eq!(
            (media.as_str(), bytes.as_slice()),
            ("image/png", &b"hello"[..])
        );
        let (media, _) = decode("DATA:;base64,aGVsbG8=", 100).unwrap();
        assert_eq!(media, "application/octet-stream");
    }

    #[test]
    fn refuses_what_is_not_one() {
        let code = |s: &str, max| decode(s, max).unwrap_err().code();
        assert_eq!(
            code("data:image/png;base64,@@@", 100),
            crate::error_codes::FETCH_INVALID_URL
        );
        assert_eq!(
            code("data:image/png,hello", 100),
            crate::error_codes::FETCH_INVALID_URL
        );
        assert_eq!(
            code("data:image/png;base64", 100),
            crate::error_codes::FETCH_INVALID_URL
        );
        assert_eq!(
            code("data:png;base64,aGVsbG8=", 100),
            crate::error_codes::FETCH_INVALID_URL
        );
        assert_eq!(
            code("data:image/png;base64,aGVsbG8=", 4),
            crate::error_codes::FETCH_TOO_LARGE
        );
    }
}
