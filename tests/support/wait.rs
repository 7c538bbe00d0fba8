//! Bounded waits on a condition: tests poll for what they expect to happen instead of sleeping
//! a fixed time and hoping it did. Separate from the server harness because the tests use
//! them on anything they can observe (the API, logs, processes, sockets).

use std::{fmt::Display, time::Duration};

/// How often the waits below check again.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// Polls `check` until it answers `Ok` or `timeout` has passed, and answers its last answer
/// (`Err` means "not yet" and carries what was seen). For callers that clean up before they
/// assert; the others use [`wait_for`] or [`wait_until`].
pub async fn poll<T, E>(
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Result<T, E>,
) -> Result<T, E> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let answer = check().await;
        if answer.is_ok() || tokio::time::Instant::now() >= deadline {
            return answer;
        }
        tokio::time::sleep(POLL_EVERY).await;
    }
}

/// Polls `check` until it answers `Ok`, and answers that value (`Err` means "not yet" and
/// carries what was seen). Panics after `timeout`, naming `what` was awaited and the last
/// thing seen.
pub async fn wait_for<T, E: Display>(
    what: &str,
    timeout: Duration,
    check: impl AsyncFnMut() -> Result<T, E>,
) -> T {
    poll(timeout, check).await.unwrap_or_else(|seen| {
        panic!("timed out after {timeout:?} waiting until {what}; last seen: {seen}")
    })
}

/// Polls `check` until it holds; panics after `timeout`, naming `what` was awaited.
pub async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    poll(
        timeout,
        async || if check().await { Ok(()) } else { Err(()) },
    )
    .await
    .unwrap_or_else(|()| panic!("timed out after {timeout:?} waiting until {what}"));
}
