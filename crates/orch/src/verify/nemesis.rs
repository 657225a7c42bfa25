//! The nemesis of a verify run: faults injected through orch's own chaos API
//! (`POST /api/chaos`: kill, pause, partition, balancer latency and errors) on a schedule
//! drawn from the seed, each recorded as a fault window of the history.
//!
//! The schedule ([`plan`], pure) leaves the first tenth of the run quiet (a baseline) and
//! the last fifth (the cluster recovers before the run ends, as Jepsen heals before its
//! final reads); in between, a fault every interval: the kinds in an order drawn from the
//! seed, taken in turn, and the targets in turn, so a run of a few rounds meets every pair.
//! A partition lasts longer (two to two and a half intervals, so the registry has time to
//! expire the instance), overlaps the faults after it, and is the only one open at a time:
//! its turn is skipped while one is, so the other instances stay registered.

use std::time::{Duration, Instant};

use super::Rng;
use super::history::Fault;
use kit::orch_api::Experiment;

use crate::chaos::{Action, Request};
use crate::cli::{Client, Failure};

/// Every fault `--nemesis all` names.
pub const ALL: [Action; 5] = [Action::Kill, Action::Pause, Action::Latency, Action::Errors, Action::Partition];

/// The faults `--nemesis` names, comma-separated (`none`: no fault; `all`: every one).
pub fn parse(raw: &str) -> Result<Vec<Action>, String> {
    let mut actions = Vec::new();
    for name in raw.split(',').map(str::trim).filter(|n| !n.is_empty() && *n != "none") {
        let named: &[Action] = match name {
            "all" => &ALL,
            "kill" => &[Action::Kill],
            "pause" => &[Action::Pause],
            "latency" => &[Action::Latency],
            "errors" => &[Action::Errors],
            "partition" => &[Action::Partition],
            other => {
                return Err(format!(
                    "unknown nemesis {other:?}: use kill, pause, latency, errors, partition, all or none"
                ));
            }
        };
        for action in named {
            if !actions.contains(action) {
                actions.push(*action);
            }
        }
    }
    Ok(actions)
}

/// One fault of the schedule.
#[derive(Clone, Debug)]
pub struct Planned {
    /// When, from the run's start.
    pub at: Duration,
    pub request: Request,
    /// How long its window lasts (0 for a kill).
    pub lasts: Duration,
}

/// The schedule of a run of `span` over the services `targets`, from `seed`.
pub fn plan(seed: u64, actions: &[Action], targets: &[String], span: Duration) -> Vec<Planned> {
    if actions.is_empty() || targets.is_empty() {
        return Vec::new();
    }
    let mut rng = Rng::new(seed ^ 0x6e656d);
    let every = (span / 8).clamp(Duration::from_secs(2), Duration::from_secs(10));
    let (mut at, last) = (span / 10, span.mul_f64(0.8));
    // The actions in an order drawn from the seed, taken in turn; the targets in turn,
    // shifted by one at each round of the actions, so that each action meets each target.
    let mut order = actions.to_vec();
    for i in (1..order.len()).rev() {
        order.swap(i, rng.below(i as u64 + 1) as usize);
    }
    let mut planned = Vec::new();
    let mut k = 0;
    // The end of the partition open, if one is.
    let mut cut_until = Duration::ZERO;
    while at < last {
        let action = order[k % order.len()];
        let target = targets[(k + k / order.len()) % targets.len()].clone();
        k += 1;
        if action == Action::Partition && at < cut_until {
            at += every;
            continue;
        }
        // Windows end before the next fault and before the quiet tail.
        let room = (last - at).min(every);
        let lasts = |ms: u64| Duration::from_millis(ms).min(room);
        let (request, lasts) = match action {
            Action::Kill => (Request { action: Some(action), target, ..Request::default() }, Duration::ZERO),
            Action::Partition => {
                let d = (every * 2 + every.mul_f64(rng.below(50) as f64 / 100.0)).min(last - at);
                cut_until = at + d;
                let req = Request { action: Some(action), target, duration_ms: Some(ms(d)), ..Request::default() };
                (req, d)
            }
            Action::Pause => {
                let d = lasts(1000 + rng.below(1000));
                let req = Request { action: Some(action), target, duration_ms: Some(ms(d)), ..Request::default() };
                (req, d)
            }
            Action::Latency => {
                let d = lasts(1500 + rng.below(1500));
                let req = Request {
                    action: Some(action),
                    target,
                    for_ms: Some(ms(d)),
                    latency_ms: Some(100 + rng.below(200)),
                    percent: Some(50.0),
                    ..Request::default()
                };
                (req, d)
            }
            Action::Errors => {
                let d = lasts(1500 + rng.below(1500));
                let req = Request {
                    action: Some(action),
                    target,
                    for_ms: Some(ms(d)),
                    percent: Some(20.0 + rng.below(20) as f64),
                    status: Some(503),
                    ..Request::default()
                };
                (req, d)
            }
        };
        planned.push(Planned { at, request, lasts });
        at += every;
    }
    planned
}

fn ms(d: Duration) -> u64 {
    d.as_millis().max(1) as u64
}

/// Runs `planned` against the orch of `client`, `start` being the run's start; the fault
/// windows as they happened. Once the last window has run its course, the experiments
/// still listed are stopped (a balancer fault may outlive its time by a moment).
pub async fn run(client: &Client, planned: Vec<Planned>, start: Instant) -> Vec<Fault> {
    let micros = |at: Instant| at.saturating_duration_since(start).as_micros() as u64;
    let mut faults = Vec::new();
    let mut running = Vec::new();
    for p in planned {
        tokio::time::sleep_until((start + p.at).into()).await;
        let action = p.request.action.map_or("", Action::as_str).to_owned();
        let target = p.request.target.clone();
        let began = Instant::now();
        let description = match client.call::<Experiment>("/api/chaos", &p.request).await {
            Ok(e) => {
                if e.ends_at.is_some() {
                    running.push(e.id.clone());
                }
                e.last.unwrap_or(e.description)
            }
            Err(Failure::Usage(e) | Failure::Runtime(e) | Failure::Unreachable(e)) => format!("not injected: {e}"),
        };
        let injected = !description.starts_with("not injected");
        let end = if injected { began + p.lasts } else { began };
        faults.push(Fault { action, target, start: micros(began), end: micros(end), description });
    }
    // The last windows run their course before anything is stopped.
    let ends = faults.iter().map(|f| start + Duration::from_micros(f.end)).max();
    if let Some(ends) = ends {
        tokio::time::sleep_until(ends.into()).await;
    }
    for id in running {
        // Ended on its own by now, or ended here: either way the fault is gone.
        let _ = client.delete::<serde::de::IgnoredAny>(&format!("/api/chaos/{id}")).await;
    }
    faults
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nemesis_names() {
        assert_eq!(parse("kill, pause").unwrap(), vec![Action::Kill, Action::Pause]);
        assert_eq!(parse("none").unwrap(), vec![]);
        assert_eq!(parse("partition,kill").unwrap(), vec![Action::Partition, Action::Kill]);
        assert_eq!(
            parse("kill,all").unwrap(),
            vec![Action::Kill, Action::Pause, Action::Latency, Action::Errors, Action::Partition]
        );
        assert!(parse("kill,flood").unwrap_err().contains("\"flood\""));
    }

    #[test]
    fn the_schedule_follows_the_seed_and_stays_inside_the_run() {
        let targets = vec!["data".to_owned()];
        let all = [Action::Kill, Action::Pause, Action::Latency, Action::Errors];
        let span = Duration::from_secs(60);
        let a = plan(7, &all, &targets, span);
        let shown = |p: &[Planned]| format!("{p:?}");
        assert_eq!(shown(&a), shown(&plan(7, &all, &targets, span)));
        assert_ne!(shown(&a), shown(&plan(8, &all, &targets, span)));
        assert!(a.len() >= 5, "{a:?}");
        for p in &a {
            assert!(p.at >= span / 10 && p.at + p.lasts <= span.mul_f64(0.8), "{p:?}");
            assert!(p.lasts <= span / 8, "{p:?}");
            let spec = crate::chaos::Spec::parse(&p.request, crate::chaos::Names::API).map(|_| ());
            assert_eq!(spec, Ok(()), "{p:?}");
        }
        assert!(plan(7, &[], &targets, span).is_empty());
        // Every kind in the first round; with two targets, kill and pause each hit both
        // within two rounds.
        let two = vec!["data".to_owned(), "compute".to_owned()];
        for seed in 0..20 {
            let p = plan(seed, &all, &two, Duration::from_secs(20));
            let kinds: Vec<_> = p.iter().take(4).map(|p| p.request.action.unwrap()).collect();
            assert!(all.iter().all(|a| kinds.contains(a)), "seed {seed}: {kinds:?}");
            for target in &two {
                let hits = p.iter().any(|p| {
                    &p.request.target == target && matches!(p.request.action, Some(Action::Kill | Action::Pause))
                });
                assert!(hits, "seed {seed}: no kill or pause of {target}: {p:?}");
            }
        }
    }

    #[test]
    fn partitions_are_long_and_one_at_a_time() {
        let targets = vec!["data".to_owned()];
        for (seed, actions) in [(3, vec![Action::Partition]), (4, ALL.to_vec())] {
            for span in [Duration::from_secs(10), Duration::from_secs(60)] {
                let p = plan(seed, &actions, &targets, span);
                let cuts: Vec<&Planned> = p.iter().filter(|p| p.request.action == Some(Action::Partition)).collect();
                assert!(!cuts.is_empty(), "{p:?}");
                let every = (span / 8).clamp(Duration::from_secs(2), Duration::from_secs(10));
                for pair in cuts.windows(2) {
                    assert!(pair[0].at + pair[0].lasts <= pair[1].at, "overlapping partitions: {pair:?}");
                }
                for c in &cuts {
                    assert!(c.at + c.lasts <= span.mul_f64(0.8), "{c:?}");
                    let spec = crate::chaos::Spec::parse(&c.request, crate::chaos::Names::API).unwrap();
                    assert_eq!(spec.lasts(), Some(c.lasts));
                }
                assert!(cuts[0].lasts >= every * 2 || cuts[0].at + cuts[0].lasts == span.mul_f64(0.8), "{cuts:?}");
            }
        }
    }
}
