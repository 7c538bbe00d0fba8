//! Reading FaceFusion's stderr: tqdm bars refreshed with `\r`, log lines ending in `\n`, and
//! the odd log line glued to the end of a bar (research/facefusion.md §4).

use std::{collections::VecDeque, sync::LazyLock};

use regex::Regex;

/// The bar grammar of research §4 (matched all captured bar segments). Groups: 1 stage,
/// 2 percent, 3 n, 4 total, 5 elapsed, 6 remaining, 7 rate, 8 postfix, 9 glued log line.
static BAR: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(
        r"^(analysing|extracting|processing|merging|downloading): +(\d+)%\|[ =]*\| ([0-9.]+[kMGT]?)/([0-9.]+[kMGT]?) \[([0-9:]+)<([0-9:?]+), ([^,\]]+)(?:, (.*?))?\]\s*(\[.*)?$",
    )
    .expect("valid regex")
});

/// Lines of output kept for error messages.
pub const TAIL_LINES: usize = 50;

/// One piece of FaceFusion's stderr.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// A progress bar refresh.
    Bar(Bar),
    /// Any other line (logs, tracebacks, argparse errors).
    Text(String),
}

/// A parsed tqdm refresh.
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    /// `analysing`, `extracting`, `processing`, `merging` or `downloading`.
    pub stage: String,
    /// Percent as printed by tqdm.
    pub percent: u32,
    /// Done, as printed (`12`, `3.00M`).
    pub n: String,
    /// Total, as printed.
    pub total: String,
    /// The postfix (`rate=0`, `execution_providers=['cpu']`), if any.
    pub postfix: Option<String>,
}

/// Parses one `\r`/`\n`-separated segment into one or two lines (a bar and a glued log line).
pub fn parse_segment(segment: &str) -> Vec<Line> {
    let trimmed = segment.trim_end();
    if trimmed.is_empty() {
        return Vec::new();
    }
    let Some(c) = BAR.captures(trimmed) else {
        return vec![Line::Text(trimmed.to_owned())];
    };
    let mut out = vec![Line::Bar(Bar {
        stage: c[1].to_owned(),
        percent: c[2].parse().unwrap_or(0),
        n: c[3].to_owned(),
        total: c[4].to_owned(),
        postfix: c.get(8).map(|m| m.as_str().to_owned()),
    })];
    if let Some(glued) = c.get(9) {
        out.push(Line::Text(glued.as_str().to_owned()));
    }
    out
}

/// Splits a byte stream on `\r` and `\n`, keeping an incomplete last segment for later.
#[derive(Debug, Default)]
pub struct Splitter {
    partial: Vec<u8>,
}

impl Splitter {
    /// Feeds bytes; answers the complete segments.
    pub fn push(&mut self, bytes: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in bytes {
            if b == b'\r' || b == b'\n' {
                if !self.partial.is_empty() {
                    out.push(String::from_utf8_lossy(&self.partial).into_owned());
                    self.partial.clear();
                }
            } else if self.partial.len() < 64 * 1024 {
                self.partial.push(b);
            }
        }
        out
    }

    /// The last segment, at end of stream.
    pub fn finish(&mut self) -> Option<String> {
        (!self.partial.is_empty())
            .then(|| String::from_utf8_lossy(&std::mem::take(&mut self.partial)).into_owned())
    }
}

/// Where each stage sits on the task's 0–100 scale (a video run goes analysing → [extracting]
/// → processing → [merging]).
fn stage_span(stage: &str) -> Option<(f32, f32)> {
    match stage {
        "analysing" => Some((10.0, 20.0)),
        "extracting" => Some((20.0, 30.0)),
        "processing" => Some((30.0, 95.0)),
        "merging" => Some((95.0, 99.0)),
        _ => None,
    }
}

/// A frames-per-second figure from FaceFusion's output, rounded to a whole number.
#[expect(
    clippy::cast_possible_truncation,
    clippy::cast_sign_loss,
    reason = "rounded and clamped to the u32 range first"
)]
fn whole_rate(rate: f64) -> u32 {
    rate.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// Turns stderr lines into progress reports and keeps the tail for error messages.
#[derive(Debug, Default)]
pub struct Tracker {
    /// The last text lines (bars excluded, except the last refresh of each stage).
    pub tail: VecDeque<String>,
    /// Highest percent reported so far (reports never go backwards).
    pub percent: f32,
    /// The last `analysing` bar's postfix `rate=…` (percent of frames flagged).
    pub analysis_rate: Option<u32>,
    /// The last bar seen, for the tail.
    last_bar: Option<String>,
}

/// A progress report to send to the host.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// 0 to 100.
    pub percent: f32,
    /// Stage and count, e.g. `processing 20/50 frames`.
    pub message: String,
}

impl Tracker {
    /// Takes one segment; answers a report when the progress or stage moved.
    pub fn feed(&mut self, segment: &str) -> Vec<Report> {
        let mut reports = Vec::new();
        for line in parse_segment(segment) {
            match line {
                Line::Bar(bar) => {
                    if bar.stage == "analysing"
                        && let Some(rate) = bar
                            .postfix
                            .as_deref()
                            .and_then(|p| p.strip_prefix("rate="))
                            .and_then(|r| r.trim().parse::<f64>().ok())
                    {
                        self.analysis_rate = Some(whole_rate(rate));
                    }
                    self.last_bar = Some(segment.trim_end().to_owned());
                    if bar.stage == "downloading" {
                        let file = bar
                            .postfix
                            .as_deref()
                            .and_then(|p| p.split("file_name=").nth(1))
                            .unwrap_or("a model");
                        reports.push(Report {
                            percent: self.percent,
                            message: format!("downloading {file} {}%", bar.percent),
                        });
                        continue;
                    }
                    let Some((lo, hi)) = stage_span(&bar.stage) else {
                        continue;
                    };
                    let p = lo + (hi - lo) * (bar.percent.min(100) as f32) / 100.0;
                    if p > self.percent {
                        self.percent = p;
                    }
                    reports.push(Report {
                        percent: self.percent,
                        message: format!("{} {}/{} frames", bar.stage, bar.n, bar.total),
                    });
                }
                Line::Text(text) => {
                    if let Some(bar) = self.last_bar.take() {
                        self.push_tail(bar);
                    }
                    // Image runs have no bars: their log lines are the only milestones.
                    let image_step = if text.contains("copying image") {
                        Some(40.0)
                    } else if text.contains("finalizing image") {
                        Some(80.0)
                    } else {
                        None
                    };
                    if let Some(p) = image_step
                        && p > self.percent
                    {
                        self.percent = p;
                        reports.push(Report {
                            percent: p,
                            message: strip_tag(&text).to_owned(),
                        });
                    }
                    self.push_tail(text);
                }
            }
        }
        reports
    }

    fn push_tail(&mut self, line: String) {
        if self.tail.len() == TAIL_LINES {
            self.tail.pop_front();
        }
        self.tail.push_back(line);
    }

    /// The tail as one block of text (the last bar included).
    pub fn tail_text(&self) -> String {
        let mut lines: Vec<&str> = self.tail.iter().map(String::as_str).collect();
        if let Some(b) = &self.last_bar {
            lines.push(b);
        }
        lines.join("\n")
    }
}

/// `[FACEFUSION.CORE] message` → `message`.
pub fn strip_tag(line: &str) -> &str {
    match (line.starts_with("[FACEFUSION."), line.find("] ")) {
        (true, Some(i)) => &line[i + 2..],
        _ => line,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_bars_parse() {
        let cases = [
            "analysing:   0%|          | 0/50 [00:00<?, ?frame/s]",
            "analysing:   2%|          | 1/50 [00:00<00:04, 11.99frame/s, rate=0]",
            "processing:  40%|====      | 20/50 [00:00<00:00, 40.43frame/s, execution_providers=['cpu']]",
            "processing:  10%|=         | 1/10 [00:02<00:22,  2.50s/frame]",
            "merging: 100%|==========| 50/50 [00:00<00:00, 230.20frame/s]",
            "downloading:  11%|=         | 3.00M/27.0M [00:02<00:16, 1.57MB/s, download_providers=['github', 'huggingface'], file_name=hyperswap_1a_256.onnx]",
            "analysing: 100%|==========| 50/50 [00:00<00:00, 419.26frame/s, rate=0] ",
        ];
        for c in cases {
            let lines = parse_segment(c);
            assert_eq!(lines.len(), 1, "{c}");
            assert!(matches!(lines[0], Line::Bar(_)), "{c}");
        }
        let Line::Bar(b) = &parse_segment(cases[2])[0] else {
            unreachable!()
        };
        assert_eq!(
            (b.stage.as_str(), b.percent, b.n.as_str(), b.total.as_str()),
            ("processing", 40, "20", "50")
        );
        assert_eq!(b.postfix.as_deref(), Some("execution_providers=['cpu']"));
    }

    #[test]
    fn a_glued_log_line_is_split_off() {
        let seg = "processing:   0%|          | 0/50 [00:00<?, ?frame/s, execution_providers=['cpu']][FACEFUSION.INFERENCE_MANAGER] loading model hyperswap_1a_256 succeeded in 0.0 seconds";
        let lines = parse_segment(seg);
        assert_eq!(lines.len(), 2);
        assert_eq!(
            lines[1],
            Line::Text(
                "[FACEFUSION.INFERENCE_MANAGER] loading model hyperswap_1a_256 succeeded in 0.0 seconds"
                    .into()
            )
        );
    }

    #[test]
    fn splitter_handles_cr_lf_and_partial_chunks() {
        let mut s = Splitter::default();
        let mut got = s.push(b"[FACEFUSION.CORE] processing step 1 of 1\n\ranalysing:   0%|");
        got.extend(s.push(b"          | 0/50 [00:00<?, ?frame/s]\rana"));
        got.extend(s.finish());
        assert_eq!(
            got,
            [
                "[FACEFUSION.CORE] processing step 1 of 1",
                "analysing:   0%|          | 0/50 [00:00<?, ?frame/s]",
                "ana"
            ]
        );
    }

    #[test]
    fn tracker_reports_monotonic_stage_progress() {
        let mut t = Tracker::default();
        let mut all = Vec::new();
        for seg in [
            "[FACEFUSION.CORE] processing step 1 of 1",
            "analysing: 100%|==========| 50/50 [00:00<00:00, 419.26frame/s, rate=0]",
            "processing:   0%|          | 0/50 [00:00<?, ?frame/s]",
            "processing:  40%|====      | 20/50 [00:00<00:00, 40.43frame/s, execution_providers=['cpu']]",
            "processing: 100%|==========| 50/50 [00:01<00:00, 48.06frame/s, execution_providers=['cpu']]",
            "merging: 100%|==========| 50/50 [00:00<00:00, 250.63frame/s]",
            "[FACEFUSION.TO_VIDEO] processing to video succeeded in 1.57 seconds",
        ] {
            all.extend(t.feed(seg));
        }
        let percents: Vec<f32> = all.iter().map(|r| r.percent).collect();
        assert!(percents.windows(2).all(|w| w[0] <= w[1]), "{percents:?}");
        assert_eq!(all[0].message, "analysing 50/50 frames");
        assert!(all.iter().any(|r| r.message == "processing 20/50 frames"));
        assert_eq!(t.analysis_rate, Some(0));
        assert!(t.tail_text().ends_with("succeeded in 1.57 seconds"));
        assert!(t.tail_text().contains("merging: 100%"));
    }

    #[test]
    fn image_log_lines_give_milestones() {
        let mut t = Tracker::default();
        let r = t.feed("[FACEFUSION.TO_IMAGE] copying image with a resolution of 256x256");
        assert_eq!(r[0].percent, 40.0);
        assert_eq!(r[0].message, "copying image with a resolution of 256x256");
        assert_eq!(strip_tag("plain"), "plain");
    }
}
