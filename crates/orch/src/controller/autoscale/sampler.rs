//! The autoscaler's signal: a task that, every [`EVERY`], reads the figures the plan asks
//! for (the balancers' `/api/metrics`: in flight and request counts per service; each ready
//! instance's CPU from `/proc/PID/stat`) and sends them to the controller as one
//! [`Event::Autoscale`]. It never changes the state: the controller publishes what to watch
//! (a [`Plan`] on a `watch` channel) and decides on what comes back.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tokio::sync::{mpsc, watch};

use super::decide::Reading;
use crate::controller::Event;
use crate::manifest::Target;

/// How often the figures are read.
pub const EVERY: Duration = Duration::from_millis(500);
/// `/proc`'s clock ticks per second (`USER_HZ`, 100 on every Linux architecture).
const TICKS_PER_SECOND: f64 = 100.0;

/// What to watch: the autoscaled services.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    pub services: Vec<Watched>,
}

/// One autoscaled service, as the controller sees it now.
#[derive(Clone, Debug, PartialEq)]
pub struct Watched {
    pub service: String,
    pub target: Target,
    /// Ready balancer instances that route to it (`http://127.0.0.1:PORT`).
    pub balancers: Vec<String>,
    /// The processes of its ready instances.
    pub pids: Vec<u32>,
}

/// A service's figure this round (`None`: nothing could be measured).
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    pub service: String,
    pub reading: Option<Reading>,
}

/// Counters of the previous round, to turn totals into rates.
#[derive(Default)]
struct Memory {
    /// (balancer URL, service) -> (requests answered, when read).
    requests: HashMap<(String, String), (u64, Instant)>,
    /// pid -> (CPU ticks, when read).
    cpu: HashMap<u32, (u64, Instant)>,
}

/// Runs until the controller is gone.
pub async fn run(mut plan: watch::Receiver<Plan>, tx: mpsc::UnboundedSender<Event>, http: reqwest::Client) {
    let mut memory = Memory::default();
    loop {
        // On orch's shared grid (one wake-up with the other timers); with nothing to watch,
        // asleep until the plan changes.
        tokio::time::sleep_until(crate::tick::next_after(tokio::time::Instant::now(), EVERY)).await;
        if plan.has_changed().is_err() {
            return;
        }
        let current = plan.borrow_and_update().clone();
        if current.services.is_empty() {
            memory = Memory::default();
            if plan.changed().await.is_err() {
                return;
            }
            continue;
        }
        let mut measured = Vec::with_capacity(current.services.len());
        for watched in &current.services {
            measured.push(Measured {
                service: watched.service.clone(),
                reading: measure(&http, watched, &mut memory).await,
            });
        }
        if tx.send(Event::Autoscale(measured)).is_err() {
            return;
        }
    }
}

async fn measure(http: &reqwest::Client, w: &Watched, memory: &mut Memory) -> Option<Reading> {
    let ready = u32::try_from(w.pids.len()).ok().filter(|n| *n > 0)?;
    let total = match w.target {
        Target::InFlightPerInstance(_) | Target::RequestsPerSecondPerInstance(_) => {
            let mut in_flight = 0u64;
            let mut rate = None::<f64>;
            let mut any = false;
            for url in &w.balancers {
                let Some(figures) = balancer_figures(http, url, &w.service).await else { continue };
                any = true;
                in_flight += figures.in_flight;
                let now = Instant::now();
                let key = (url.clone(), w.service.clone());
                if let Some((before, then)) = memory.requests.insert(key, (figures.requests, now)) {
                    let seconds = now.duration_since(then).as_secs_f64();
                    // A restarted balancer counts from zero again: no rate this round.
                    if figures.requests >= before && seconds > 0.0 {
                        *rate.get_or_insert(0.0) += (figures.requests - before) as f64 / seconds;
                    }
                }
            }
            match w.target {
                Target::InFlightPerInstance(_) if any => in_flight as f64,
                Target::RequestsPerSecondPerInstance(_) => rate?,
                _ => return None,
            }
        }
        Target::CpuPercent(_) => {
            let mut percent = None::<f64>;
            let now = Instant::now();
            memory.cpu.retain(|pid, _| w.pids.contains(pid));
            for &pid in &w.pids {
                let Some(ticks) = cpu_ticks(pid) else { continue };
                if let Some((before, then)) = memory.cpu.insert(pid, (ticks, now)) {
                    let seconds = now.duration_since(then).as_secs_f64();
                    if ticks >= before && seconds > 0.0 {
                        *percent.get_or_insert(0.0) += (ticks - before) as f64 / TICKS_PER_SECOND / seconds * 100.0;
                    }
                }
            }
            percent?
        }
    };
    Some(Reading { metric: total / f64::from(ready), ready })
}

/// A service's figures in one balancer's `/api/metrics`.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Figures {
    requests: u64,
    in_flight: u64,
}

async fn balancer_figures(http: &reqwest::Client, url: &str, service: &str) -> Option<Figures> {
    #[derive(Deserialize)]
    struct Metrics {
        services: HashMap<String, Figures>,
    }
    let res = http.get(format!("{url}/api/metrics")).timeout(Duration::from_secs(1)).send().await.ok()?;
    let mut metrics: Metrics = res.error_for_status().ok()?.json().await.ok()?;
    metrics.services.remove(service)
}

/// The CPU time (user + system, in clock ticks) process `pid` has used.
fn cpu_ticks(pid: u32) -> Option<u64> {
    parse_cpu_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// `utime + stime` of a `/proc/PID/stat` line (fields 14 and 15; the name in parentheses
/// may itself hold spaces and parentheses, so fields are counted after the last `)`).
fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    let mut fields = stat.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_are_read_after_the_process_name() {
        let stat = "4242 (a (b) c) R 1 4242 4242 0 -1 4194304 100 0 0 0 250 37 0 0 20 0 1 0 100 1000 10";
        assert_eq!(parse_cpu_ticks(stat), Some(287));
        assert_eq!(parse_cpu_ticks("4242 (x) R 1"), None);
        assert_eq!(parse_cpu_ticks("garbage"), None);
        assert!(cpu_ticks(std::process::id()).is_some(), "this process's own stat");
    }
}
