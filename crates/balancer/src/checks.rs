//! Active health checks: `GET /health` on every routed instance.
//!
//! A usable instance is checked every `HEALTH_CHECK_INTERVAL_MS`; one that is out of
//! rotation (ejected by the request path, or failing checks) every [`RECHECK`] (or the
//! interval, if shorter), so it comes back soon after it recovers. `HEALTH_FAIL_THRESHOLD`
//! failures in a row take an instance out; `HEALTH_PASS_THRESHOLD` passes in a row bring
//! it (and an ejected one) back. Checks run concurrently; a hung instance holds only its
//! own check, for at most `HEALTH_CHECK_TIMEOUT_MS`.
//!
//! At rest it costs one wake-up per check: the loop sleeps until the next check is due (or
//! the instances change: a new set, or one ejected by the request path, [`backend::changed`]), and each
//! instance's checks go over one kept connection of their own (a [`pool::Conn`] driven by
//! the check itself), not the request path's pool, whose idle limit
//! (`BALANCER_UPSTREAM_IDLE_MS`) would close it just before the next check: the instance is
//! not made to accept and close a connection per check.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::time::{Duration, Instant};

use std::future::poll_fn;
use std::pin::Pin;
use std::task::Poll;

use http::{Request, header};
use http_body::Body;

use crate::AppState;
use crate::backend::{self, Change, Instance};
use crate::body::RequestBody;
use crate::pool::{self, Idle};

/// How often an instance out of rotation is checked.
pub const RECHECK: Duration = Duration::from_millis(200);

struct Due {
    next: Instant,
    running: Arc<AtomicBool>,
    /// The kept connection of this instance's checks.
    conn: Arc<Idle>,
}

/// Checks instances until `shutdown`.
pub async fn run(state: Arc<AppState>, shutdown: kit::Shutdown) {
    let interval = state.config.health_interval;
    let tick = interval.min(RECHECK);
    // A check's connection idles one interval between checks: kept at least that long.
    let keep = (interval + state.config.health_timeout).max(state.config.upstream_idle);
    let mut due: HashMap<usize, Due> = HashMap::new();
    loop {
        // Armed before the instances are looked at: an ejection from now on is not missed.
        let mut changed = std::pin::pin!(backend::changed());
        changed.as_mut().enable();
        let set = state.backends.load_full();
        let now = Instant::now();
        let mut seen = HashSet::new();
        let mut wake = now + interval;
        for instance in set.pools.iter().flatten() {
            let key = Arc::as_ptr(instance) as usize;
            seen.insert(key);
            let entry = due.entry(key).or_insert_with(|| Due {
                next: now + interval,
                running: Arc::default(),
                conn: Arc::new(Idle::new(1, keep)),
            });
            let period = if instance.usable() { interval } else { tick };
            // An instance that just went out of rotation is looked at within one tick.
            entry.next = entry.next.min(now + period);
            // Due within a tick: checked now, so that checks falling due close together
            // (instances discovered one after another) share one wake-up.
            if entry.next <= now + tick && !entry.running.load(Relaxed) {
                entry.next = now + period;
                entry.running.store(true, Relaxed);
                let (state, instance, running) = (state.clone(), instance.clone(), entry.running.clone());
                let conn = entry.conn.clone();
                shutdown.spawn(async move {
                    check(&state, &instance, &conn).await;
                    running.store(false, Relaxed);
                });
            }
            // (A check that takes its instance out says so: `backend::changed`.)
            wake = wake.min(entry.next.max(now + tick));
        }
        due.retain(|key, _| seen.contains(key));
        tokio::select! {
            _ = shutdown.requested() => return,
            _ = tokio::time::sleep_until(wake.into()) => {}
            () = &mut changed => {}
        }
    }
}

async fn check(state: &AppState, instance: &Instance, conn: &Idle) {
    let mut req = Request::new(RequestBody::Empty);
    *req.uri_mut() = http::Uri::from_static("/health");
    if let Ok(host) = header::HeaderValue::from_str(instance.authority.as_str()) {
        req.headers_mut().insert(header::HOST, host);
    }
    let exchange = async {
        let (res, kept) = pool::send(conn, instance.addr, 0, req, state.config.connect_timeout).await?;
        let passed = res.status().is_success();
        // Read the (small) body while driving the connection, then keep it for the next check.
        let (mut body, mut kept) = (res.into_body(), kept);
        let read = poll_fn(|cx| {
            if kept.as_mut().is_some_and(|c| c.poll_io(cx).is_ready()) {
                kept = None;
            }
            loop {
                match Pin::new(&mut body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(_))) => {}
                    Poll::Ready(Some(Err(_))) => return Poll::Ready(false),
                    Poll::Ready(None) => return Poll::Ready(true),
                    Poll::Pending => return Poll::Pending,
                }
            }
        })
        .await;
        if let Some(mut c) = kept.filter(|_| read) {
            if poll_fn(|cx| Poll::Ready(c.reusable(cx))).await {
                conn.checkin(0, c);
            }
        }
        Ok::<_, pool::SendError>(passed && read)
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
        Some(Change::Unhealthy) => {
            tracing::warn!(instance = %instance.id, url = %instance.url, "instance unhealthy");
            // Now checked every `RECHECK`: the loop looks again.
            backend::rotation_changed();
        }
        Some(Change::Readmitted) => tracing::info!(instance = %instance.id, url = %instance.url, "instance readmitted"),
        None => {}
    }
}
