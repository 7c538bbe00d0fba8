//! Where fetched inputs land: the work folder, file names (sanitised, never overwriting,
//! extension from the content type when the name has none) and reserving the file.
//!
//! It is separate because both data sources (storage copies and downloads) write here by the
//! same rules.

use std::io;
use std::path::{Path, PathBuf};

use url::Url;

use super::error::FetchError;

/// Creates `dir` (and its parents) when missing.
pub(super) async fn ensure_dir(dir: &Path) -> Result<(), FetchError> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| FetchError::io(&dir.display().to_string(), e))
}

/// The one file-name rule ([`crate::names::sanitize`]), `input` when nothing is left.
pub(super) fn sanitize(name: &str) -> String {
    crate::names::sanitize(name, "input")
}

/// The sanitised, percent-decoded last path segment of the URL, or `input`.
pub(super) fn name_from_url(url: &Url) -> String {
    let segment = url
        .path_segments()
        .and_then(|mut segments| segments.rfind(|s| !s.is_empty()))
        .unwrap_or("");
    sanitize(&crate::percent::decode_lossy(segment))
}

/// Adds an extension from the content type when `name` has none.
pub(super) fn with_extension(name: String, content_type: Option<&str>) -> String {
    if !crate::names::split_ext(&name).1.is_empty() {
        return name;
    }
    let Some(mime) = content_type
        .and_then(|c| c.split(';').next())
        .map(str::trim)
    else {
        return name;
    };
    let ext = match mime.to_ascii_lowercase().as_str() {
        "image/jpeg" => Some("jpg"),
        "image/png" => Some("png"),
        "image/webp" => Some("webp"),
        "image/gif" => Some("gif"),
        "video/mp4" => Some("mp4"),
        "video/webm" => Some("webm"),
        "video/quicktime" => Some("mov"),
        "audio/mpeg" => Some("mp3"),
        "audio/wav" | "audio/x-wav" => Some("wav"),
        "application/octet-stream" | "text/plain" => None,
        other => mime_guess::get_mime_extensions_str(other).and_then(|e| e.first().copied()),
    };
    match ext {
        Some(ext) => format!("{name}.{ext}"),
        None => name,
    }
}

/// Creates a new file named `name` in `dir`, or `stem-N.ext` when that exists.
pub(super) async fn reserve(
    dir: &Path,
    name: &str,
) -> Result<(PathBuf, tokio::fs::File), FetchError> {
    let (stem, ext) = crate::names::split_ext(name);
    for n in 0..10_000u32 {
        let candidate = if n == 0 {
            name.to_owned()
        } else {
            format!("{stem}-{n}{ext}")
        };
        let path = dir.join(candidate);
        match tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await
        {
            Ok(file) => return Ok((path, file)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(FetchError::io(&path.display().to_string(), e)),
        }
    }
    Err(FetchError::Io {
        detail: format!("too many files named like {name} in {}", dir.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fetch_file_names() {
        assert_eq!(sanitize("a b/c?.png"), "a_b_c_.png");
        assert_eq!(sanitize("..hidden"), "hidden");
        assert_eq!(sanitize(".."), "input");
        assert_eq!(sanitize(""), "input");
        let long = format!("{}.png", "x".repeat(300));
        let short = sanitize(&long);
        assert_eq!(short.len(), crate::names::MAX_NAME_LEN);
        assert!(short.ends_with(".png"));
        let url = Url::parse("https://example.com/dir/my%20pic.jpeg?x=1").unwrap();
        assert_eq!(name_from_url(&url), "my_pic.jpeg");
        let url = Url::parse("https://example.com/").unwrap();
        assert_eq!(name_from_url(&url), "input");
        assert_eq!(with_extension("a".into(), Some("image/jpeg; q=1")), "a.jpg");
        assert_eq!(with_extension("a.bin".into(), Some("image/jpeg")), "a.bin");
        assert_eq!(
            with_extension("a".into(), Some("application/octet-stream")),
            "a"
        );
    }
}
