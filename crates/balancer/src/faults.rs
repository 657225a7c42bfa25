//! Fault injection per service, for `orch chaos`: added latency and/or injected HTTP
//! errors for a share of requests, for a while.
//!
//! The request path first reads one atomic (how many faults exist); only when it is not
//! zero does it look at the list, under a read lock. Faults end by themselves at
//! `expiresAt`: an expired fault is ignored at once, and dropped on the next change or
//! listing, or by the first request that finds it (when the write lock is free), so the
//! request path is back to its one atomic load once every fault has ended.

use std::sync::RwLock;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant, SystemTime};

use http::StatusCode;
use serde::{Deserialize, Serialize};

/// At most this many faults at once.
pub const MAX_FAULTS: usize = 100;

/// `POST /api/faults`'s body (orch's chaos experiments send it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FaultSpec {
    pub service: String,
    #[serde(default)]
    pub latency_ms: u64,
    /// The share of requests delayed (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latency_percent: Option<f64>,
    #[serde(default)]
    pub error_percent: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_status: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    pub id: String,
    pub service: String,
    pub latency_ms: u64,
    pub latency_percent: f64,
    pub error_percent: f64,
    pub error_status: u16,
    pub expires_at: String,
    #[serde(skip)]
    expires: Instant,
}

/// What the request path must do for a request to a faulty service.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Effect {
    pub delay: Duration,
    pub error: Option<StatusCode>,
}

#[derive(Default)]
pub struct Faults {
    count: AtomicUsize,
    list: RwLock<Vec<Fault>>,
}

impl FaultSpec {
    /// Checks the spec; `services` are the routed ones.
    fn validate(&self, services: &[&str]) -> Result<(), String> {
        if !services.contains(&self.service.as_str()) {
            return Err(format!("service {:?} is not routed (routed: {})", self.service, services.join(", ")));
        }
        if self.latency_ms > 600_000 {
            return Err("latencyMs must be at most 600000".into());
        }
        if self.latency_percent.is_some_and(|p| !(p > 0.0 && p <= 100.0)) {
            return Err("latencyPercent must be above 0 and at most 100".into());
        }
        if !(0.0..=100.0).contains(&self.error_percent) {
            return Err("errorPercent must be from 0 to 100".into());
        }
        if self.error_status.is_some_and(|s| !(400..=599).contains(&s)) {
            return Err("errorStatus must be from 400 to 599".into());
        }
        if self.duration_ms.is_some_and(|d| d == 0 || d > 86_400_000) {
            return Err("durationMs must be from 1 to 86400000".into());
        }
        if self.latency_ms == 0 && self.error_percent == 0.0 {
            return Err("a fault needs latencyMs or errorPercent above 0".into());
        }
        Ok(())
    }
}

impl Faults {
    /// Adds a fault (default status 503, default duration 10 s); the error says what is wrong.
    pub fn add(&self, spec: FaultSpec, services: &[&str]) -> Result<Fault, String> {
        self.add_at(spec, services, Instant::now(), SystemTime::now())
    }

    /// [`Faults::add`] at `now` (`wall` is the same moment on the wall clock); expired
    /// faults are dropped first, so they never count against [`MAX_FAULTS`].
    fn add_at(&self, spec: FaultSpec, services: &[&str], now: Instant, wall: SystemTime) -> Result<Fault, String> {
        spec.validate(services)?;
        let duration = Duration::from_millis(spec.duration_ms.unwrap_or(10_000));
        let fault = Fault {
            id: format!("fault-{:016x}", rand::random::<u64>()),
            service: spec.service,
            latency_ms: spec.latency_ms,
            latency_percent: spec.latency_percent.unwrap_or(100.0),
            error_percent: spec.error_percent,
            error_status: spec.error_status.unwrap_or(503),
            expires_at: kit::time::iso(wall + duration),
            expires: now + duration,
        };
        let mut list = self.write();
        self.prune(&mut list, now);
        if list.len() >= MAX_FAULTS {
            return Err(format!("at most {MAX_FAULTS} faults at once"));
        }
        list.push(fault.clone());
        self.count.store(list.len(), Relaxed);
        Ok(fault)
    }

    /// The faults still active.
    pub fn list(&self) -> Vec<Fault> {
        let mut list = self.write();
        self.prune(&mut list, Instant::now());
        list.clone()
    }

    /// Removes one fault; false if there was none with `id`.
    pub fn remove(&self, id: &str) -> bool {
        let mut list = self.write();
        self.prune(&mut list, Instant::now());
        let before = list.len();
        list.retain(|f| f.id != id);
        self.count.store(list.len(), Relaxed);
        list.len() != before
    }

    /// Removes every fault; returns how many there were.
    pub fn clear(&self) -> usize {
        let mut list = self.write();
        self.prune(&mut list, Instant::now());
        let n = list.len();
        list.clear();
        self.count.store(0, Relaxed);
        n
    }

    /// The effect on a request to `service` now (`None` on the fast path of no faults).
    pub fn check(&self, service: &str) -> Option<Effect> {
        if self.count.load(Relaxed) == 0 {
            return None;
        }
        self.check_at(service, Instant::now())
    }

    fn check_at(&self, service: &str, now: Instant) -> Option<Effect> {
        let list = self.list.read().unwrap_or_else(|e| e.into_inner());
        let mut effect = Effect::default();
        let mut any = false;
        let mut expired = false;
        for fault in list.iter() {
            if fault.expires <= now {
                expired = true;
                continue;
            }
            if fault.service != service {
                continue;
            }
            any = true;
            if fault.latency_ms > 0 && hits(fault.latency_percent) {
                effect.delay = effect.delay.max(Duration::from_millis(fault.latency_ms));
            }
            if effect.error.is_none() && fault.error_percent > 0.0 && hits(fault.error_percent) {
                effect.error =
                    Some(StatusCode::from_u16(fault.error_status).unwrap_or(StatusCode::SERVICE_UNAVAILABLE));
            }
        }
        drop(list);
        if expired {
            // Whoever holds the lock now will not be waited for: a later request prunes.
            if let Ok(mut list) = self.list.try_write() {
                self.prune(&mut list, now);
            }
        }
        any.then_some(effect)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Vec<Fault>> {
        self.list.write().unwrap_or_else(|e| e.into_inner())
    }

    fn prune(&self, list: &mut Vec<Fault>, now: Instant) {
        list.retain(|f| f.expires > now);
        self.count.store(list.len(), Relaxed);
    }
}

/// True for `percent`% of calls.
fn hits(percent: f64) -> bool {
    percent >= 100.0 || rand::random::<f64>() * 100.0 < percent
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> FaultSpec {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn specs_are_checked() {
        let faults = Faults::default();
        let services = ["data", "auth"];
        let check = |json: serde_json::Value, needle: &str| {
            let err = faults.add(spec(json), &services).unwrap_err();
            assert!(err.contains(needle), "{err}");
        };
        check(serde_json::json!({"service": "nope", "latencyMs": 1}), "not routed");
        check(serde_json::json!({"service": "data"}), "latencyMs or errorPercent");
        check(serde_json::json!({"service": "data", "errorPercent": 101}), "errorPercent");
        check(serde_json::json!({"service": "data", "latencyMs": 5, "latencyPercent": 0}), "latencyPercent");
        check(serde_json::json!({"service": "data", "errorPercent": 5, "errorStatus": 200}), "errorStatus");
        check(serde_json::json!({"service": "data", "latencyMs": 5, "durationMs": 0}), "durationMs");
        assert!(faults.list().is_empty());
        assert_eq!(faults.check("data"), None);
    }

    #[test]
    fn faults_apply_to_their_service_until_removed() {
        let faults = Faults::default();
        let services = ["data", "auth"];
        let all = faults
            .add(spec(serde_json::json!({"service": "data", "errorPercent": 100, "errorStatus": 500})), &services)
            .unwrap();
        assert_eq!(all.error_status, 500);
        faults.add(spec(serde_json::json!({"service": "data", "latencyMs": 20})), &services).unwrap();
        let effect = faults.check("data").unwrap();
        assert_eq!(effect, Effect { delay: Duration::from_millis(20), error: Some(StatusCode::INTERNAL_SERVER_ERROR) });
        assert_eq!(faults.check("auth"), None);
        assert!(faults.remove(&all.id));
        assert!(!faults.remove(&all.id));
        assert_eq!(faults.check("data").unwrap().error, None);
        assert_eq!(faults.clear(), 1);
        assert_eq!(faults.check("data"), None);

        faults
            .add(spec(serde_json::json!({"service": "auth", "latencyMs": 1, "durationMs": 1000})), &services)
            .unwrap();
        assert!(faults.check("auth").is_some());
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(faults.check_at("auth", later), None, "an expired fault has no effect");
    }

    #[test]
    fn expired_faults_make_room_for_new_ones() {
        let faults = Faults::default();
        let short = || spec(serde_json::json!({"service": "data", "latencyMs": 1, "durationMs": 1000}));
        let (start, wall) = (Instant::now(), SystemTime::now());
        for _ in 0..MAX_FAULTS {
            faults.add_at(short(), &["data"], start, wall).unwrap();
        }
        let err = faults.add_at(short(), &["data"], start, wall).unwrap_err();
        assert!(err.contains("at most"), "{err}");
        // Far more than the cap over time, each batch added after the last one ended.
        for batch in 1..=3u64 {
            let later = start + Duration::from_millis(1_001 * batch);
            let wall = wall + Duration::from_millis(1_001 * batch);
            for _ in 0..MAX_FAULTS {
                faults.add_at(short(), &["data"], later, wall).expect("expired faults are pruned on add");
            }
        }
        assert_eq!(faults.count.load(Relaxed), MAX_FAULTS);
    }

    #[test]
    fn the_request_path_drops_expired_faults() {
        let faults = Faults::default();
        let short = spec(serde_json::json!({"service": "data", "latencyMs": 1, "durationMs": 1000}));
        faults.add(short, &["data", "auth"]).unwrap();
        let later = Instant::now() + Duration::from_secs(2);
        assert_eq!(faults.check_at("auth", later), None);
        assert_eq!(faults.count.load(Relaxed), 0, "back to the one atomic load");
    }

    #[test]
    fn latency_for_a_share_of_requests() {
        let faults = Faults::default();
        let spec = spec(serde_json::json!({"service": "data", "latencyMs": 50, "latencyPercent": 30}));
        assert_eq!(faults.add(spec, &["data"]).unwrap().latency_percent, 30.0);
        let delayed = (0..2000).filter(|_| !faults.check("data").unwrap().delay.is_zero()).count();
        assert!((450..750).contains(&delayed), "{delayed} of 2000 delayed, expected about 600");
    }
}
