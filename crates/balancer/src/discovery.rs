//! Discovery: which instances each routed service has.
//!
//! Dynamic discovery holds one blocking query on the registry (all services, no filter):
//! it answers as soon as the registry's set changes, and the new backend set is swapped in
//! at once. A record's `serviceType` is the pool, its `serviceId` the instance; only
//! `healthy: true` records are routed.
//!
//! When the registry cannot be reached (or `USE_DYNAMIC_DISCOVERY=false`), the static
//! ports (`AUTH_PORTS`, `DATA_PORTS`, ...) are routed, together with the instances last
//! seen in the registry; the watch keeps being retried. When the registry answers again,
//! its set is routed, and for `DISCOVERY_SETTLE_MS` the instances routed before are kept
//! too: a registry that has just restarted refills from heartbeats, and must not empty
//! the pools meanwhile. Instances are compared by URL, so a static port and a registered
//! instance on the same URL are one.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use kit::registry::{RegistryClient, ServiceList};

use crate::AppState;
use crate::backend::{BackendSet, Discovery, Instance, resolve};

/// How long one blocking query waits at most.
const WATCH_WAIT: Duration = Duration::from_secs(30);
/// The longest pause between attempts while the registry is unreachable.
const MAX_BACKOFF: Duration = Duration::from_millis(1_000);

/// An instance as a source describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub service: usize,
    pub id: String,
    pub url: String,
}

/// The static fallback: `<SERVICE>_PORTS`, instances named `<service>-<n>`.
pub fn static_entries(state: &AppState) -> Vec<Entry> {
    let mut entries = Vec::new();
    for (service, s) in state.services.iter().enumerate() {
        let ports = state.config.static_ports.get(&s.name).map(Vec::as_slice).unwrap_or_default();
        for (n, port) in ports.iter().enumerate() {
            entries.push(Entry {
                service,
                id: format!("{}-{}", s.name, n + 1),
                url: format!("http://localhost:{port}"),
            });
        }
    }
    entries
}

/// The healthy records of routed services.
pub fn registry_entries(state: &AppState, list: &ServiceList) -> Vec<Entry> {
    let mut entries: Vec<Entry> = list
        .services
        .iter()
        .filter(|r| r.healthy)
        .filter_map(|r| {
            let service = state.services.iter().position(|s| s.name == r.service_type)?;
            Some(Entry { service, id: r.service_id.clone(), url: r.url.clone() })
        })
        .collect();
    entries.sort_by(|a, b| (a.service, &a.id).cmp(&(b.service, &b.id)));
    entries
}

/// `primary`, plus the entries of `kept` whose URL `primary` does not have.
fn union(mut primary: Vec<Entry>, kept: &[Entry]) -> Vec<Entry> {
    for entry in kept {
        if !primary.iter().any(|e| e.service == entry.service && e.url == entry.url) {
            primary.push(entry.clone());
        }
    }
    primary.sort_by(|a, b| (a.service, &a.id).cmp(&(b.service, &b.id)));
    primary
}

/// The entries of the set now routed.
fn current_entries(state: &AppState) -> Vec<Entry> {
    let set = state.backends.load();
    let mut entries = Vec::new();
    for (service, pool) in set.pools.iter().enumerate() {
        for instance in pool {
            entries.push(Entry { service, id: instance.id.clone(), url: instance.url.clone() });
        }
    }
    entries
}

/// Routes `entries` from now on (keeping the instances, and their counters and health, of
/// entries that did not change).
pub async fn apply(state: &AppState, discovery: Discovery, entries: Vec<Entry>) {
    let current = state.backends.load_full();
    let unchanged = current.discovery == discovery
        && current.pools.iter().map(Vec::len).sum::<usize>() == entries.len()
        && entries.iter().all(|e| current.pools[e.service].iter().any(|i| i.id == e.id && i.url == e.url));
    if unchanged {
        state.ready.store(true, Relaxed);
        return;
    }
    let known: HashMap<(usize, &str, &str), &Arc<Instance>> = current
        .pools
        .iter()
        .enumerate()
        .flat_map(|(s, pool)| pool.iter().map(move |i| ((s, i.id.as_str(), i.url.as_str()), i)))
        .collect();
    let mut pools = vec![Vec::new(); state.services.len()];
    for entry in &entries {
        let instance = match known.get(&(entry.service, entry.id.as_str(), entry.url.as_str())) {
            Some(instance) => Arc::clone(instance),
            None => match resolve(&entry.url).await {
                Some(addr) => {
                    let service = &state.services[entry.service].name;
                    let config = &state.config;
                    Arc::new(Instance::new(service, &entry.id, &entry.url, addr, config.workers, config.upstream_idle))
                }
                None => {
                    tracing::warn!(id = %entry.id, url = %entry.url, "instance URL is not http://host:port, skipped");
                    continue;
                }
            },
        };
        pools[entry.service].push(instance);
    }
    for (service, pool) in pools.iter().enumerate() {
        let before: Vec<&str> = current.pools[service].iter().map(|i| i.id.as_str()).collect();
        let after: Vec<&str> = pool.iter().map(|i| i.id.as_str()).collect();
        if before != after {
            tracing::info!(service = %state.services[service].name, instances = ?after, "pool changed");
        }
    }
    if current.discovery != discovery {
        tracing::info!(discovery = discovery.as_str(), "discovery mode changed");
    }
    // Instances leaving stay visible in metrics while requests to them are in flight.
    let leaving = current.pools.iter().flatten().filter(|old| !pools.iter().flatten().any(|new| Arc::ptr_eq(old, new)));
    let mut retired = state.retired.lock().unwrap_or_else(|e| e.into_inner());
    retired.retain(|i| i.stats.in_flight() > 0);
    retired.extend(leaving.cloned());
    drop(retired);
    state.backends.store(Arc::new(BackendSet { discovery, pools }));
    state.generation.fetch_add(1, std::sync::atomic::Ordering::Release);
    crate::backend::rotation_changed();
    state.ready.store(true, Relaxed);
}

/// Keeps the backend set up to date until `shutdown`; see the module docs.
pub async fn run(state: Arc<AppState>, shutdown: kit::Shutdown) {
    if !state.config.dynamic_discovery {
        apply(&state, Discovery::Static, static_entries(&state)).await;
        return;
    }
    let client = RegistryClient::from_config(&state.config.kit);
    let mut index: Option<u64> = None;
    let mut failing = false;
    let mut settle: Option<(Instant, Vec<Entry>)> = None;
    let mut backoff = Duration::from_millis(50);
    loop {
        let wait = match &settle {
            Some((until, _)) => {
                until.saturating_duration_since(Instant::now()).clamp(Duration::from_millis(10), WATCH_WAIT)
            }
            None => WATCH_WAIT,
        };
        let answer = tokio::select! {
            _ = shutdown.requested() => return,
            answer = client.watch(None, index, wait) => answer,
        };
        match answer {
            Ok(list) => {
                if failing {
                    tracing::info!(registry = client.base_url(), "registry answers again, dynamic discovery");
                    settle = Some((Instant::now() + state.config.settle, current_entries(&state)));
                    failing = false;
                }
                let mut entries = registry_entries(&state, &list);
                if let Some((until, kept)) = &settle {
                    if Instant::now() < *until {
                        entries = union(entries, kept);
                    } else {
                        settle = None;
                    }
                }
                apply(&state, Discovery::Dynamic, entries).await;
                index = Some(list.index);
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                if !failing {
                    tracing::warn!(registry = client.base_url(), error = %e, "registry unreachable, static fallback");
                    failing = true;
                    settle = None;
                    let entries = union(static_entries(&state), &current_entries(&state));
                    apply(&state, Discovery::Static, entries).await;
                }
                index = None;
                tokio::select! {
                    _ = shutdown.requested() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(service: usize, id: &str, url: &str) -> Entry {
        Entry { service, id: id.into(), url: url.into() }
    }

    #[test]
    fn union_keeps_what_the_primary_lacks_by_url() {
        let primary = vec![entry(0, "auth-1", "http://localhost:3001")];
        let kept = vec![
            entry(0, "auth-1", "http://localhost:3001"),
            entry(0, "auth-x", "http://localhost:3001"),
            entry(0, "auth-2", "http://localhost:3002"),
            entry(1, "data-1", "http://localhost:3001"),
        ];
        let merged = union(primary, &kept);
        let ids: Vec<&str> = merged.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, vec!["auth-1", "auth-2", "data-1"]);
    }
}
