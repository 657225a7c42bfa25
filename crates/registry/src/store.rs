//! The registry's state machine, pure: time comes in as arguments.

use std::cmp::Ordering;
use std::collections::HashMap;
use std::time::{Duration, Instant};

use kit::registry::{Registration, ServiceRecord};

/// Why a heartbeat was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeartbeatError {
    /// No such record (the registry restarted, or it expired): register again.
    Unknown,
    /// Deregistered on purpose: the instance is being stopped and should stay away.
    Deregistered,
}

#[derive(Debug)]
struct Entry {
    record: ServiceRecord,
    last_seen: Instant,
}

/// Which records a list shows.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub service_type: Option<String>,
    pub healthy: Option<bool>,
}

#[derive(Debug)]
pub struct Store {
    records: HashMap<String, Entry>,
    /// Ids deregistered on purpose, and when: their heartbeats get 410, not 404.
    tombstones: HashMap<String, Instant>,
    index: u64,
}

impl Store {
    pub fn new(initial_index: u64) -> Self {
        Self { records: HashMap::new(), tombstones: HashMap::new(), index: initial_index.max(1) }
    }

    /// The change index: moves on every change to the set of records or their health.
    pub fn index(&self) -> u64 {
        self.index
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Adds or refreshes a record; returns it and whether it is new.
    pub fn register(&mut self, reg: Registration, now: Instant, now_iso: &str) -> (ServiceRecord, bool) {
        self.tombstones.remove(&reg.service_id);
        let name = reg.name.clone().unwrap_or_else(|| reg.service_id.clone());
        if let Some(entry) = self.records.get_mut(&reg.service_id) {
            let r = &mut entry.record;
            let changed = r.service_type != reg.service_type
                || r.url != reg.url
                || r.name != name
                || r.metadata != reg.metadata
                || !r.healthy;
            r.service_type = reg.service_type;
            r.url = reg.url;
            r.name = name;
            r.metadata = reg.metadata;
            r.healthy = true;
            r.last_heartbeat = now_iso.to_owned();
            entry.last_seen = now;
            let record = r.clone();
            if changed {
                self.index += 1;
            }
            return (record, false);
        }
        let record = ServiceRecord {
            service_id: reg.service_id.clone(),
            service_type: reg.service_type,
            url: reg.url,
            name,
            metadata: reg.metadata,
            registered_at: now_iso.to_owned(),
            last_heartbeat: now_iso.to_owned(),
            healthy: true,
        };
        self.records.insert(reg.service_id, Entry { record: record.clone(), last_seen: now });
        self.index += 1;
        (record, true)
    }

    pub fn heartbeat(&mut self, id: &str, now: Instant, now_iso: &str) -> Result<ServiceRecord, HeartbeatError> {
        let Some(entry) = self.records.get_mut(id) else {
            return Err(if self.tombstones.contains_key(id) {
                HeartbeatError::Deregistered
            } else {
                HeartbeatError::Unknown
            });
        };
        entry.last_seen = now;
        // Reuses the stamp's buffer: a burst of beats allocates no new strings here.
        entry.record.last_heartbeat.clear();
        entry.record.last_heartbeat.push_str(now_iso);
        if !entry.record.healthy {
            entry.record.healthy = true;
            self.index += 1;
        }
        Ok(entry.record.clone())
    }

    pub fn deregister(&mut self, id: &str, now: Instant) -> Option<ServiceRecord> {
        let entry = self.records.remove(id)?;
        self.tombstones.insert(id.to_owned(), now);
        self.index += 1;
        Some(entry.record)
    }

    pub fn get(&self, id: &str) -> Option<ServiceRecord> {
        self.records.get(id).map(|e| e.record.clone())
    }

    /// The records `filter` selects, by type and then by id in natural order (`auth-2`
    /// before `auth-10`).
    pub fn list(&self, filter: &Filter) -> Vec<ServiceRecord> {
        let mut records: Vec<ServiceRecord> = self
            .records
            .values()
            .map(|e| &e.record)
            .filter(|r| filter.service_type.as_ref().is_none_or(|t| *t == r.service_type))
            .filter(|r| filter.healthy.is_none_or(|h| h == r.healthy))
            .cloned()
            .collect();
        records.sort_by(|a, b| {
            a.service_type.cmp(&b.service_type).then_with(|| natural_cmp(&a.service_id, &b.service_id))
        });
        records
    }

    /// Marks records silent for `stale_after` unhealthy and removes those silent for
    /// `remove_after`; forgets old tombstones. Returns what it did and when to run again.
    pub fn sweep(&mut self, now: Instant, stale_after: Duration, remove_after: Duration) -> Sweep {
        let mut done = Sweep::default();
        self.records.retain(|id, entry| {
            let silent = now.saturating_duration_since(entry.last_seen);
            if silent >= remove_after {
                done.removed.push(id.clone());
                return false;
            }
            if silent >= stale_after && entry.record.healthy {
                entry.record.healthy = false;
                done.marked_unhealthy.push(id.clone());
            }
            let due = if entry.record.healthy { stale_after } else { remove_after };
            let at = entry.last_seen + due;
            done.next_due = Some(done.next_due.map_or(at, |d: Instant| d.min(at)));
            true
        });
        self.tombstones.retain(|_, at| now.saturating_duration_since(*at) < remove_after);
        let changes = done.removed.len() + done.marked_unhealthy.len();
        self.index += changes as u64;
        done
    }
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct Sweep {
    pub marked_unhealthy: Vec<String>,
    pub removed: Vec<String>,
    /// When the next record becomes stale or due for removal.
    pub next_due: Option<Instant>,
}

/// Compares strings with their runs of digits as numbers: `a-2` < `a-10`.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let da = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let db = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (trim_zeros(&a[..da]), trim_zeros(&b[..db]));
                let ord = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if ord != Ordering::Equal {
                    return ord;
                }
                a = &a[da..];
                b = &b[db..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

fn trim_zeros(digits: &[u8]) -> &[u8] {
    let zeros = digits.iter().take_while(|c| **c == b'0').count();
    &digits[zeros.min(digits.len().saturating_sub(1))..]
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn reg(id: &str, ty: &str) -> Registration {
        Registration {
            service_id: id.into(),
            service_type: ty.into(),
            url: format!("http://localhost:1/{id}"),
            name: None,
            metadata: Map::new(),
        }
    }

    #[test]
    fn register_heartbeat_deregister() {
        let t0 = Instant::now();
        let mut store = Store::new(100);
        let (record, created) = store.register(reg("auth-1", "auth"), t0, "T0");
        assert!(created);
        assert_eq!(record.name, "auth-1");
        assert_eq!((record.registered_at.as_str(), record.healthy), ("T0", true));
        assert_eq!(store.index(), 101);

        // The same registration again is a refresh, not a change.
        let (record, created) = store.register(reg("auth-1", "auth"), t0, "T1");
        assert!(!created);
        assert_eq!((record.registered_at.as_str(), record.last_heartbeat.as_str()), ("T0", "T1"));
        assert_eq!(store.index(), 101);

        assert_eq!(store.heartbeat("auth-1", t0, "T2").unwrap().last_heartbeat, "T2");
        assert_eq!(store.heartbeat("nope", t0, "T2"), Err(HeartbeatError::Unknown));
        assert_eq!(store.index(), 101, "heartbeats do not move the index");

        assert!(store.deregister("auth-1", t0).is_some());
        assert_eq!(store.index(), 102);
        assert_eq!(store.heartbeat("auth-1", t0, "T3"), Err(HeartbeatError::Deregistered));
        assert!(store.deregister("auth-1", t0).is_none());

        // An explicit registration brings it back.
        assert!(store.register(reg("auth-1", "auth"), t0, "T4").1);
        assert!(store.heartbeat("auth-1", t0, "T5").is_ok());
    }

    #[test]
    fn sweep_marks_then_removes() {
        let t0 = Instant::now();
        let (stale, remove) = (Duration::from_secs(30), Duration::from_secs(60));
        let mut store = Store::new(1);
        store.register(reg("a-1", "a"), t0, "T");
        store.register(reg("a-2", "a"), t0 + Duration::from_secs(20), "T");
        let i = store.index();

        let s = store.sweep(t0 + Duration::from_secs(29), stale, remove);
        assert_eq!(s, Sweep { next_due: Some(t0 + stale), ..Sweep::default() });

        let s = store.sweep(t0 + Duration::from_secs(30), stale, remove);
        assert_eq!(s.marked_unhealthy, vec!["a-1"]);
        assert_eq!(s.next_due, Some(t0 + Duration::from_secs(50)));
        assert_eq!(store.index(), i + 1);
        let healthy = Filter { healthy: Some(true), ..Filter::default() };
        assert_eq!(store.list(&healthy).len(), 1);

        // A heartbeat revives it, and that is a change.
        store.heartbeat("a-1", t0 + Duration::from_secs(31), "T").unwrap();
        assert_eq!(store.list(&healthy).len(), 2);
        assert_eq!(store.index(), i + 2);

        let s = store.sweep(t0 + Duration::from_secs(200), stale, remove);
        assert_eq!(s.removed.len(), 2);
        assert!(store.is_empty());
        assert_eq!(s.next_due, None);
    }

    #[test]
    fn list_filters_and_sorts_naturally() {
        let t0 = Instant::now();
        let mut store = Store::new(1);
        for id in ["data-10", "data-2", "auth-1", "data-1"] {
            let ty = id.split('-').next().unwrap();
            store.register(reg(id, ty), t0, "T");
        }
        let ids = |f: &Filter| store.list(f).into_iter().map(|r| r.service_id).collect::<Vec<_>>();
        assert_eq!(ids(&Filter::default()), ["auth-1", "data-1", "data-2", "data-10"]);
        let data = Filter { service_type: Some("data".into()), healthy: None };
        assert_eq!(ids(&data), ["data-1", "data-2", "data-10"]);
    }

    #[test]
    fn natural_order() {
        let check = |a: &str, b: &str, expected: Ordering| assert_eq!(natural_cmp(a, b), expected, "{a} vs {b}");
        check("a-2", "a-10", Ordering::Less);
        check("a-10", "a-10", Ordering::Equal);
        check("a-010", "a-10", Ordering::Equal);
        check("a", "a-1", Ordering::Less);
        check("b-1", "a-2", Ordering::Greater);
    }
}
