//! Instances, pools and the backend set that discovery swaps in atomically.
//!
//! An [`Instance`] is one backend (a registry record or a static port): where it listens,
//! its health and its counters. The [`BackendSet`] holds, per routed service, the
//! instances that may receive requests; discovery builds a new set and swaps it in whole
//! ([`arc_swap::ArcSwap`]), and the request path reads it without a lock. An instance
//! keeps its identity (and counters) across sets as long as its id and URL stay the same.
//! A service's [`Service`] (round-robin counter, client-request counters) lives as long as
//! the balancer.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering::Relaxed};
use std::time::Duration;

use http::HeaderValue;
use http::uri::Authority;

use crate::config::Strategy;
use crate::pool::{Idle, Plain};
use crate::stats::Stats;

/// One backend instance.
pub struct Instance {
    /// The registry's `serviceId` (or `<service>-<n>` for static ports).
    pub id: String,
    pub service: String,
    /// The URL as registered.
    pub url: String,
    /// Where to connect: an IP address and port, resolved once.
    pub addr: SocketAddr,
    /// `addr` as a URI authority (the `Host` for clients that sent none).
    pub authority: Authority,
    /// Keep-alive connections, per worker thread.
    pub idle: Idle,
    /// The fast path's keep-alive connections, per worker thread.
    pub plain: Idle<Plain>,
    /// `id` as a header value, for `X-Upstream-Instance`.
    pub header: HeaderValue,
    /// Passes the active checks (cleared after `HEALTH_FAIL_THRESHOLD` failures).
    healthy: AtomicBool,
    /// Taken out by passive checks (connect errors, timeouts) until a check passes.
    ejected: AtomicBool,
    failures: AtomicU32,
    passes: AtomicU32,
    pub stats: Stats,
}

impl Instance {
    /// `max_idle`: how long its pooled connections may sit idle (`BALANCER_UPSTREAM_IDLE_MS`).
    pub fn new(service: &str, id: &str, url: &str, addr: SocketAddr, workers: usize, max_idle: Duration) -> Self {
        Self {
            id: id.to_owned(),
            service: service.to_owned(),
            url: url.to_owned(),
            addr,
            authority: Authority::try_from(addr.to_string()).expect("a socket address is a valid authority"),
            idle: Idle::new(workers, max_idle),
            plain: Idle::new(workers, max_idle),
            header: kit::http::header_value(id),
            healthy: AtomicBool::new(true),
            ejected: AtomicBool::new(false),
            failures: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            stats: Stats::new(workers),
        }
    }

    /// May get new requests: healthy and not ejected.
    pub fn usable(&self) -> bool {
        self.healthy.load(Relaxed) && !self.ejected.load(Relaxed)
    }

    pub fn healthy(&self) -> bool {
        self.healthy.load(Relaxed)
    }

    pub fn ejected(&self) -> bool {
        self.ejected.load(Relaxed)
    }

    /// A connect error or timeout on the request path; true if this ejected the instance.
    pub fn passive_failure(&self, threshold: u32) -> bool {
        let failures = self.failures.fetch_add(1, Relaxed) + 1;
        self.passes.store(0, Relaxed);
        let ejected = failures >= threshold && !self.ejected.swap(true, Relaxed);
        if ejected {
            rotation_changed();
        }
        ejected
    }

    /// An answer on the request path: the failure streak is over.
    pub fn passive_success(&self) {
        if self.failures.load(Relaxed) != 0 {
            self.failures.store(0, Relaxed);
        }
    }

    /// An active check's outcome; returns the change it made, if any.
    pub fn checked(&self, passed: bool, pass_threshold: u32, fail_threshold: u32) -> Option<Change> {
        if passed {
            self.failures.store(0, Relaxed);
            let passes = self.passes.fetch_add(1, Relaxed) + 1;
            if passes >= pass_threshold && !self.usable() {
                self.healthy.store(true, Relaxed);
                self.ejected.store(false, Relaxed);
                return Some(Change::Readmitted);
            }
        } else {
            self.passes.store(0, Relaxed);
            let failures = self.failures.fetch_add(1, Relaxed) + 1;
            if failures >= fail_threshold && self.healthy.swap(false, Relaxed) {
                return Some(Change::Unhealthy);
            }
        }
        None
    }
}

/// Told of every instance the request path ejects and of every new set of instances (in
/// any balancer of the process; a spurious wake-up only makes the checks look once more).
static CHANGES: tokio::sync::Notify = tokio::sync::Notify::const_new();

/// Wakes whoever waits in [`changed`]: the health checks look at the instances again.
pub fn rotation_changed() {
    CHANGES.notify_waiters();
}

/// Completes at the next [`rotation_changed`] (only those after it is polled or
/// [`enable`](tokio::sync::futures::Notified::enable)d).
pub fn changed() -> tokio::sync::futures::Notified<'static> {
    CHANGES.notified()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    Unhealthy,
    Readmitted,
}

/// Where to connect for a registered URL: `localhost` is 127.0.0.1, IP addresses are kept,
/// other host names are resolved (once, when the set changes). `None` for what is not an
/// `http://host:port` URL.
pub async fn resolve(url: &str) -> Option<SocketAddr> {
    let rest = url.strip_prefix("http://")?;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority: Authority = authority.parse().ok()?;
    let port = authority.port_u16().unwrap_or(80);
    let host = authority.host().trim_start_matches('[').trim_end_matches(']');
    if host.eq_ignore_ascii_case("localhost") {
        return Some(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port));
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, port));
    }
    let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await.ok()?.collect();
    addrs.sort_by_key(|a| !a.is_ipv4());
    addrs.into_iter().next()
}

/// A routed service: what outlives backend sets.
pub struct Service {
    pub name: String,
    /// The round-robin position.
    pub next: AtomicUsize,
    /// Client requests to this service.
    pub stats: Stats,
}

impl Service {
    pub fn new(name: &str, workers: usize) -> Self {
        Self { name: name.to_owned(), next: AtomicUsize::new(0), stats: Stats::new(workers) }
    }
}

/// How the current set was discovered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Discovery {
    Dynamic,
    Static,
}

impl Discovery {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Dynamic => "dynamic",
            Self::Static => "static",
        }
    }
}

/// The instances of every routed service, indexed like the balancer's service list.
pub struct BackendSet {
    pub discovery: Discovery,
    pub pools: Vec<Vec<Arc<Instance>>>,
}

impl BackendSet {
    pub fn empty(services: usize) -> Self {
        Self { discovery: Discovery::Static, pools: vec![Vec::new(); services] }
    }
}

/// The instances already tried for one request.
#[derive(Default)]
pub struct Tried {
    indices: [usize; 10],
    len: usize,
}

impl Tried {
    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&index)
    }

    pub fn insert(&mut self, index: usize) {
        if self.len < self.indices.len() {
            self.indices[self.len] = index;
            self.len += 1;
        }
    }
}

/// Picks an instance of `pool` not tried yet: among usable ones by `strategy`; when every
/// untried instance is out of rotation (all ejected or failing checks), any of them rather
/// than none (the "panic mode" of Envoy: a pool that is all down is better tried than
/// refused).
pub fn pick(strategy: Strategy, service: &Service, pool: &[Arc<Instance>], tried: &Tried) -> Option<usize> {
    let candidate = |i: usize| !tried.contains(i);
    let usable = |i: usize| candidate(i) && pool[i].usable();
    let chosen = match strategy {
        Strategy::RoundRobin => round_robin(service.next.fetch_add(1, Relaxed), pool.len(), usable),
        Strategy::LeastRequest => two_choices(pool.len(), rand::random::<u64>(), usable, |i| pool[i].stats.in_flight()),
    };
    chosen.or_else(|| round_robin(service.next.fetch_add(1, Relaxed), pool.len(), candidate))
}

/// The first index from `start` (modulo `n`) that `ok` accepts.
pub fn round_robin(start: usize, n: usize, ok: impl Fn(usize) -> bool) -> Option<usize> {
    (0..n).map(|k| (start.wrapping_add(k)) % n).find(|&i| ok(i))
}

/// Power of two choices: two distinct acceptable indices drawn from `random`, the one with
/// the lower `load` (the first on a tie).
pub fn two_choices(n: usize, random: u64, ok: impl Fn(usize) -> bool, load: impl Fn(usize) -> u64) -> Option<usize> {
    let candidates: usize = (0..n).filter(|&i| ok(i)).count();
    let nth = |k: usize| (0..n).filter(|&i| ok(i)).nth(k);
    match candidates {
        0 => None,
        1 => nth(0),
        c => {
            let a = (random % c as u64) as usize;
            let b = ((random >> 32) % (c as u64 - 1)) as usize;
            let b = if b >= a { b + 1 } else { b };
            let (a, b) = (nth(a)?, nth(b)?);
            Some(if load(b) < load(a) { b } else { a })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_skips_what_is_out() {
        let check = |start: usize, usable: &[bool], expected: Option<usize>| {
            assert_eq!(round_robin(start, usable.len(), |i| usable[i]), expected, "{start} {usable:?}");
        };
        check(0, &[true, true, true], Some(0));
        check(4, &[true, true, true], Some(1));
        check(1, &[true, false, true], Some(2));
        check(2, &[false, true, false], Some(1));
        check(usize::MAX, &[true, true, true], Some(0));
        check(0, &[false, false], None);
        check(0, &[], None);
    }

    #[test]
    fn two_choices_takes_the_less_loaded() {
        let loads = [5u64, 0, 9];
        let check = |random: u64, usable: &[bool], expected: Option<usize>| {
            assert_eq!(two_choices(3, random, |i| usable[i], |i| loads[i]), expected, "{random} {usable:?}");
        };
        // random 0: first choice 0, second 1 (0 is skipped): 1 is less loaded.
        check(0, &[true, true, true], Some(1));
        // first 2, second 0: 0 is less loaded than 2.
        check(2, &[true, true, true], Some(0));
        check(7, &[false, false, true], Some(2));
        check(7, &[false, false, false], None);
        // Two candidates are always both drawn.
        for random in 0..50 {
            check(random * 0x1_0000_0001, &[true, false, true], Some(0));
        }
    }

    #[test]
    fn tried_instances_are_not_picked_again() {
        let service = Service::new("data", 1);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let pool: Vec<Arc<Instance>> = (1..=3)
            .map(|n| {
                Arc::new(Instance::new("data", &format!("data-{n}"), "http://x", addr, 1, Duration::from_secs(50)))
            })
            .collect();
        let mut tried = Tried::default();
        for _ in 0..3 {
            let i = pick(Strategy::RoundRobin, &service, &pool, &tried).unwrap();
            assert!(!tried.contains(i));
            tried.insert(i);
        }
        assert_eq!(pick(Strategy::RoundRobin, &service, &pool, &tried), None);

        // All ejected: still tried (panic mode), never twice.
        for instance in &pool {
            instance.passive_failure(1);
        }
        let tried = Tried::default();
        assert!(pick(Strategy::LeastRequest, &service, &pool, &tried).is_some());
    }

    #[test]
    fn ejection_and_readmission() {
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let instance = Instance::new("data", "data-1", "http://x", addr, 1, Duration::from_secs(50));
        assert!(!instance.passive_failure(2));
        instance.passive_success();
        assert!(!instance.passive_failure(2), "a success ends the streak");
        assert!(instance.passive_failure(2));
        assert!(!instance.usable() && instance.ejected());
        // The streak goes on: a failed check on top makes it unhealthy as well.
        assert_eq!(instance.checked(false, 2, 2), Some(Change::Unhealthy));
        assert_eq!(instance.checked(true, 2, 2), None);
        assert_eq!(instance.checked(true, 2, 2), Some(Change::Readmitted));
        assert!(instance.usable());
        assert_eq!(instance.checked(false, 1, 2), None);
        assert_eq!(instance.checked(false, 1, 2), Some(Change::Unhealthy));
        assert_eq!(instance.checked(true, 1, 2), Some(Change::Readmitted));
    }

    #[tokio::test]
    async fn urls_resolve_without_dns_for_localhost() {
        let check = |url: &'static str, expected: Option<&'static str>| async move {
            assert_eq!(resolve(url).await, expected.map(|e| e.parse().unwrap()), "{url}");
        };
        check("http://localhost:3001", Some("127.0.0.1:3001")).await;
        check("http://LOCALHOST:3001/x", Some("127.0.0.1:3001")).await;
        check("http://127.0.0.2:9", Some("127.0.0.2:9")).await;
        check("http://[::1]:9", Some("[::1]:9")).await;
        check("http://localhost", Some("127.0.0.1:80")).await;
        check("https://localhost:3001", None).await;
        check("localhost:3001", None).await;
    }
}
