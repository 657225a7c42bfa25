//! The workers of one instance, and what wakes them.
//!
//! One dispatcher per instance owns the `COMPUTE_WORKERS` worker slots
//! (`<SERVICE_NAME>/w<i>`). Each round it records the outcomes its workers reported and
//! claims a job for idle slots, all in ONE write transaction
//! ([`Queue::settle`](crate::Queue::settle)), then starts a worker task per claimed job,
//! which runs it while renewing its lease and reports back. With idle slots, it first
//! peeks at the queue (on a connection of its own), counting the queued jobs up to the idle
//! slots, and settles only if there may be a job, asking for as many slots as it counted
//! (all of them once a lease has expired): the slots a settle asks for are taken until it
//! commits, and one that took every idle slot for a single queued job left the submits
//! meanwhile none to start on, so they queued, and the next settle found them: a burst kept
//! itself queued. Otherwise it sleeps until woken. A queue its last settle found short is
//! not peeked at again until something wakes it (`next_step`).
//!
//! A submit to an instance with an idle slot takes that slot ([`submit`]; SQLite, no
//! idempotency key): its insert claims the job for the slot's worker when nothing queued
//! comes before it, and the job starts at once, reporting to the dispatcher like any other.
//! Such a job is running when its 202 is answered, without waiting for this dispatcher to
//! be woken, peek and settle (README, "A job started by its submit").
//!
//! **Invariant:** a job is claimed only for a slot that is idle and taken ([`Slots`]): by
//! the dispatcher for the slots it asks for, or by a submit for the one it took; so a
//! claimed job starts at once (its lease never ticks away waiting for a worker). Only the
//! dispatcher records outcomes, so an instance has at most one settle of the queue's at a
//! time besides submits, lease renewals and hand-backs.
//!
//! An idle dispatcher is woken by
//! - a submit to this instance (at once, through a `watch` channel);
//! - a commit by any compute instance to the shared database, seen by [`watch_changes`]. On
//!   SQLite every instance announces each of its commits, once done, by a write to the
//!   database's lock file (`compute.sqlite.lock`, [`kit::db::Db::announce_commits`]), which
//!   every instance watches (inotify): an idle instance sleeps until a commit, with no timer
//!   at all; the commits of a busy queue are coalesced into one look every `COALESCE`
//!   (2 ms). A commit whose writes only started jobs by their submits or recorded outcomes
//!   is counted as quiet ([`kit::db::Announced`]), and wakes only a dispatcher that does not
//!   know the next lease expiry yet ([`changes::look_after`]). (It watched the WAL file before, which
//!   sees a write per page, about 17 per job, and had to read `PRAGMA data_version` until the
//!   commit showed.) Where the file cannot
//!   be watched (no inotify instance left: `fs.inotify.max_user_instances`) it reads `PRAGMA
//!   data_version` on a connection of its own every `JOB_POLL_MS` (20 ms) instead. That
//!   value changes when another connection, in any process, has committed; reading it
//!   touches no table, and it is not read at all while every local worker is busy. On
//!   PostgreSQL it `LISTEN`s on `compute_jobs`, which a trigger notifies when a job becomes
//!   queued (the commit delivers it), and wakes the workers after a lost connection too (a
//!   notification may have been missed meanwhile);
//! - the earliest lease expiry of a running job (a crashed worker's job is taken over as
//!   soon as its lease runs out), or the safety poll, `JOB_SAFETY_POLL_MS`: by default 60 s
//!   while the lock file is watched or `LISTEN` is on (it only backs the watch up), 5 s
//!   otherwise ([`AppState::safety_poll`]).

use std::sync::atomic::Ordering;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use kit::Shutdown;
use kit::time::unix_millis;
use tokio::sync::{mpsc, oneshot};

use crate::AppState;
use crate::exec::ExecError;
use crate::ops::{self, Place};
use crate::queue::{Claimed, NewJob, Outcome, Start, Status, Submitted};

mod changes;
pub use changes::watch_changes;

/// Starts the dispatcher and the change detector as shutdown-tracked tasks.
pub fn spawn(state: &AppState, shutdown: &Shutdown) {
    if state.config.workers == 0 {
        return;
    }
    let _ = state.slots.shutdown.set(shutdown.clone());
    shutdown.spawn(dispatch(state.clone(), shutdown.clone()));
    shutdown.spawn(watch_changes(state.clone(), shutdown.clone()));
}

/// The worker slots of an instance: which are idle (lowest first), shared by the dispatcher
/// and the submits that start their job at once ([`submit`]), and the channel on which
/// every worker reports to the dispatcher.
#[derive(Debug)]
pub struct Slots {
    names: Vec<String>,
    idle: Mutex<Idle>,
    reports: mpsc::UnboundedSender<Report>,
    /// Taken by the dispatcher when it starts.
    reported: Mutex<Option<mpsc::UnboundedReceiver<Report>>>,
    /// The dispatcher's, once it runs: the worker tasks a submit starts are tracked by it.
    shutdown: OnceLock<Shutdown>,
}

#[derive(Debug)]
struct Idle {
    slots: Vec<usize>,
    /// No submit takes a slot any more: the instance is stopping.
    closed: bool,
}

impl Slots {
    pub fn new(service: &str, workers: usize) -> Self {
        let (reports, reported) = mpsc::unbounded_channel();
        Self {
            names: (1..=workers).map(|i| format!("{service}/w{i}")).collect(),
            idle: Mutex::new(Idle { slots: (0..workers).collect(), closed: false }),
            reports,
            reported: Mutex::new(Some(reported)),
            shutdown: OnceLock::new(),
        }
    }

    fn idle(&self) -> std::sync::MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many slots are idle now.
    pub fn idle_count(&self) -> usize {
        self.idle().slots.len()
    }

    /// Takes up to `n` idle slots, lowest first.
    fn take(&self, n: usize) -> Vec<usize> {
        let mut idle = self.idle();
        let n = n.min(idle.slots.len());
        idle.slots.drain(..n).collect()
    }

    /// An idle slot for a submit, unless none is idle or the instance is stopping.
    fn take_for_submit(&self) -> Option<usize> {
        let mut idle = self.idle();
        if idle.closed || idle.slots.is_empty() {
            return None;
        }
        Some(idle.slots.remove(0))
    }

    /// A worker's end: its report to the dispatcher, then its slot idle again at once (not
    /// when the dispatcher, perhaps waiting for a commit, takes the report: a burst of
    /// submits ran out of idle slots meanwhile and queued its jobs instead of starting them).
    fn report(&self, slot: usize, claimed: Claimed, outcome: Option<Outcome>) {
        let _ = self.reports.send((claimed, outcome));
        self.give_back([slot]);
    }

    fn give_back(&self, slots: impl IntoIterator<Item = usize>) {
        let mut idle = self.idle();
        idle.slots.extend(slots);
        idle.slots.sort_unstable();
    }

    fn close(&self) {
        self.idle().closed = true;
    }
}

/// Submits `job` (no idempotency key): on SQLite, with an idle worker here and a queue with
/// nothing that comes before it, the job is claimed by its own insert and starts on that
/// worker at once, with no claim of its own and no wake-up of the dispatcher
/// ([`Queue::submit_to`](crate::Queue::submit_to)); otherwise it is queued.
///
/// The submit and the run are one task of the dispatcher's shutdown, so a client that goes
/// away leaves the job running and its slot reported back, never lost.
pub async fn submit(state: &AppState, job: NewJob) -> Result<Submitted, sqlx::Error> {
    let direct = state.queue.db().dialect() == kit::db::Dialect::Sqlite;
    let shutdown = state.slots.shutdown.get().filter(|s| direct && !s.is_requested());
    let Some((shutdown, slot)) = shutdown.and_then(|s| Some((s.clone(), state.slots.take_for_submit()?))) else {
        return state.queue.submit(&job, None).await;
    };
    let (answer, answered) = oneshot::channel();
    let (state, stop) = (state.clone(), shutdown.clone());
    shutdown.spawn(async move {
        let worker = state.slots.names[slot].as_str();
        let start = Start { worker, lease: state.config.lease };
        let submitted = state.queue.submit_to(&job, start).await;
        let started = match &submitted {
            Ok(Submitted::Queued { started: Some(claimed), .. }) => Some(Claimed::clone(claimed)),
            _ => None,
        };
        let Some(claimed) = started else {
            state.slots.give_back([slot]);
            if submitted.is_err() {
                // Queued, the caller wakes the dispatcher; failed, this does (a stopping
                // dispatcher waits for every slot).
                state.wake();
            }
            let _ = answer.send(submitted);
            return;
        };
        let _ = answer.send(submitted);
        let outcome = execute(&state, worker, &claimed, &stop).await;
        state.slots.report(slot, claimed, outcome);
    });
    answered.await.map_err(|_| sqlx::Error::Io(std::io::Error::other("the submit's task ended without an answer")))?
}

/// What a worker hands to the dispatcher: the attempt, and how it ended (`None`: nothing to
/// record, the lease was lost or the job handed back).
type Report = (Claimed, Option<Outcome>);

/// An outcome waiting to be recorded, and how many settles have failed to write it.
type Pending = (Claimed, Outcome, u32);

/// How many settles in a row may fail to write an outcome before it is given up (the job
/// then runs again once its lease expires).
const RECORD_TRIES: u32 = 3;

/// The instance's dispatcher: records its workers' outcomes and claims jobs for its idle
/// workers, all in one [`Queue::settle`](crate::Queue::settle) per round; sleeps until
/// woken when there is nothing to do. On shutdown it claims nothing more and returns once
/// every running attempt has been recorded or handed back.
pub async fn dispatch(state: AppState, shutdown: Shutdown) {
    let workers = state.config.workers;
    let slots = state.slots.clone();
    let Some(mut reported) = slots.reported.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take() else {
        tracing::error!("a second dispatcher for one instance; not started");
        return;
    };
    let mut pending: Vec<Pending> = Vec::new();
    let mut wake = state.wake.subscribe();
    let mut failures = 0u32;
    // Whether the last settle found fewer queued jobs than it asked for, and the earliest
    // lease expiry the last peek saw: what a look at the queue would say, until woken.
    let (mut drained, mut next_expiry) = (false, None::<i64>);
    let mut reader = None;
    loop {
        // Idle counted before the reports are taken: a worker reports before it gives its
        // slot back, so every slot counted idle has its report taken here.
        let idle = slots.idle_count();
        while let Ok(report) = reported.try_recv() {
            take(&mut pending, report);
        }
        let stopping = shutdown.is_requested();
        if stopping {
            slots.close();
            if idle == workers && pending.is_empty() {
                break;
            }
        }
        let want = if stopping { 0 } else { idle };
        // Woken (a submit here, a commit anywhere): the queue may have changed.
        if wake.has_changed().unwrap_or(true) {
            drained = false;
        }
        wake.borrow_and_update();
        let mut wait = state.safety_poll();
        let now = unix_millis();
        // How many idle slots a settle asks jobs for: all of them, unless a peek counted fewer.
        let mut ask = want;
        let settle = match next_step(!pending.is_empty(), want, drained, next_expiry, now) {
            Next::Settle => true,
            Next::Record => false,
            Next::Sleep => {
                if let Some(at) = next_expiry.filter(|&at| at >= now) {
                    wait = wait.min(Duration::from_millis((at - now) as u64 + 1));
                }
                false
            }
            Next::Peek => match peek(&state, &mut reader, want).await {
                Ok(peek) => {
                    failures = 0;
                    let now = unix_millis();
                    next_expiry = peek.next_expiry;
                    state.stats.expiry_known.store(next_expiry.is_some(), Ordering::SeqCst);
                    if let Some(at) = peek.next_expiry.filter(|&at| at >= now) {
                        wait = wait.min(Duration::from_millis((at - now) as u64 + 1));
                    }
                    // Nothing to claim: known empty until woken, as after a short settle.
                    ask = peek.claims(now, want);
                    drained = ask == 0;
                    !drained
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, "reading the queue failed");
                    wait = backoff(failures);
                    false
                }
            },
        };
        if !settle && !pending.is_empty() {
            // Nothing to claim: the outcomes alone, each one statement in the group commit.
            match record(&state, &mut pending).await {
                Ok(()) => {
                    failures = 0;
                    continue;
                }
                Err(()) => {
                    failures += 1;
                    wait = backoff(failures);
                }
            }
        }
        if settle {
            let finished: Vec<_> = pending.iter().map(|(claimed, outcome, _)| (claimed, outcome)).collect();
            // The `i`-th claim of a settle goes to the `i`-th of these (a submit may have
            // taken an idle slot since it was counted).
            let mut asked = slots.take(ask);
            let asking: Vec<&str> = asked.iter().map(|&slot| slots.names[slot].as_str()).collect();
            let settled = state.queue.settle(&finished, &asking, state.config.lease).await;
            let unused = asked.split_off(settled.as_ref().map_or(0, |s| s.claimed.len()));
            slots.give_back(unused);
            match settled {
                Ok(settled) => {
                    failures = 0;
                    drained = settled.claimed.len() < asking.len();
                    for ((claimed, _, _), status) in pending.drain(..).zip(settled.recorded) {
                        count(&state, &claimed, status);
                    }
                    for (slot, claimed) in asked.into_iter().zip(settled.claimed) {
                        let (state, stop) = (state.clone(), shutdown.clone());
                        shutdown.spawn(async move {
                            let worker = state.slots.names[slot].as_str();
                            let outcome = execute(&state, worker, &claimed, &stop).await;
                            state.slots.report(slot, claimed, outcome);
                        });
                    }
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, outcomes = pending.len(), "settling jobs failed");
                    pending.retain_mut(|(claimed, _, tries)| {
                        *tries += 1;
                        gave_up(claimed, *tries)
                    });
                    wait = backoff(failures);
                }
            }
        }
        tokio::select! {
            _ = shutdown.requested(), if !stopping => {}
            Some(report) = reported.recv() => take(&mut pending, report),
            _ = wake.changed() => drained = false,
            // The safety poll, a lease expiry or a backoff: look at the queue again.
            _ = tokio::time::sleep(wait) => drained = false,
        }
    }
}

/// What the dispatcher does next.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Next {
    /// Outcomes and claims in one write: a lease known to have expired (its job to take
    /// over), or a peek found a job to claim.
    Settle,
    /// Outcomes to record and nothing to claim: each outcome one statement in the group
    /// commit ([`Queue::record`](crate::Queue::record)), beside the submits.
    Record,
    /// Read the queue first (a cheap read): settle only if a claim may find something,
    /// else record the outcomes waiting, if any.
    Peek,
    /// Nothing to do until woken, a report, or the earliest known lease expiry.
    Sleep,
}

/// The dispatcher's rule, given whether outcomes wait to be recorded, how many slots want a
/// job, whether the queue is known to be empty (the last settle claimed fewer jobs than it
/// asked for, or the last peek found nothing to claim, and no wake-up came since: no commit
/// anywhere, no submit here), the earliest lease expiry the last look saw, and the time. A
/// queue known to be empty is not read again: under a burst of submits that read, once per
/// commit in every instance, was a good part of what a job cost.
fn next_step(outcomes: bool, want: usize, known_empty: bool, next_expiry: Option<i64>, now: i64) -> Next {
    let idle = if outcomes { Next::Record } else { Next::Sleep };
    if want == 0 {
        idle
    } else if known_empty {
        if next_expiry.is_some_and(|at| at < now) { Next::Settle } else { idle }
    } else {
        Next::Peek
    }
}

/// [`Queue::peek`](crate::Queue::peek) on the dispatcher's own connection, taken out of the
/// pool on first use and dropped on an error (the next peek takes another).
async fn peek(
    state: &AppState,
    reader: &mut Option<sqlx::AnyConnection>,
    up_to: usize,
) -> Result<crate::queue::Peek, sqlx::Error> {
    let conn = match reader {
        Some(conn) => conn,
        None => reader.insert(state.queue.db().acquire().await?.detach()),
    };
    let peek = crate::Queue::peek_on(conn, up_to).await;
    if peek.is_err() {
        *reader = None;
    }
    peek
}

/// A worker's report: its outcome waits for the next settle.
fn take(pending: &mut Vec<Pending>, (claimed, outcome): Report) {
    if let Some(outcome) = outcome {
        pending.push((claimed, outcome, 0));
    }
}

/// Records the outcomes waiting, each on its own (all join one group commit), and counts
/// them; `Err` if any failed (kept for the next round, or given up after [`RECORD_TRIES`]).
async fn record(state: &AppState, pending: &mut Vec<Pending>) -> Result<(), ()> {
    let written = futures_util::future::join_all(
        pending.iter().map(|(claimed, outcome, _)| state.queue.record(claimed, outcome)),
    )
    .await;
    let mut failed = false;
    let mut results = written.into_iter();
    pending.retain_mut(|(claimed, _, tries)| match results.next() {
        Some(Ok(status)) => {
            count(state, claimed, status);
            false
        }
        Some(Err(e)) => {
            failed = true;
            *tries += 1;
            tracing::warn!(error = %e, job = %claimed.job.id, "recording an outcome failed");
            gave_up(claimed, *tries)
        }
        None => true,
    });
    if failed { Err(()) } else { Ok(()) }
}

/// Whether an outcome that failed to be written `tries` times is kept for another try.
fn gave_up(claimed: &Claimed, tries: u32) -> bool {
    let keep = tries < RECORD_TRIES;
    if !keep {
        tracing::error!(job = %claimed.job.id, "could not record the outcome; the job runs again when its lease expires");
    }
    keep
}

/// Counts a recorded outcome in the instance's figures.
fn count(state: &AppState, claimed: &Claimed, status: Option<Status>) {
    let (job, worker) = (&claimed.job.id, claimed.job.worker.as_deref().unwrap_or_default());
    let Some(status) = status else {
        state.stats.lost_leases.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%worker, %job, "lost the lease before recording the outcome; dropped");
        return;
    };
    let counter = match status {
        Status::Completed => &state.stats.completed,
        Status::Failed => &state.stats.failed,
        _ => &state.stats.retried,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(%worker, %job, status = status.as_str(), "job attempt finished");
}

fn backoff(failures: u32) -> Duration {
    Duration::from_millis(50u64 << failures.min(5))
}

/// Runs a claimed job to its outcome, renewing the lease meanwhile; `None` when there is
/// nothing to record (the lease was lost, or a shutdown handed the job back).
async fn execute(state: &AppState, worker: &str, claimed: &Claimed, shutdown: &Shutdown) -> Option<Outcome> {
    let job = &claimed.job;
    tracing::debug!(%worker, job = %job.id, operation = %job.operation, attempt = job.attempts, "running job");
    let outcome = match ops::parse(&job.operation, &job.operands, Place::Job) {
        // Validated at submit; only a newer version's operation could get here.
        Err(e) => Some(Err(ExecError::Invalid(e))),
        Ok((_, task)) => {
            let work = state.executor.run_job(task, state.config.job_time_limit);
            let run = async {
                tokio::select! {
                    outcome = work => Some(outcome),
                    () = keep_lease(state, claimed) => None,
                }
            };
            let mut run = std::pin::pin!(run);
            tokio::select! {
                outcome = &mut run => outcome,
                _ = shutdown.requested() => {
                    // Finish within part of the grace period, else hand the job back.
                    let drain = state.config.kit.shutdown_grace / 2;
                    match tokio::time::timeout(drain, &mut run).await {
                        Ok(outcome) => outcome,
                        Err(_) => {
                            match state.queue.release(claimed).await {
                                Ok(true) => tracing::info!(%worker, job = %job.id, "shutting down: job handed back to the queue"),
                                Ok(false) => {}
                                Err(e) => tracing::warn!(%worker, job = %job.id, error = %e, "handing a job back failed; its lease will expire"),
                            }
                            return None;
                        }
                    }
                }
            }
        }
    };
    let Some(outcome) = outcome else {
        state.stats.lost_leases.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(%worker, job = %job.id, "lost the lease (another worker took the job over); result dropped");
        return None;
    };
    Some(match outcome {
        Ok(result) => Outcome::Completed(result),
        Err(e) => Outcome::Failed { error: e.to_string(), permanent: e.is_permanent() },
    })
}

/// Renews the lease every third of its length; returns once it is lost.
async fn keep_lease(state: &AppState, claimed: &Claimed) {
    let lease = state.config.lease;
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + lease / 3, lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match state.queue.renew(claimed, lease).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(e) => tracing::warn!(job = %claimed.job.id, error = %e, "renewing a lease failed, will retry"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Next, next_step};

    /// A worker's slot is idle again as soon as it reports, before the dispatcher (perhaps
    /// waiting for a commit) takes the report, which is there for it to take: a burst of
    /// submits meanwhile finds the slot free and starts its job instead of queueing it.
    #[test]
    fn a_slot_is_idle_again_once_its_worker_reports() {
        use crate::queue::{Claimed, Job, Status};
        let slots = super::Slots::new("compute-1", 2);
        let mut reported = slots.reported.lock().unwrap().take().unwrap();
        let slot = slots.take_for_submit().unwrap();
        assert_eq!(slots.idle_count(), 1);
        let job = Job {
            id: "j".into(),
            operation: "add".into(),
            operands: serde_json::value::RawValue::from_string("[1,2]".into()).unwrap(),
            priority: 0,
            status: Status::Running,
            result: None,
            error: None,
            attempts: 1,
            max_attempts: 3,
            worker: Some("compute-1/w1".into()),
            created_at: 0,
            started_at: Some(0),
            finished_at: None,
        };
        slots.report(slot, Claimed { job, token: "t".into(), expires_at: 1 }, None);
        assert_eq!(slots.idle_count(), 2, "idle before the dispatcher has looked");
        let (claimed, outcome) = reported.try_recv().expect("the report, for the dispatcher");
        assert_eq!((claimed.job.id.as_str(), outcome.is_none()), ("j", true));
    }

    #[test]
    fn outcomes_with_nothing_to_claim_are_recorded_on_their_own() {
        assert_eq!(next_step(true, 0, false, None, 10), Next::Record, "no idle slot");
        assert_eq!(next_step(true, 8, true, None, 10), Next::Record, "a queue known empty");
        assert_eq!(next_step(true, 8, true, Some(10), 10), Next::Record, "a lease not yet expired");
    }

    #[test]
    fn outcomes_go_with_claims_when_there_may_be_a_job() {
        assert_eq!(next_step(true, 8, false, None, 10), Next::Peek, "a look first");
        assert_eq!(next_step(true, 8, true, Some(9), 10), Next::Settle, "an expired lease is taken over");
    }

    #[test]
    fn a_dispatcher_without_idle_slots_reads_nothing() {
        assert_eq!(next_step(false, 0, false, Some(5), 10), Next::Sleep);
    }

    #[test]
    fn a_queue_known_empty_is_not_read_again_until_a_lease_expires() {
        assert_eq!(next_step(false, 3, true, None, 10), Next::Sleep);
        assert_eq!(next_step(false, 3, true, Some(10), 10), Next::Sleep, "expires at 10, not before");
        assert_eq!(next_step(false, 3, true, Some(9), 10), Next::Settle, "an expired lease is taken over");
    }

    #[test]
    fn a_wake_up_or_a_timer_makes_it_read_the_queue() {
        // `known_empty` is false once woken (or after the safety poll, a lease timer, a backoff).
        assert_eq!(next_step(false, 3, false, None, 10), Next::Peek);
        assert_eq!(next_step(false, 3, false, Some(9), 10), Next::Peek);
    }
}
