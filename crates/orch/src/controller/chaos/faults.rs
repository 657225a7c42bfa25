//! The balancer's fault API (`POST`/`DELETE /api/faults`), as chaos experiments use it:
//! which balancer instance holds which fault, and the HTTP calls, made in tasks outside
//! the controller (they take time).

use std::time::Duration;

use balancer::faults::FaultSpec;
use reqwest::StatusCode;
use serde::Deserialize;

use super::experiments::PostedFault;
use crate::reconcile::InstanceId;

/// A running balancer instance that routes to a faulty service.
#[derive(Clone, Debug)]
pub struct Balancer {
    pub id: InstanceId,
    pub generation: u64,
    pub url: String,
}

/// The balancer's `/api/faults`, with the cluster token.
#[derive(Clone)]
pub struct BalancerClient {
    pub http: reqwest::Client,
    pub token: kit::secret::Secret,
}

impl BalancerClient {
    /// Posts a fault; the balancer's fault id, or why not.
    pub async fn post(&self, url: &str, body: &FaultSpec) -> Result<String, String> {
        let res = self
            .http
            .post(format!("{url}/api/faults"))
            .bearer_auth(self.token.expose())
            .json(body)
            .timeout(Duration::from_secs(2))
            .send()
            .await
            .map_err(|e| format!("cannot reach it: {e}"))?;
        let status = res.status();
        // The balancer's fault (only its id matters here), or its `{"error": ...}`.
        #[derive(Deserialize)]
        struct Answer {
            id: Option<String>,
            error: Option<String>,
        }
        let answer = res.json::<Answer>().await.unwrap_or(Answer { id: None, error: None });
        match answer.id {
            Some(id) if status.is_success() => Ok(id),
            _ => Err(answer.error.unwrap_or_else(|| format!("status {status}"))),
        }
    }

    /// Removes a fault (one the balancer no longer has is fine).
    pub async fn delete(&self, fault: &PostedFault) {
        let res = self
            .http
            .delete(format!("{}/api/faults/{}", fault.url, fault.id))
            .bearer_auth(self.token.expose())
            .timeout(Duration::from_secs(2))
            .send()
            .await;
        match res {
            Ok(r) if r.status().is_success() || r.status() == StatusCode::NOT_FOUND => {}
            Ok(r) => tracing::warn!(balancer = %fault.balancer, status = %r.status(), "cannot remove a chaos fault"),
            Err(e) => tracing::warn!(balancer = %fault.balancer, error = %e, "cannot remove a chaos fault"),
        }
    }

    pub async fn delete_all(&self, faults: &[PostedFault]) {
        futures_util::future::join_all(faults.iter().map(|f| self.delete(f))).await;
    }
}
