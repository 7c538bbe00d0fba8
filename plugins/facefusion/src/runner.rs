//! Running FaceFusion as a child process: its own process group, stderr parsed into progress,
//! the outcome decided from exit status + output file + messages, and SIGTERM → SIGKILL to the
//! whole group on cancel, timeout or when the task's future is dropped.

use std::{
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use tokio::{
    io::AsyncReadExt,
    process::{Child, Command},
    sync::{oneshot, watch},
};

use crate::{
    error::Error,
    progress::{Report, Splitter, Tracker},
};

/// One FaceFusion invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// Interpreter.
    pub python: String,
    /// Arguments after the interpreter (`facefusion.py headless-run …`).
    pub args: Vec<String>,
    /// The checkout folder (FaceFusion must run there).
    pub cwd: PathBuf,
    /// The file FaceFusion must write.
    pub output: PathBuf,
    /// Kill the run after this long.
    pub timeout: Duration,
    /// Between SIGTERM and SIGKILL.
    pub grace: Duration,
}

/// How the child ended.
#[derive(Debug)]
pub struct Finished {
    /// Exit status.
    pub status: ExitStatus,
    /// The last lines of stderr.
    pub tail: String,
    /// Percent flagged by the content analyser (video), if seen.
    pub analysis_rate: Option<u32>,
}

/// Sends `sig` to the process group `pgid`.
fn signal_group(pgid: i32, sig: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

/// SIGTERM to the group, up to `grace` for the leader to exit, then SIGKILL to the group
/// (which also reaches any process the engine left behind), then reaps the leader.
async fn stop_group(child: &mut Child, pgid: i32, grace: Duration) {
    signal_group(pgid, libc::SIGTERM);
    let deadline = tokio::time::Instant::now() + grace;
    loop {
        // `try_wait` reaps the leader; the group id stays reserved while members live.
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    signal_group(pgid, libc::SIGKILL);
    let _ = child.wait().await;
}

/// Why a run was stopped from outside.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// Keep going.
    No,
    /// Cancelled (or the task's future was dropped).
    Cancel,
}

/// Runs the invocation. `progress` receives reports; `stop` ends the run early (the supervisor
/// also stops it when the sender or this future is dropped). Once the process group is gone,
/// `on_exit` runs and then `done` is set, on every path.
pub async fn run(
    inv: Invocation,
    progress: impl Fn(Report) + Send + 'static,
    stop: watch::Receiver<Stop>,
    done: watch::Sender<bool>,
    on_exit: Box<dyn FnOnce() + Send>,
) -> Result<Finished, Error> {
    let mut cmd = Command::new(&inv.python);
    cmd.args(&inv.args)
        .current_dir(&inv.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // If the host dies (kill -9, crash), the kernel kills the engine too: being in its own
    // process group, it would otherwise run on as an orphan. The spawning thread is a worker of
    // the plugin's runtime, which lives as long as the process.
    // SAFETY: prctl is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            on_exit();
            let _ = done.send(true);
            return Err(Error::NotInstalled(format!(
                "cannot start FaceFusion with {:?} in {}: {e} (set `python` / FACEFUSION_PYTHON)",
                inv.python,
                inv.cwd.display()
            )));
        }
    };
    let pgid = child.id().and_then(|p| i32::try_from(p).ok()).unwrap_or(0);
    let stderr = child.stderr.take().expect("stderr is piped");

    // Reader: stderr → progress reports and the tail.
    let reader = tokio::spawn(async move {
        let mut stderr = stderr;
        let mut splitter = Splitter::default();
        let mut tracker = Tracker::default();
        let mut buf = vec![0u8; 8192];
        loop {
            match stderr.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    for seg in splitter.push(&buf[..n]) {
                        for r in tracker.feed(&seg) {
                            progress(r);
                        }
                    }
                }
            }
        }
        if let Some(seg) = splitter.finish() {
            for r in tracker.feed(&seg) {
                progress(r);
            }
        }
        tracker
    });

    // Supervisor: owns the child; a separate task so that it still stops the group when the
    // task's future is dropped (the host drops it to cancel).
    let (result_tx, result_rx) = oneshot::channel::<Result<ExitStatus, Error>>();
    let timeout = inv.timeout;
    let grace = inv.grace;
    let mut stop = stop;
    tokio::spawn(async move {
        let deadline = tokio::time::sleep(timeout);
        tokio::pin!(deadline);
        let outcome = loop {
            tokio::select! {
                status = child.wait() => {
                    // Stragglers of a finished engine (none expected) go with it.
                    signal_group(pgid, libc::SIGKILL);
                    break status.map_err(|e| Error::Io(format!("waiting for FaceFusion: {e}")));
                }
                _ = &mut deadline => {
                    stop_group(&mut child, pgid, grace).await;
                    break Err(Error::Timeout(format!(
                        "FaceFusion did not finish within {} s; it was stopped",
                        timeout.as_secs()
                    )));
                }
                changed = stop.changed() => {
                    if changed.is_err() || *stop.borrow() == Stop::Cancel {
                        stop_group(&mut child, pgid, grace).await;
                        break Err(Error::EngineFailed {
                            message: "cancelled".into(),
                            retryable: false,
                        });
                    }
                }
            }
        };
        on_exit();
        let _ = done.send(true);
        let _ = result_tx.send(outcome);
    });

    let status = result_rx.await.map_err(|_| Error::EngineFailed {
        message: "the FaceFusion supervisor stopped".into(),
        retryable: true,
    })??;
    // The pipe closes when the group is gone; bounded in case something else holds it.
    let tracker = match tokio::time::timeout(Duration::from_secs(5), reader).await {
        Ok(Ok(t)) => t,
        _ => Tracker::default(),
    };
    Ok(Finished {
        status,
        tail: tracker.tail_text(),
        analysis_rate: tracker.analysis_rate,
    })
}

/// Size of the output, 0 when missing.
fn output_size(path: &Path) -> u64 {
    std::fs::metadata(path)
        .ok()
        .filter(|m| m.is_file())
        .map_or(0, |m| m.len())
}

/// Shortens the tail for an error message: the last `n` lines.
fn last_lines(tail: &str, n: usize) -> String {
    let lines: Vec<&str> = tail.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Decides the outcome (research §5, §10.6): success only with exit 0 **and** a non-empty
/// output; exit-1 messages mapped to codes; exit 2 is a configuration error.
pub fn classify(f: &Finished, output: &Path) -> Result<u64, Error> {
    use std::os::unix::process::ExitStatusExt;
    let tail = &f.tail;
    let has = |s: &str| tail.contains(s);
    let excerpt = || last_lines(tail, 12);
    match f.status.code() {
        Some(0) => {
            let size = output_size(output);
            if size > 0 {
                Ok(size)
            } else {
                Err(Error::ContentRejected(
                    "FaceFusion finished without writing an output: its content analyser \
                     declined the target"
                        .into(),
                ))
            }
        }
        Some(1) => Err(
            if has("validating hash for")
                || has("validating source for")
                || has("deleting corrupt source")
                || (has("loading model") && has(" failed"))
            {
                let models: Vec<&str> = tail
                    .lines()
                    .filter(|l| l.contains(" failed") || l.contains("deleting corrupt"))
                    .collect();
                Error::ModelUnavailable(format!(
                    "FaceFusion's models are missing or corrupt and could not be downloaded; \
                 provision them (see the plugin's README): {}",
                    models.join("; ")
                ))
            } else if has("no source face detected!") {
                Error::NoSourceFace("no face was found in the source image".into())
            } else if has("choose an image for the source!") {
                Error::InvalidSource("the source is not an image FaceFusion can read".into())
            } else if has("choose an image or video for the target!") {
                Error::InvalidTarget(
                    "the target is not an image or video FaceFusion can read".into(),
                )
            } else if has("specify the output image or video within a directory!")
                || has("match the target and output extension!")
            {
                Error::EngineFailed {
                    message: format!("FaceFusion refused the output path: {}", excerpt()),
                    retryable: false,
                }
            } else if has("Traceback (most recent call last)") {
                Error::EngineFailed {
                    message: format!("FaceFusion crashed:\n{}", excerpt()),
                    retryable: true,
                }
            } else if f.analysis_rate == Some(100) || tail.trim().is_empty() || only_progress(tail)
            {
                // Exit 1 with no message: the content analyser declined the target (a job-id
                // collision is the other cause, impossible with a private jobs folder).
                Error::ContentRejected("FaceFusion's content analyser declined the target".into())
            } else {
                Error::EngineFailed {
                    message: format!("FaceFusion failed (exit 1):\n{}", excerpt()),
                    retryable: false,
                }
            },
        ),
        Some(2) => Err(Error::EngineMisconfigured(format!(
            "FaceFusion refused its arguments or environment (exit 2); check the plugin's \
             config and that ffmpeg, ffprobe and curl are on PATH:\n{}",
            excerpt()
        ))),
        Some(c) => Err(Error::EngineFailed {
            message: format!("FaceFusion exited with {c}:\n{}", excerpt()),
            retryable: true,
        }),
        None => Err(Error::EngineFailed {
            message: format!(
                "FaceFusion was killed by signal {}:\n{}",
                f.status.signal().unwrap_or(0),
                excerpt()
            ),
            retryable: true,
        }),
    }
}

/// True when the output holds no message of its own: only progress bars and FaceFusion's
/// routine log lines (no `failed`, no `…!` complaint, nothing outside its log format).
fn only_progress(tail: &str) -> bool {
    tail.lines().all(|l| {
        let routine_log =
            l.starts_with("[FACEFUSION.") && !l.contains(" failed") && !l.trim_end().ends_with('!');
        routine_log
            || crate::progress::parse_segment(l)
                .iter()
                .all(|x| matches!(x, crate::progress::Line::Bar(_)))
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    fn finished(code: i32, tail: &str) -> Finished {
        Finished {
            status: ExitStatus::from_raw(code << 8),
            tail: tail.into(),
            analysis_rate: None,
        }
    }

    fn processes_with(needle: &str) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
            })
            .count()
    }

    /// Dropping the stop sender (what dropping the task's future does) stops the whole group,
    /// then runs `on_exit` and sets `done`.
    #[tokio::test]
    async fn a_dropped_run_stops_its_process_group() {
        let marker = format!("sleep 4{}", std::process::id() % 1000);
        let inv = Invocation {
            python: "sh".into(),
            args: vec![
                "-c".into(),
                format!("{marker}1 & {marker}2; echo never >&2"),
            ],
            cwd: std::env::temp_dir(),
            output: std::env::temp_dir().join("never-written"),
            timeout: Duration::from_secs(60),
            grace: Duration::from_millis(500),
        };
        let (stop_tx, stop_rx) = watch::channel(Stop::No);
        let (done_tx, mut done_rx) = watch::channel(false);
        let exited = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = exited.clone();
        let on_exit = Box::new(move || flag.store(true, std::sync::atomic::Ordering::SeqCst));
        let run = tokio::spawn(run(inv, |_| {}, stop_rx, done_tx, on_exit));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while processes_with(&marker) < 2 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the group never started"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        run.abort();
        drop(stop_tx);
        tokio::time::timeout(Duration::from_secs(10), done_rx.wait_for(|d| *d))
            .await
            .expect("done in time")
            .unwrap();
        assert!(exited.load(std::sync::atomic::Ordering::SeqCst));
        // A killed process can stay visible in /proc for a moment while the kernel tears it
        // down; wait for that, bounded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while processes_with(&marker) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(processes_with(&marker), 0);
    }

    #[test]
    fn exit_codes_and_messages_map_to_codes() {
        let none = Path::new("/nonexistent/out.png");
        let code = |c, t: &str| {
            classify(&finished(c, t), none)
                .unwrap_err()
                .code()
                .to_owned()
        };
        assert_eq!(
            code(0, "[FACEFUSION.CORE] processing step 1 of 1"),
            "content_rejected"
        );
        assert_eq!(
            code(
                1,
                "[FACEFUSION.CORE] processing step 1 of 1\n[FACEFUSION.DOWNLOAD] validating hash for nsfw_1 failed"
            ),
            "model_unavailable"
        );
        assert_eq!(
            code(
                1,
                "[FACEFUSION.INFERENCE_MANAGER] loading model hyperswap_1a_256 failed"
            ),
            "model_unavailable"
        );
        assert_eq!(
            code(1, "[FACEFUSION.CORE] no source face detected!"),
            "no_source_face"
        );
        assert_eq!(
            code(1, "[FACEFUSION.CORE] choose an image for the source!"),
            "invalid_source"
        );
        assert_eq!(
            code(
                1,
                "[FACEFUSION.CORE] choose an image or video for the target!"
            ),
            "invalid_target"
        );
        assert_eq!(
            code(1, "[FACEFUSION.CORE] processing step 1 of 1"),
            "content_rejected"
        );
        // Image declined: the routine lines, then exit 1 without a message.
        assert_eq!(
            code(
                1,
                "[FACEFUSION.CORE] processing step 1 of 1\n[FACEFUSION.TO_IMAGE] copying image with a resolution of 40x30"
            ),
            "content_rejected"
        );
        assert_eq!(
            code(2, "facefusion.py: error: unrecognized arguments: --foo"),
            "engine_misconfigured"
        );
        let crash = classify(
            &finished(1, "Traceback (most recent call last):\n  x"),
            none,
        )
        .unwrap_err();
        assert!(crash.retryable());
        let killed = Finished {
            status: ExitStatus::from_raw(9),
            tail: String::new(),
            analysis_rate: None,
        };
        assert_eq!(classify(&killed, none).unwrap_err().code(), "engine_error");
    }
}
