//! Rollouts, pure: every change of a service's revision is a numbered rollout, kept in a
//! [`History`] per service with the spec it ran (so a rollback or `orch rollout undo` can
//! run it again), and [`judge`] says whether the latest one is complete, still under way,
//! or failed (not complete within `progressDeadlineMs`, or an instance of its revision
//! crash-looping). No I/O and no clock: the controller (`rollback.rs`) passes `now` in and
//! acts on the verdict.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use kit::orch_api::{Rollout, RolloutHistory, RolloutState};

use crate::manifest::Service;
use crate::reconcile::{CRASHLOOP_AFTER, Observed, Phase};

/// Rollouts kept per service (the oldest are dropped beyond it), as Kubernetes'
/// `revisionHistoryLimit`.
pub const KEEP: usize = 10;

/// One rollout, with what the controller needs to run its spec again.
#[derive(Clone, Debug)]
pub struct Entry {
    pub view: Rollout,
    /// Which rollout it is ([`rollout_revision`](crate::reconcile::rollout_revision)), as
    /// the history shows it.
    pub revision: u64,
    /// The revision of the instances it runs ([`revision`](crate::reconcile::revision)),
    /// which [`judge`] counts: the same as the rollout before when only limits changed,
    /// in place.
    pub template: u64,
    /// `None`: a rollout of an earlier run of orch (see `rollout_file`) whose revision
    /// orch does not run now.
    pub spec: Option<Service>,
    pub started: Instant,
    /// Which rollout it undoes (a rollback or an undo): a failed one is not rolled back again.
    pub restores: Option<u32>,
    /// Begun (or taken up again) as orch started: the cluster starting has no deadline.
    pub at_start: bool,
}

/// The rollouts of one service, oldest first.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub entries: Vec<Entry>,
    pub last_good: Option<u32>,
    /// The controller runs another spec than the manifest file's (after a rollback or an
    /// undo), until the file changes again.
    pub pinned: bool,
}

/// Every service's rollouts.
pub type Book = BTreeMap<String, History>;

impl History {
    pub fn latest(&self) -> Option<&Entry> {
        self.entries.last()
    }

    pub fn get(&self, number: u32) -> Option<&Entry> {
        self.entries.iter().find(|e| e.view.number == number)
    }

    /// Records a new rollout of `spec` (`revision`, its instances of `template`; a
    /// progressing one before it is superseded) and returns its number.
    pub fn begin(
        &mut self,
        spec: &Service,
        (revision, template): (u64, u64),
        change: String,
        restores: Option<u32>,
        at: Instant,
    ) -> u32 {
        let now = kit::time::now_iso();
        if let Some(last) = self.entries.last_mut()
            && last.view.state == RolloutState::Progressing
        {
            last.view.state = RolloutState::Superseded;
            last.view.ended_at = Some(now.clone());
        }
        let number = self.entries.last().map_or(1, |e| e.view.number + 1);
        self.entries.push(Entry {
            view: Rollout {
                number,
                revision: format!("{revision:016x}"),
                started_at: now,
                ended_at: None,
                change,
                state: RolloutState::Progressing,
                cause: None,
                ready: 0,
                replicas: spec.replicas,
            },
            revision,
            template,
            spec: Some(spec.clone()),
            started: at,
            restores,
            at_start: false,
        });
        if self.entries.len() > KEEP {
            self.entries.remove(0);
        }
        number
    }

    /// Ends the latest rollout as `verdict` says (nothing if it goes on).
    pub fn settle(&mut self, verdict: &Verdict) {
        let Some(last) = self.entries.last_mut() else { return };
        match verdict {
            Verdict::Progressing { ready } => last.view.ready = *ready,
            Verdict::Complete { ready } => {
                last.view.ready = *ready;
                last.view.state = RolloutState::Complete;
                last.view.ended_at = Some(kit::time::now_iso());
                self.last_good = Some(last.view.number);
            }
            Verdict::Failed { ready, cause } => {
                last.view.ready = *ready;
                last.view.state = RolloutState::Failed;
                last.view.cause = Some(cause.clone());
                last.view.ended_at = Some(kit::time::now_iso());
            }
        }
    }

    /// The rollout an undo goes back to: `to`, else the last complete one before the
    /// latest. `Err` says why there is none.
    pub fn undo_target(&self, to: Option<u32>) -> Result<&Entry, String> {
        let target = self.undo_candidate(to)?;
        match target.spec {
            Some(_) => Ok(target),
            None => Err(format!(
                "rollout #{} ran before orch restarted and its spec is not kept: edit the manifest instead",
                target.view.number
            )),
        }
    }

    fn undo_candidate(&self, to: Option<u32>) -> Result<&Entry, String> {
        let latest = self.latest().map_or(0, |e| e.view.number);
        match to {
            Some(n) => self.get(n).ok_or_else(|| {
                let first = self.entries.first().map_or(1, |e| e.view.number);
                format!("no rollout #{n}: the history has #{first} to #{latest}")
            }),
            None => self
                .entries
                .iter()
                .rev()
                .find(|e| e.view.number < latest && e.view.state == RolloutState::Complete)
                .ok_or_else(|| "no earlier rollout completed: nothing to go back to".to_owned()),
        }
    }

    pub fn view(&self, service: &str) -> RolloutHistory {
        RolloutHistory {
            service: service.to_owned(),
            current: self.latest().map_or(0, |e| e.view.number),
            last_good: self.last_good,
            pinned: self.pinned,
            rollouts: self.entries.iter().map(|e| e.view.clone()).collect(),
        }
    }
}

/// Where the latest rollout is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Progressing { ready: u32 },
    Complete { ready: u32 },
    Failed { ready: u32, cause: String },
}

/// The verdict on a rollout of `revision` to `replicas` instances that began at `started`,
/// from the service's `observed` instances; `deadline: None` waits for ever (a service's
/// first rollout, while the cluster starts).
pub fn judge(
    revision: u64,
    replicas: u32,
    started: Instant,
    deadline: Option<Duration>,
    observed: &[&Observed],
    now: Instant,
) -> Verdict {
    let ours = |o: &&&Observed| o.revision == revision && !o.replace;
    let ready = observed
        .iter()
        .filter(|o| o.id.ordinal <= replicas && o.phase == Phase::Running && o.ready)
        .filter(ours)
        .count() as u32;
    let regular = observed.iter().filter(|o| o.id.ordinal <= replicas).count() as u32;
    if ready == replicas && regular == replicas {
        return Verdict::Complete { ready };
    }
    if let Some(o) = observed.iter().filter(ours).find(|o| o.crash_streak >= CRASHLOOP_AFTER) {
        let cause = format!("{} is crash-looping ({} crashes in a row)", o.id, o.crash_streak);
        return Verdict::Failed { ready, cause };
    }
    if let Some(d) = deadline
        && now >= started + d
    {
        let cause = format!("not ready within {} ms ({ready}/{replicas} ready)", d.as_millis());
        return Verdict::Failed { ready, cause };
    }
    Verdict::Progressing { ready }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::InstanceId;

    fn inst(ordinal: u32, revision: u64, phase: Phase, ready: bool, crash_streak: u32) -> Observed {
        Observed {
            id: InstanceId::new("web", ordinal),
            revision,
            replace: false,
            phase,
            ready,
            ready_since: None,
            crash_streak,
            liveness_failures: 0,
        }
    }

    #[test]
    fn verdicts() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let up = |n, rev| inst(n, rev, Phase::Running, true, 0);
        let starting = |n, rev| inst(n, rev, Phase::Starting, false, 0);
        let crashed =
            |n, rev, streak| inst(n, rev, Phase::Exited { at: t0, success: false, planned: false }, false, streak);
        let progressing = |ready| Verdict::Progressing { ready };
        let failed = |ready, cause: &str| Verdict::Failed { ready, cause: cause.to_owned() };
        #[rustfmt::skip]
        let cases: Vec<(Vec<Observed>, Option<Duration>, Duration, Verdict)> = vec![
            // Every instance on the new revision and ready.
            (vec![up(1, 2), up(2, 2)], Some(ms(1000)), ms(10), Verdict::Complete { ready: 2 }),
            // Half way, within the deadline; a surge instance does not count as ready.
            (vec![up(1, 2), up(2, 1), up(3, 2)], Some(ms(1000)), ms(10), progressing(1)),
            (vec![up(1, 2), starting(2, 2)], Some(ms(1000)), ms(999), progressing(1)),
            // The deadline passes.
            (vec![up(1, 2), starting(2, 2)], Some(ms(1000)), ms(1000),
                failed(1, "not ready within 1000 ms (1/2 ready)")),
            // No deadline: waits.
            (vec![starting(1, 2)], None, ms(100_000), progressing(0)),
            // Crash-looping on the new revision fails at once; a crash loop of the old one
            // (being replaced) or a few crashes do not.
            (vec![up(1, 1), crashed(3, 2, CRASHLOOP_AFTER)], Some(ms(1000)), ms(10),
                failed(0, "web-3 is crash-looping (5 crashes in a row)")),
            (vec![up(1, 2), crashed(2, 1, CRASHLOOP_AFTER)], Some(ms(1000)), ms(10), progressing(1)),
            (vec![up(1, 2), crashed(2, 2, 2)], Some(ms(1000)), ms(10), progressing(1)),
            // An instance missing (scaled up in the same edit) is not complete.
            (vec![up(1, 2)], None, ms(10), progressing(1)),
        ];
        let replicas = 2;
        for (observed, deadline, after, expected) in cases {
            let refs: Vec<&Observed> = observed.iter().collect();
            assert_eq!(judge(2, replicas, t0, deadline, &refs, t0 + after), expected, "{observed:#?}");
        }
    }

    #[test]
    fn history_numbers_supersedes_and_finds_what_to_undo() {
        let m = crate::manifest::parse(
            std::path::Path::new("/m.yaml"),
            "apiVersion: orch/v1\nkind: Cluster\nmetadata: { name: t }\nspec:\n  services:\n    - { name: web, component: registry }\n",
        )
        .unwrap();
        let spec = &m.services[0];
        let t0 = Instant::now();
        let mut h = History::default();
        assert_eq!(h.undo_target(None).unwrap_err(), "no earlier rollout completed: nothing to go back to");
        assert_eq!(h.begin(spec, (1, 1), "create".into(), None, t0), 1);
        h.settle(&Verdict::Complete { ready: 1 });
        assert_eq!(h.begin(spec, (2, 2), "command".into(), None, t0), 2);
        // A third before the second ended supersedes it.
        assert_eq!(h.begin(spec, (3, 3), "env".into(), None, t0), 3);
        assert_eq!(h.get(2).unwrap().view.state, RolloutState::Superseded);
        h.settle(&Verdict::Failed { ready: 0, cause: "x".into() });
        assert_eq!(h.latest().unwrap().view.state, RolloutState::Failed);
        assert_eq!(h.last_good, Some(1));
        assert_eq!(h.undo_target(None).unwrap().view.number, 1);
        assert_eq!(h.undo_target(Some(2)).unwrap().view.number, 2);
        assert_eq!(h.undo_target(Some(9)).unwrap_err(), "no rollout #9: the history has #1 to #3");
        let view = h.view("web");
        assert_eq!((view.current, view.last_good, view.rollouts.len()), (3, Some(1), 3));
        // A rollout of an earlier run of orch, its spec not kept, cannot be gone back to.
        h.entries[0].spec = None;
        assert_eq!(
            h.undo_target(None).unwrap_err(),
            "rollout #1 ran before orch restarted and its spec is not kept: edit the manifest instead"
        );
    }
}
