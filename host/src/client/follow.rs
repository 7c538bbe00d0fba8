//! Following a task to its end over its SSE stream (`GET /api/tasks/{id}/events`), drawing
//! progress on stderr: one bar redrawn with `\r` when stderr is a terminal, else one plain line
//! per event (logs and CI stay readable).

use std::io::{IsTerminal as _, Write as _};

use futures_util::StreamExt as _;
use serde_json::Value;

use super::{Client, ClientError, ClientResult};

/// How progress is shown.
struct Display {
    terminal: bool,
    drawn: bool,
    last_line: String,
}

impl Display {
    fn new() -> Display {
        Display {
            terminal: std::io::stderr().is_terminal(),
            drawn: false,
            last_line: String::new(),
        }
    }

    fn show(&mut self, event: &Value) {
        let kind = event["event"].as_str().unwrap_or("event");
        let status = event["status"].as_str().unwrap_or("?");
        let percent = event
            .pointer("/progress/percent")
            .and_then(Value::as_f64)
            .unwrap_or(if status == "COMPLETED" { 100.0 } else { 0.0 });
        let message = event
            .pointer("/progress/message")
            .and_then(Value::as_str)
            .unwrap_or("");
        let mut err = std::io::stderr().lock();
        if self.terminal {
            let width: u32 = 30;
            let cells = percent.clamp(0.0, 100.0) * f64::from(width) / 100.0;
            let filled = (0..width).filter(|i| f64::from(*i) + 0.5 <= cells).count();
            let bar = format!("{}{}", "#".repeat(filled), "-".repeat(30 - filled));
            let mut text: String = format!("[{bar}] {percent:>3.0}% {status} {message}");
            text = text.chars().take(100).collect();
            let _ = write!(err, "\r\x1b[2K{text}");
            self.drawn = true;
        } else {
            let line = if message.is_empty() {
                format!("{kind} {status} {percent:.0}%")
            } else {
                format!("{kind} {status} {percent:.0}% {message}")
            };
            if line != self.last_line {
                let _ = writeln!(err, "{line}");
                self.last_line = line;
            }
        }
        let _ = err.flush();
    }

    fn end(&mut self) {
        if self.drawn {
            let _ = writeln!(std::io::stderr());
            self.drawn = false;
        }
    }
}

/// Whether a status is final.
pub(super) fn is_terminal(status: &str) -> bool {
    matches!(status, "COMPLETED" | "FAILED" | "CANCELLED")
}

/// Follows task `id` until it is COMPLETED, FAILED or CANCELLED, showing each event; answers
/// the task as read once it is final. A stream that ends early (the server ends the streams of
/// subscribers that fall far behind, or a restart) is opened again.
pub(super) async fn until_done(client: &Client, id: &str) -> ClientResult<Value> {
    let mut display = Display::new();
    loop {
        let resp = client.events(id).await?;
        let mut body = resp.bytes_stream();
        let mut buf: Vec<u8> = Vec::new();
        let mut finished = false;
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| {
                ClientError::Unreachable(format!("the event stream of {id} broke: {e}"))
            })?;
            buf.extend_from_slice(&chunk);
            while let Some(pos) = find_blank_line(&buf) {
                let block: Vec<u8> = buf.drain(..pos.end).collect();
                let block = String::from_utf8_lossy(&block[..pos.start]).into_owned();
                if let Some(event) = parse_block(&block) {
                    display.show(&event);
                    let status = event["status"].as_str().unwrap_or("");
                    let kind = event["event"].as_str().unwrap_or("");
                    if is_terminal(status) && !matches!(kind, "progress" | "preview") {
                        finished = true;
                    }
                }
            }
        }
        let task = client.get(&format!("/api/tasks/{id}")).await?;
        if finished || task["status"].as_str().is_some_and(is_terminal) {
            display.end();
            return Ok(task);
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
}

/// Where the first blank line (`\n\n` or `\r\n\r\n`) of `buf` is: the event before `start`,
/// the next after `end`.
fn find_blank_line(buf: &[u8]) -> Option<std::ops::Range<usize>> {
    let lf = buf.windows(2).position(|w| w == b"\n\n").map(|i| i..i + 2);
    let crlf = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i..i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(if a.start <= b.start { a } else { b }),
        (a, b) => a.or(b),
    }
}

/// The JSON of one SSE event block (its `data:` lines joined), if it has any.
fn parse_block(block: &str) -> Option<Value> {
    let data: Vec<&str> = block
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(|d| d.strip_prefix(' ').unwrap_or(d))
        .collect();
    if data.is_empty() {
        return None;
    }
    serde_json::from_str(&data.join("\n")).ok()
}

#[cfg(test)]
mod tests {
    use super::{find_blank_line, parse_block};

    #[test]
    fn sse_blocks_are_split_and_parsed() {
        let text = b"event: started\ndata: {\"status\":\"PROCESSING\"}\n\n: keep-alive\n\nrest";
        let first = find_blank_line(text).unwrap();
        let block = std::str::from_utf8(&text[..first.start]).unwrap();
        assert_eq!(parse_block(block).unwrap()["status"], "PROCESSING");
        let second = &text[first.end..];
        let pos = find_blank_line(second).unwrap();
        assert!(parse_block(std::str::from_utf8(&second[..pos.start]).unwrap()).is_none());
        assert!(find_blank_line(b"data: {}\r\n\r\n").is_some());
        assert!(find_blank_line(b"data: {}\n").is_none());
    }
}
