//! Webhook delivery endpoints: the deliveries of a task and their redelivery.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use poem_openapi::{Object, OpenApi, param::Path, payload::Json};

use super::{ApiTags, AppState, error::ApiError, ids::parse_id};
use crate::{error_codes, store::Delivery};

/// One webhook message of a task and how its delivery went.
#[derive(Debug, Clone, Object)]
pub(crate) struct DeliveryView {
    /// The message id, sent as `webhook-id` (the same on every retry: deduplicate by it).
    pub id: String,
    /// `task.completed`, `task.failed`, `task.cancelled`, `task.started` or `task.progress`.
    pub event: String,
    /// Where it is sent.
    pub url: String,
    /// `pending` (to be sent at `next_at`), `delivered` (the receiver answered 2xx) or `dead`
    /// (given up after `webhooks.max_age_secs`; `redeliver` revives it).
    pub state: String,
    /// Attempts made.
    pub attempts: u32,
    /// When it was created.
    pub created_at: DateTime<Utc>,
    /// When it is (or was last) due.
    pub next_at: DateTime<Utc>,
    /// When the last attempt was made.
    pub last_attempt_at: Option<DateTime<Utc>>,
    /// HTTP status the receiver gave the last attempt, if it answered.
    pub last_status: Option<u16>,
    /// Why the last attempt failed, if it did.
    pub last_error: Option<String>,
    /// When the receiver answered 2xx.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl From<Delivery> for DeliveryView {
    fn from(d: Delivery) -> Self {
        DeliveryView {
            id: d.id,
            event: d.event,
            url: d.url,
            state: d.state.as_str().to_owned(),
            attempts: d.attempts,
            created_at: d.created_at,
            next_at: d.next_at,
            last_attempt_at: d.last_attempt_at,
            last_status: d.last_status,
            last_error: d.last_error,
            delivered_at: d.delivered_at,
        }
    }
}

/// A task's webhook deliveries.
#[derive(Debug, Clone, Object)]
pub(crate) struct DeliveryList {
    /// The task.
    pub task_id: String,
    /// Its deliveries, oldest first.
    pub deliveries: Vec<DeliveryView>,
}

/// Answer to a redelivery.
#[derive(Debug, Clone, Object)]
pub(crate) struct Redelivered {
    /// Deliveries made pending and due now.
    pub redelivered: u64,
}

/// The summary `GET /api/tasks/{id}` shows as `webhook`: the latest delivery's state.
pub(crate) fn summary(deliveries: &[Delivery]) -> Option<serde_json::Value> {
    let last = deliveries.last()?;
    Some(serde_json::json!({
        "deliveries": deliveries.len(),
        "pending": deliveries.iter().filter(|d| d.state == crate::store::DeliveryState::Pending).count(),
        "dead": deliveries.iter().filter(|d| d.state == crate::store::DeliveryState::Dead).count(),
        "last": {
            "id": last.id,
            "event": last.event,
            "state": last.state.as_str(),
            "attempts": last.attempts,
            "last_status": last.last_status,
            "last_error": last.last_error,
            "next_at": last.next_at,
        },
    }))
}

/// Webhook delivery endpoints.
pub(crate) struct WebhooksApi {
    /// Shared state.
    pub state: Arc<AppState>,
}

impl WebhooksApi {
    async fn existing_task(&self, task_id: &str) -> Result<uuid::Uuid, ApiError> {
        let id = parse_id(task_id)?;
        match self.state.store.get(id).await? {
            Some(_) => Ok(id),
            None => Err(ApiError::not_found(
                error_codes::TASK_NOT_FOUND,
                format!("no task {id}"),
            )),
        }
    }
}

#[OpenApi(tag = "ApiTags::Tasks")]
impl WebhooksApi {
    /// List a task's webhook deliveries.
    ///
    /// One entry per message (`task.completed`, `task.failed`, `task.cancelled`, and the
    /// `task.started` / `task.progress` messages the task asked for in `webhook_events`), with
    /// its state, attempts and the last answer. Deliveries are deleted with their task.
    #[oai(path = "/api/tasks/:task_id/webhooks", method = "get")]
    async fn list(&self, task_id: Path<String>) -> Result<Json<DeliveryList>, ApiError> {
        let id = self.existing_task(&task_id.0).await?;
        let deliveries = self.state.store.list_deliveries(id).await?;
        Ok(Json(DeliveryList {
            task_id: id.to_string(),
            deliveries: deliveries.into_iter().map(Into::into).collect(),
        }))
    }

    /// Redeliver every webhook message of a task.
    ///
    /// Each delivery (delivered or dead included) becomes pending and due now, with a new
    /// retry window of `webhooks.max_age_secs`; it keeps its id and body, so a receiver that
    /// deduplicates by `webhook-id` sees it as the same message.
    #[oai(path = "/api/tasks/:task_id/webhooks/redeliver", method = "post")]
    async fn redeliver_all(&self, task_id: Path<String>) -> Result<Json<Redelivered>, ApiError> {
        let id = self.existing_task(&task_id.0).await?;
        let n = self.state.store.redeliver(id, None).await?;
        Ok(Json(Redelivered { redelivered: n }))
    }

    /// Redeliver one webhook message of a task.
    ///
    /// As `.../webhooks/redeliver`, for one delivery; 404 `delivery_not_found` when the task has
    /// no delivery with this id.
    #[oai(
        path = "/api/tasks/:task_id/webhooks/:delivery_id/redeliver",
        method = "post"
    )]
    async fn redeliver_one(
        &self,
        task_id: Path<String>,
        delivery_id: Path<String>,
    ) -> Result<Json<Redelivered>, ApiError> {
        let id = self.existing_task(&task_id.0).await?;
        let n = self.state.store.redeliver(id, Some(&delivery_id.0)).await?;
        if n == 0 {
            return Err(ApiError::not_found(
                error_codes::DELIVERY_NOT_FOUND,
                format!("task {id} has no webhook delivery {:?}", delivery_id.0),
            ));
        }
        Ok(Json(Redelivered { redelivered: n }))
    }
}
