//! Live previews: ComfyUI's binary preview frames, parsed, attributed to a prompt and handed
//! to the host (`Context::preview`) for a task that asked for them (`previews: true`).
//!
//! Frame format (ComfyUI `server.py`, see `tests/fixtures/comfyui/README.md`): a u32
//! big-endian event type, then
//! - type 1 `PREVIEW_IMAGE`: u32 image type (1 = JPEG, 2 = PNG), the image. No prompt id: it
//!   goes to the socket of the running prompt's client, so it belongs to the prompt the
//!   instance runs now (ComfyUI runs one at a time);
//! - type 4 `PREVIEW_IMAGE_WITH_METADATA` (ComfyUI from 2025-07, to clients that announced
//!   `supports_preview_metadata`): u32 length, JSON `{node_id, prompt_id, image_type, ...}`
//!   (`image_type` a MIME type), the image.
//!
//! Other binary frames (type 3, TEXT) are not previews. A task's previews are written to its
//! work folder at most one per [`MIN_INTERVAL`] (the latest wins; one still waiting when the
//! prompt ends is written then), each to a new file, and offered to the host, which stores the
//! latest and publishes a `preview` event.

use std::{path::PathBuf, time::Duration};

use aihost_plugin_api::sdk::{Context, Value};
use tokio::sync::mpsc;

/// The shortest time between two previews of one task.
pub(crate) const MIN_INTERVAL: Duration = Duration::from_millis(250);

/// Largest preview image accepted, in bytes.
const MAX_BYTES: usize = 8 << 20;

/// A preview image: its content type and bytes.
pub(crate) type Frame = (String, Vec<u8>);

/// An instance's preview routes: the receivers by prompt id, and our prompt running now.
pub(crate) type Routes = (
    std::collections::HashMap<String, mpsc::UnboundedSender<Frame>>,
    Option<String>,
);

/// A parsed preview frame: the prompt it names (type 4 only), content type, image.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Preview {
    pub(crate) prompt_id: Option<String>,
    pub(crate) content_type: String,
    pub(crate) image: Vec<u8>,
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Parses a binary frame; `None` when it is not a preview (or is malformed or too large).
pub(crate) fn parse(b: &[u8]) -> Option<Preview> {
    let (prompt_id, content_type, image) = match u32_at(b, 0)? {
        1 => {
            let ct = match u32_at(b, 4)? {
                1 => "image/jpeg",
                2 => "image/png",
                _ => return None,
            };
            (None, ct.to_owned(), b.get(8..)?)
        }
        4 => {
            let len = usize::try_from(u32_at(b, 4)?).ok()?;
            let meta: Value = serde_json::from_slice(b.get(8..8usize.checked_add(len)?)?).ok()?;
            let ct = match meta["image_type"].as_str() {
                Some(t @ ("image/jpeg" | "image/png" | "image/webp")) => t.to_owned(),
                _ => "image/jpeg".to_owned(),
            };
            let pid = meta["prompt_id"].as_str().map(str::to_owned);
            (pid, ct, b.get(8 + len..)?)
        }
        _ => return None,
    };
    if image.is_empty() || image.len() > MAX_BYTES {
        return None;
    }
    Some(Preview {
        prompt_id,
        content_type,
        image: image.to_vec(),
    })
}

/// Writes the previews arriving on `rx` into `work_dir/comfyui-previews/` and offers each to
/// the host, until `rx` ends (then the one still waiting is written). Await the answer to know
/// every preview was offered.
pub(crate) fn forward(
    ctx: Context,
    work_dir: PathBuf,
    mut rx: mpsc::UnboundedReceiver<Frame>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let dir = work_dir.join("comfyui-previews");
        if tokio::fs::create_dir_all(&dir).await.is_err() {
            return;
        }
        let mut n = 0u64;
        let mut waiting: Option<Frame> = None;
        let mut next_at = tokio::time::Instant::now();
        loop {
            let ended = if waiting.is_some() {
                match tokio::time::timeout_at(next_at, rx.recv()).await {
                    Ok(Some(f)) => {
                        waiting = Some(f);
                        false
                    }
                    Ok(None) => true,
                    Err(_) => false,
                }
            } else {
                match rx.recv().await {
                    Some(f) => {
                        waiting = Some(f);
                        false
                    }
                    None => true,
                }
            };
            if (ended || tokio::time::Instant::now() >= next_at)
                && let Some((ct, bytes)) = waiting.take()
            {
                n += 1;
                let ext = match ct.as_str() {
                    "image/png" => "png",
                    "image/webp" => "webp",
                    _ => "jpg",
                };
                let path = dir.join(format!("preview-{n}.{ext}"));
                if tokio::fs::write(&path, &bytes).await.is_ok() {
                    ctx.preview(&path, &ct);
                }
                next_at = tokio::time::Instant::now() + MIN_INTERVAL;
            }
            if ended {
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_of_type_1_and_4_are_previews_and_text_is_not() {
        let mut one = 1u32.to_be_bytes().to_vec();
        one.extend(1u32.to_be_bytes());
        one.extend(b"jpegdata");
        assert_eq!(
            parse(&one),
            Some(Preview {
                prompt_id: None,
                content_type: "image/jpeg".into(),
                image: b"jpegdata".to_vec()
            })
        );
        let meta = br#"{"node_id": "3", "prompt_id": "p1", "image_type": "image/png"}"#;
        let mut four = 4u32.to_be_bytes().to_vec();
        four.extend(u32::try_from(meta.len()).unwrap().to_be_bytes());
        four.extend(meta);
        four.extend(b"png");
        let p = parse(&four).unwrap();
        assert_eq!(
            (p.prompt_id.as_deref(), p.content_type.as_str()),
            (Some("p1"), "image/png")
        );
        let mut text = 3u32.to_be_bytes().to_vec();
        text.extend(1u32.to_be_bytes());
        text.extend(b"2hello");
        assert_eq!(parse(&text), None);
        assert_eq!(parse(&[0, 0]), None);
        let mut short = 4u32.to_be_bytes().to_vec();
        short.extend(100u32.to_be_bytes());
        assert_eq!(parse(&short), None);
    }
}
