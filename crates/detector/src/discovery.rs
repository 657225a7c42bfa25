//! Which instances exist: one blocking watch over every service in the registry.
//!
//! The watch answers as soon as the registry's set changes (an instance registered,
//! removed, or marked unhealthy), so a new instance is checked, and a removed one gone
//! from the dashboard, within milliseconds. While the registry is unreachable the last
//! known set is kept and the watch is retried with a short backoff.

use std::time::Duration;

use kit::registry::RegistryClient;

use crate::AppState;
use crate::urls::loopback;

/// How long one blocking query waits for a change.
const WATCH_WAIT: Duration = Duration::from_secs(30);

pub async fn run(state: AppState, shutdown: kit::Shutdown) {
    let kit = &state.config().kit;
    let client = RegistryClient::new(&loopback(&kit.registry_url), kit.cluster_token.clone());
    let mut index = None;
    let mut failing = false;
    let mut backoff = Duration::from_millis(100);
    loop {
        let watched = tokio::select! {
            _ = shutdown.requested() => return,
            watched = client.watch(None, index, WATCH_WAIT) => watched,
        };
        match watched {
            Ok(list) => {
                if failing {
                    tracing::info!("registry reachable again");
                    failing = false;
                }
                backoff = Duration::from_millis(100);
                if index != Some(list.index) {
                    index = Some(list.index);
                    state.sync_registry(&list.services);
                }
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(error = %e, "cannot watch the registry, retrying");
                    failing = true;
                }
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
        }
    }
}
