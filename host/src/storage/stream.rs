//! Byte streams of object reads: the [`ByteStream`] type every read returns, how a requested
//! range becomes byte bounds, and cutting a range out of a stream of chunks (for backends
//! that can only stream the whole object).
//!
//! Separate because these are plain stream helpers, independent of any backend.

use std::io;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};

use super::StorageError;

/// A stream of object bytes.
pub type ByteStream = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, io::Error>> + Send>>;

/// The bytes `[start, end)` that `range` asks of an object of `size` bytes (see
/// [`Storage::read_range`](super::Storage::read_range) for the form of `range`). A `start` at
/// or past the end of a non-empty object is [`StorageError::RangeNotSatisfiable`].
pub(super) fn range_bounds(
    key: &str,
    range: Option<(u64, Option<u64>)>,
    size: u64,
) -> Result<(u64, u64), StorageError> {
    match range {
        None => Ok((0, size)),
        Some((start, len)) => {
            if start >= size && !(start == 0 && size == 0) {
                return Err(StorageError::RangeNotSatisfiable {
                    key: key.to_owned(),
                    start,
                    size,
                });
            }
            let end = match len {
                Some(len) => start.saturating_add(len).min(size),
                None => size,
            };
            Ok((start, end))
        }
    }
}

/// Keeps the bytes `[start, end)` of a stream of chunks.
pub(super) fn slice_stream(
    stream: impl Stream<Item = Result<Bytes, io::Error>> + Send + 'static,
    start: u64,
    end: u64,
) -> ByteStream {
    let mut pos = 0u64;
    Box::pin(
        stream
            .take_while(move |_| std::future::ready(pos < end))
            .filter_map(move |chunk| {
                let out = match chunk {
                    Err(e) => Some(Err(e)),
                    Ok(chunk) => {
                        let (from, to) = (pos, pos + chunk.len() as u64);
                        pos = to;
                        let (a, b) = (start.max(from), end.min(to));
                        // Both offsets are inside this chunk, whose length is a usize.
                        let inside = |x: u64| usize::try_from(x - from).unwrap_or(usize::MAX);
                        (a < b).then(|| Ok(chunk.slice(inside(a)..inside(b))))
                    }
                };
                std::future::ready(out)
            }),
    )
}
