//! Active health checks: `GET /health` on every routed instance.
//!
//! A usable instance is checked every `HEALTH_CHECK_INTERVAL_MS`; one that is out of
//! rotation (ejected by the request path, or failing checks) every [`RECHECK`] (or the
//! interval, if shorter), so it comes back soon after it recovers. `HEALTH_FAIL_THRESHOLD`
//! failures in a row take an instance out; `HEALTH_PASS_THRESHOLD` passes in a row bring
//! it (and an ejected one) back. Checks run concurrently; a hung instance holds only its
//! own check, for at most `HEALTH_CHECK_TIMEOUT_MS`.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use http::{Request, Uri};

use crate::AppState;
use crate::backend::{Change, Instance};
use crate::body::RequestBody;

/// How often an instance out of rotation is checked.
pub const RECHECK: Duration = Duration::from_millis(200);

struct Due {
    next: Instant,
    running: Arc<AtomicBool>,
}

/// Checks instances until `shutdown`.
pub async fn run(state: Arc<AppState>, shutdown: kit::Shutdown) {
    let interval = state.config.health_interval;
    let tick = interval.min(RECHECK);
    let mut due: HashMap<usize, Due> = HashMap::new();
    loop {
        let set = state.backends.load_full();
        let now = Instant::now();
        let mut seen = HashSet::new();
        for instance in set.pools.iter().flatten() {
            let key = Arc::as_ptr(instance) as usize;
            seen.insert(key);
            let entry = due.entry(key).or_insert_with(|| Due { next: now + interval, running: Arc::default() });
            let period = if instance.usable() { interval } else { tick };
            // An instance that just went out of rotation is looked at within one tick.
            entry.next = entry.next.min(now + period);
            if entry.next > now || entry.running.load(Relaxed) {
                continue;
            }
            entry.next = now + period;
            entry.running.store(true, Relaxed);
            let (state, instance, running) = (state.clone(), instance.clone(), entry.running.clone());
            shutdown.spawn(async move {
                check(&state, &instance).await;
                running.store(false, Relaxed);
            });
        }
        due.retain(|key, _| seen.contains(key));
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep(tick) => {}
        }
    }
}

async fn check(state: &AppState, instance: &Instance) {
    let uri: Uri = match format!("http://{}/health", instance.authority).parse() {
        Ok(uri) => uri,
        Err(_) => return,
    };
    let mut req = Request::new(RequestBody::Empty);
    *req.uri_mut() = uri;
    let exchange = async {
        let res = state.client.request(req).await?;
        let passed = res.status().is_success();
        // Read the (small) body, so the connection goes back to the pool.
        let _ = http_body_util::BodyExt::collect(res.into_body()).await;
        Ok::<_, hyper_util::client::legacy::Error>(passed)
    };
    let passed = match tokio::time::timeout(state.config.health_timeout, exchange).await {
        Ok(Ok(passed)) => passed,
        Ok(Err(e)) => {
            tracing::debug!(instance = %instance.id, error = %e, "health check failed");
            false
        }
        Err(_) => {
            tracing::debug!(instance = %instance.id, "health check timed out");
            false
        }
    };
    let config = &state.config;
    match instance.checked(passed, config.pass_threshold, config.fail_threshold) {
        Some(Change::Unhealthy) => tracing::warn!(instance = %instance.id, url = %instance.url, "instance unhealthy"),
        Some(Change::Readmitted) => tracing::info!(instance = %instance.id, url = %instance.url, "instance readmitted"),
        None => {}
    }
}
