//! Task webhooks: Standard Webhooks signatures ([`signing`]) and the [`Deliverer`], the loop
//! that sends the delivery rows of the task store.
//!
//! Deliveries are rows in the task store (see `store::deliveries`): terminal messages are
//! written by the store in the same transaction as the task's terminal state, so a task that
//! finished always has its message, whatever crashes. Any process may run a deliverer: it
//! claims due rows with a lease (so two processes never send a row at once; a process killed
//! mid-send leaves a lease that expires and another, or the restarted one, sends it again),
//! POSTs each signed, and records the attempt: delivered on 2xx; otherwise retried after an
//! exponential backoff with jitter (`webhooks.backoff_base_ms` doubling up to
//! `webhooks.backoff_max_ms`) while the retry window (`webhooks.max_age_secs` from creation or
//! the last redelivery) lasts, then dead-lettered. Delivery is at least once: receivers
//! deduplicate by `webhook-id`.

use std::{sync::Arc, time::Duration};

use chrono::Utc;
use serde_json::Value;
use tokio::sync::{Semaphore, watch};

use crate::{
    config::WebhooksConfig,
    fetch::Fetcher,
    store::{Delivery, DeliveryAttempt, DeliveryOutcome, TaskStore},
    task_view::TaskView,
};

pub(crate) mod signing;

/// Events a client may ask for besides the terminal ones (which are always sent).
pub(crate) const OPTIONAL_EVENTS: [&str; 2] = ["task.started", "task.progress"];

/// Sends the task store's webhook deliveries. See the module docs.
pub(crate) struct Deliverer {
    store: Arc<dyn TaskStore>,
    fetcher: Fetcher,
    signer: signing::Signer,
    settings: WebhooksConfig,
}

impl Deliverer {
    /// A deliverer of `store`'s rows through `fetcher` (its SSRF guard applies to every call).
    pub(crate) fn new(
        store: Arc<dyn TaskStore>,
        fetcher: Fetcher,
        settings: WebhooksConfig,
    ) -> Deliverer {
        Deliverer {
            store,
            fetcher,
            signer: signing::Signer::new(&settings.secrets),
            settings,
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_secs(self.settings.timeout_secs.max(1))
    }

    /// Claims and sends due deliveries until `stop` turns true.
    pub(crate) async fn run(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let permits = Arc::new(Semaphore::new(self.settings.concurrency.max(1) as usize));
        let poll = Duration::from_millis(self.settings.poll_interval_ms.max(1));
        // The lease outlasts an attempt, so a row is sent twice only when a process dies.
        let lease = self.timeout() + Duration::from_secs(30);
        loop {
            if *stop.borrow() {
                return;
            }
            let free = u32::try_from(permits.available_permits()).unwrap_or(u32::MAX);
            let mut claimed = 0;
            if free > 0 {
                match self.store.claim_deliveries(lease, free).await {
                    Ok(batch) => {
                        claimed = u32::try_from(batch.len()).unwrap_or(u32::MAX);
                        for d in batch {
                            let Ok(permit) = permits.clone().acquire_owned().await else {
                                return;
                            };
                            let me = self.clone();
                            tokio::spawn(async move {
                                me.deliver(d).await;
                                drop(permit);
                            });
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "could not claim webhook deliveries"),
                }
            }
            if claimed == free && free > 0 {
                tokio::task::yield_now().await;
                continue;
            }
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = stop.changed() => {}
            }
        }
    }

    /// The body of a delivery: the task as `GET /api/tasks/{id}` shows it, with `event`
    /// (without `input` for `task.started` and `task.progress`).
    async fn payload(&self, d: &Delivery) -> Option<String> {
        if let Some(p) = &d.payload {
            return Some(p.clone());
        }
        let task = match self.store.get(d.task_id).await {
            Ok(Some(t)) => t,
            Ok(None) => return None,
            Err(e) => {
                tracing::warn!(delivery = %d.id, error = %e, "could not read the task of a webhook");
                return None;
            }
        };
        let mut body = TaskView::from(task).to_value();
        if let Value::Object(m) = &mut body {
            // Only the terminal message carries the input (as the seed's completion webhook
            // did): `task.started` and `task.progress` rows are many and each one freezes its
            // body, so they go without it.
            if matches!(d.event.as_str(), "task.started" | "task.progress") {
                m.remove("input");
            }
            m.insert("event".into(), Value::String(d.event.clone()));
        }
        Some(body.to_string())
    }

    /// One attempt of `d`, recorded.
    async fn deliver(&self, d: Delivery) {
        // A task deleted meanwhile takes its rows with it; a failed read leaves the lease to
        // expire and the row to be claimed again.
        let Some(payload) = self.payload(&d).await else {
            return;
        };
        let now = Utc::now();
        let timestamp = now.timestamp();
        let mut headers = vec![
            ("webhook-id", d.id.clone()),
            ("webhook-timestamp", timestamp.to_string()),
        ];
        if let Some(sig) = self.signer.sign(&d.id, timestamp, payload.as_bytes()) {
            headers.push(("webhook-signature", sig));
        }
        let sent = self
            .fetcher
            .post_json(&d.url, payload.clone(), &headers, self.timeout())
            .await;
        let (status, error, retryable) = match sent {
            Ok(s) if (200..300).contains(&s) => (Some(s), None, true),
            Ok(s) => (Some(s), Some(format!("the receiver answered {s}")), true),
            Err(e) => (None, Some(e.to_string()), e.retryable()),
        };
        let outcome = if error.is_none() {
            DeliveryOutcome::Delivered
        } else {
            let window_end = d.window_start
                + chrono::Duration::seconds(
                    i64::try_from(self.settings.max_age_secs).unwrap_or(i64::MAX / 2_000),
                );
            let retry_at =
                now + chrono::Duration::from_std(self.backoff(d.attempts)).unwrap_or_default();
            if !retryable || retry_at > window_end {
                DeliveryOutcome::Dead
            } else {
                DeliveryOutcome::Retry(retry_at)
            }
        };
        crate::metrics::webhook_delivery(match outcome {
            DeliveryOutcome::Delivered => "delivered",
            DeliveryOutcome::Retry(_) => "retried",
            DeliveryOutcome::Dead => "dead",
        });
        match &outcome {
            DeliveryOutcome::Delivered => {
                tracing::debug!(task_id = %d.task_id, delivery = %d.id, event = %d.event, "webhook delivered")
            }
            DeliveryOutcome::Retry(at) => {
                tracing::info!(task_id = %d.task_id, delivery = %d.id, error = ?error, retry_at = %at, "webhook not delivered; retrying later")
            }
            DeliveryOutcome::Dead => {
                tracing::warn!(task_id = %d.task_id, delivery = %d.id, error = ?error, "webhook dead-lettered")
            }
        }
        let attempt = DeliveryAttempt {
            payload,
            status,
            error,
            outcome,
        };
        if let Err(e) = self.store.record_delivery(&d.id, attempt).await {
            tracing::warn!(delivery = %d.id, error = %e, "could not record a webhook attempt");
        }
    }

    /// Delay after the failed attempt number `done` + 1: base × 2^done, capped, times a random
    /// factor in [0.5, 1.0] (jitter, so receivers that came back are not hit all at once).
    fn backoff(&self, done: u32) -> Duration {
        let base = self.settings.backoff_base_ms.max(1);
        let ms = base
            .saturating_mul(1u64 << done.min(40))
            .min(self.settings.backoff_max_ms.max(base));
        let jitter = rand::random_range(0.5..=1.0);
        Duration::from_millis(ms).mul_f64(jitter)
    }
}

/// Parses a create request's `webhook_events`: each must be an optional event (the terminal
/// ones are always sent and may be listed too). Answers the stored form (comma-separated
/// optional events, `None` for none) or the first unknown name.
pub(crate) fn parse_events(events: &[String]) -> Result<Option<String>, String> {
    let mut wanted: Vec<&str> = Vec::new();
    for e in events {
        let e = e.trim();
        if OPTIONAL_EVENTS.contains(&e) {
            if !wanted.contains(&e) {
                wanted.push(e);
            }
        } else if !matches!(e, "task.completed" | "task.failed" | "task.cancelled") {
            return Err(e.chars().take(64).collect());
        }
    }
    Ok((!wanted.is_empty()).then(|| wanted.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_checked() {
        assert_eq!(parse_events(&[]).unwrap(), None);
        assert_eq!(
            parse_events(&[
                "task.progress".into(),
                "task.completed".into(),
                "task.progress".into()
            ])
            .unwrap(),
            Some("task.progress".into())
        );
        assert_eq!(
            parse_events(&["task.nope".into()]).unwrap_err(),
            "task.nope"
        );
    }
}
