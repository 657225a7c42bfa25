//! Readiness and liveness probes: one loop per probe and process.
//!
//! A readiness loop reports changes only: ready after the first success, not ready after
//! `failureThreshold` failures in a row, ready again after a success. Until the first
//! success it probes quickly for a moment (a socket-activated child answers the probe that
//! waited in its backlog the moment it accepts; a program binding its own port is probed
//! every 20 ms until it does). A liveness loop reports every failure and the first
//! success after failures; the reconciler counts them against the threshold.
//!
//! The pace ([`pace`]): `periodMs` while starting, failing or not ready; the calmer
//! `steadyPeriodMs` while all is well (the same unless the manifest left the period unset).
//! The two loops of one process share a [`Session`]: its HTTP connections kept from probe to
//! probe (one while they take turns, a second while they overlap; a new process gets a new session, so a probe never meets an older process of the
//! instance; a failed probe drops the connection, and the next connects again), and when the
//! process last answered an HTTP probe. A liveness probe whose period the manifest left unset
//! ([`Probe::calm_when_well`]) counts any answer as a sign of life while it is not failing: it
//! probes only when `steadyPeriodMs` passed without one ([`liveness_due`]), so a ready
//! instance costs one probe per liveness period, not one of each kind.
//!
//! Calm probes keep to a shared grid of whole seconds ([`calm_due`]): a calm probe is due
//! on the last [`GRID`] point at or before `steadyPeriodMs` after the last one (or answer),
//! so it is never later than `steadyPeriodMs`, and the calm probes of every instance are
//! sent in one wake-up of orch a second, their answers read together [`GATHER`] later. A
//! calm readiness probe (every 2 s) and the liveness probe it stands in for (due 1 s after
//! the last answer) then meet on every other grid point: there the liveness loop lets the
//! readiness probe go alone and looks again just after its answer was read
//! ([`liveness_due`]), so a ready instance costs one probe a second.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use kit::http1::{self, Conns};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::manifest::{Check, Probe};
use crate::tick::{epoch, grid_floor};

/// Retry pace before the first success, for at most [`STARTUP_WINDOW`] after the start.
const STARTUP_PERIOD: Duration = Duration::from_millis(20);
const STARTUP_WINDOW: Duration = Duration::from_secs(2);
/// The step of the grid calm probes keep to: one wake-up a second sends all of them.
pub const GRID: Duration = Duration::from_secs(1);
/// How long after its grid point a calm probe looks for its answer: the answers of one grid
/// point are read together, in one wake-up of orch (an answer still late waits as any other).
const GATHER: Duration = Duration::from_millis(10);
/// How long after a grid point where the readiness probe goes alone the liveness loop looks
/// whether it was answered: just after the answers were read ([`GATHER`]), all instances'
/// loops in one wake-up; an answer not in by then gets a liveness probe of its own.
const LOOK_AGAIN: Duration = Duration::from_millis(12);

/// Runs `task` (a probe loop) on the probe thread: one thread with a runtime of its own for
/// every probe loop, so a grid point's probes and their answers wake that one thread and
/// leave orch's workers asleep (on the caller's runtime if that thread cannot start). The
/// thread also runs [`hold_gather_points`] while any loop runs.
pub fn spawn(task: impl Future<Output = ()> + Send + 'static) {
    static PROBES: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    let handle = PROBES.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        let handle = runtime.handle().clone();
        let thread = std::thread::Builder::new().name("orch-probes".into());
        thread.spawn(move || runtime.block_on(hold_gather_points())).ok()?;
        Some(handle)
    });
    let task = async move {
        let _running = Running::enter();
        task.await
    };
    match handle {
        Some(handle) => drop(handle.spawn(task)),
        None => drop(tokio::spawn(task)),
    }
}

/// How many probe loops run on the probe thread, and a wake for [`hold_gather_points`]
/// when the first one begins.
static RUNNING: AtomicUsize = AtomicUsize::new(0);
static FIRST_BEGAN: Notify = Notify::const_new();

/// One probe loop running, for as long as it lives.
struct Running;

impl Running {
    fn enter() -> Self {
        if RUNNING.fetch_add(1, Ordering::SeqCst) == 0 {
            FIRST_BEGAN.notify_one();
        }
        Running
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        RUNNING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Keeps a timer at every grid point's [`GATHER`] instant while any probe loop runs. tokio's
/// timer writes to its thread's eventfd whenever a timer is set earlier than the wake-up it
/// last planned; once a grid point's probes have fired, that plan is the next grid point, so
/// every probe's look for its answer and its timeout cost a write (two per probe, 22 a
/// second for the 12-process cluster). With this timer in place the plan after a grid point
/// is its gather instant, and the probes' timers, none earlier, cost nothing.
async fn hold_gather_points() {
    loop {
        if RUNNING.load(Ordering::SeqCst) == 0 {
            FIRST_BEGAN.notified().await;
            continue;
        }
        tokio::time::sleep_until(crate::tick::next_after(Instant::now(), GRID) + GATHER).await;
    }
}

/// An HTTP client with no pooled connections: every request meets the current process.
pub fn client() -> reqwest::Client {
    kit::http::client_builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("building an HTTP client without TLS cannot fail")
}

/// What the probe loops of one process share: its port, the connections to it kept between
/// probes ([`kit::http1`]), and when it last answered one.
#[derive(Clone)]
pub struct Session {
    conns: Conns,
    port: u16,
    times: Arc<Mutex<Times>>,
}

/// When the session's process last answered an HTTP probe, and when its next calm readiness
/// probe is due (none while readiness is not calm).
#[derive(Clone, Copy, Default)]
struct Times {
    answered: Option<Instant>,
    ready_due: Option<Instant>,
}

impl Session {
    /// A session with the process listening on `port`.
    pub fn new(port: u16) -> Self {
        Session { conns: Conns::default(), port, times: Arc::default() }
    }

    fn times(&self) -> std::sync::MutexGuard<'_, Times> {
        self.times.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn answered_now(&self) {
        self.times().answered = Some(Instant::now());
    }
}

/// The pause from the start of one probe to the next: fast in the first moments of a start
/// (`starting`: not yet ready, within [`STARTUP_WINDOW`]), `periodMs` after a failure,
/// `steadyPeriodMs` while the last probe succeeded.
pub fn pace(probe: &Probe, starting: bool, failures: u32) -> Duration {
    let period = Duration::from_millis(probe.period_ms);
    if starting {
        period.min(STARTUP_PERIOD)
    } else if failures > 0 {
        period
    } else {
        Duration::from_millis(probe.steady_period_ms.max(probe.period_ms))
    }
}

/// When a calm probe is due, `from` the last one (or the last answer): on the last [`GRID`]
/// point at or before `from + steady`, so never later than `steady`.
pub fn calm_due(from: Instant, steady: Duration) -> Instant {
    grid_floor(epoch(), GRID, from + steady)
}

/// When the probe after one `due` at `scheduled` and begun at `started` is due, `pause`
/// ([`pace`]) being its pause: on the grid ([`calm_due`], from when it was due) when the pause is
/// the calm `steadyPeriodMs` of a probe whose period the manifest left unset; else exactly
/// `pause` after it began.
pub fn next_due(probe: &Probe, scheduled: Instant, started: Instant, pause: Duration) -> Instant {
    if is_calm(probe, pause) { calm_due(scheduled, pause) } else { started + pause }
}

/// Whether a probe `pause` ([`pace`]) after the last is a calm one, on the grid: the calm
/// `steadyPeriodMs` of a probe whose period the manifest left unset.
pub fn is_calm(probe: &Probe, pause: Duration) -> bool {
    probe.calm_when_well() && pause > Duration::from_millis(probe.period_ms)
}

/// When the next liveness probe is due: `next` (the loop's own pace) while failing or when
/// the period is the manifest's; else no sooner than [`calm_due`] after the process last
/// answered any probe (`answered`), and when the calm readiness probe is due at that same
/// point (`ready_due`), [`LOOK_AGAIN`] after it: that probe's answer stands in.
pub fn liveness_due(
    probe: &Probe,
    next: Instant,
    failing: bool,
    answered: Option<Instant>,
    ready_due: Option<Instant>,
) -> Instant {
    match answered {
        Some(at) if !failing && probe.calm_when_well() => {
            let due = next.max(calm_due(at, pace(probe, false, 0)));
            if ready_due == Some(due) { due + LOOK_AGAIN } else { due }
        }
        _ => next,
    }
}

/// One probe of the session's process; an HTTP answer is looked for no sooner than `read_at`.
pub async fn check(session: &Session, probe: &Probe, read_at: Option<Instant>) -> Result<(), String> {
    let (port, timeout) = (session.port, Duration::from_millis(probe.timeout_ms));
    match &probe.check {
        Check::None => Ok(()),
        Check::Tcp => match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(("127.0.0.1", port))).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(format!("port {port}: {e}")),
            Err(_) => Err(format!("port {port}: no connection within {} ms", probe.timeout_ms)),
        },
        Check::Http(path) => match http1::get(&session.conns, port, path, timeout, read_at).await {
            Ok(status) if (200..300).contains(&status) => Ok(()),
            Ok(status) => Err(format!("GET {path} answered {status}")),
            Err(http1::Error::TimedOut) => Err(format!("GET {path}: no answer within {} ms", probe.timeout_ms)),
            Err(http1::Error::Refused) => Err(format!("GET {path}: connection refused")),
            Err(e) => Err(format!("GET {path}: {e}")),
        },
    }
}

/// Runs a readiness probe until `cancel`; `report(ready, detail)` on every change.
pub async fn readiness(
    session: Session,
    probe: Probe,
    cancel: CancellationToken,
    mut report: impl FnMut(bool, String),
) {
    let began = Instant::now();
    let mut ever_ready = false;
    let mut ready = false;
    let mut failures = 0u32;
    let (mut due, mut calm) = (began, false);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep_until(due) => {}
        }
        let started = Instant::now();
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = check(&session, &probe, calm.then(|| due + GATHER)) => outcome,
        };
        match outcome {
            Ok(()) => {
                failures = 0;
                if matches!(probe.check, Check::Http(_)) {
                    session.answered_now();
                }
                if !ready {
                    ready = true;
                    ever_ready = true;
                    report(true, String::new());
                }
            }
            Err(why) => {
                failures += 1;
                if ready && failures >= probe.failure_threshold {
                    ready = false;
                    report(false, why);
                }
            }
        }
        // Not ready yet counts as failing: the start is probed at `periodMs`.
        let starting = !ever_ready && began.elapsed() < STARTUP_WINDOW;
        let pause = pace(&probe, starting, failures.max(u32::from(!ready)));
        (due, calm) = (next_due(&probe, due, started, pause), is_calm(&probe, pause));
        session.times().ready_due = calm.then_some(due);
    }
}

/// Runs a liveness probe until `cancel`; `report(ok, detail)` on each failure and on the
/// first success after failures. It begins when the process has been ready.
pub async fn liveness(session: Session, probe: Probe, cancel: CancellationToken, mut report: impl FnMut(bool, String)) {
    let mut failing = false;
    let mut next = Instant::now();
    loop {
        // Looked at again after every pause: an answer meanwhile moves the probe later.
        let Times { answered, ready_due } = *session.times();
        let due = liveness_due(&probe, next, failing, answered, ready_due);
        if due > Instant::now() {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep_until(due) => {}
            }
            continue;
        }
        let (scheduled, started) = (due, Instant::now());
        let calm = !failing && is_calm(&probe, pace(&probe, false, 0));
        let outcome = tokio::select! {
            _ = cancel.cancelled() => return,
            outcome = check(&session, &probe, calm.then(|| scheduled + GATHER)) => outcome,
        };
        match outcome {
            Ok(()) => {
                if matches!(probe.check, Check::Http(_)) {
                    session.answered_now();
                }
                if failing {
                    failing = false;
                    report(true, String::new());
                }
            }
            Err(why) => {
                failing = true;
                report(false, why);
            }
        }
        next = next_due(&probe, scheduled, started, pace(&probe, false, u32::from(failing)));
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use axum::http::StatusCode;
    use axum::routing::get;

    use super::*;

    fn http_probe(path: &str, period_ms: u64, threshold: u32) -> Probe {
        Probe {
            check: Check::Http(path.into()),
            period_ms,
            steady_period_ms: period_ms,
            timeout_ms: 200,
            failure_threshold: threshold,
        }
    }

    /// An HTTP probe whose period the manifest left unset: `steady` while well.
    fn calm(path: &str, period_ms: u64, steady_period_ms: u64, timeout_ms: u64, failure_threshold: u32) -> Probe {
        Probe { check: Check::Http(path.into()), period_ms, steady_period_ms, timeout_ms, failure_threshold }
    }

    /// A server whose /ready answers 200 while `healthy` is true.
    async fn server(healthy: Arc<Mutex<bool>>) -> u16 {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let app = axum::Router::new().route(
            "/ready",
            get(move || {
                let ok = *healthy.lock().unwrap();
                async move { if ok { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE } }
            }),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        port
    }

    #[tokio::test]
    async fn probe_loops_run_on_the_probe_thread() {
        let (tx, rx) = tokio::sync::oneshot::channel();
        spawn(async move {
            let _ = tx.send(std::thread::current().name().map(str::to_owned));
        });
        assert_eq!(rx.await.unwrap().as_deref(), Some("orch-probes"));
    }

    #[tokio::test]
    async fn checks_say_what_failed() {
        let healthy = Arc::new(Mutex::new(false));
        let port = server(healthy.clone()).await;
        let session = Session::new(port);
        assert_eq!(check(&session, &http_probe("/ready", 100, 1), None).await, Err("GET /ready answered 503".into()));
        *healthy.lock().unwrap() = true;
        assert_eq!(check(&session, &http_probe("/ready", 100, 1), None).await, Ok(()));
        let tcp =
            Probe { check: Check::Tcp, period_ms: 100, steady_period_ms: 100, timeout_ms: 200, failure_threshold: 1 };
        assert_eq!(check(&session, &tcp, None).await, Ok(()));
        // A socket that is bound but never answers: the timeout.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let err = check(&Session::new(silent_port), &http_probe("/health", 100, 1), None).await.unwrap_err();
        assert_eq!(err, "GET /health: no answer within 200 ms");
        drop(silent);
        let err = check(&Session::new(silent_port), &http_probe("/health", 100, 1), None).await.unwrap_err();
        assert_eq!(err, "GET /health: connection refused");
    }

    #[tokio::test]
    async fn readiness_reports_changes_after_the_threshold() {
        let healthy = Arc::new(Mutex::new(true));
        let port = server(healthy.clone()).await;
        let seen = Arc::new(Mutex::new(Vec::new()));
        let cancel = CancellationToken::new();
        let log = seen.clone();
        let task =
            tokio::spawn(readiness(Session::new(port), http_probe("/ready", 10, 3), cancel.clone(), move |ok, why| {
                log.lock().unwrap().push((ok, why))
            }));
        let changes = |n: usize| {
            let seen = seen.clone();
            async move {
                kit::testing::eventually(Duration::from_secs(5), "probe reports", || {
                    let seen = seen.clone();
                    async move { (seen.lock().unwrap().len() >= n).then_some(()) }
                })
                .await
            }
        };
        changes(1).await;
        *healthy.lock().unwrap() = false;
        changes(2).await;
        *healthy.lock().unwrap() = true;
        changes(3).await;
        cancel.cancel();
        task.await.unwrap();
        let seen = seen.lock().unwrap().clone();
        assert_eq!(seen, vec![(true, String::new()), (false, "GET /ready answered 503".into()), (true, String::new())]);
    }

    #[test]
    fn the_pace_is_fast_while_starting_or_failing_and_calm_while_well() {
        let ms = Duration::from_millis;
        let unset = calm("/ready", 200, 2000, 1000, 3);
        let set = Probe { steady_period_ms: 50, period_ms: 50, ..unset.clone() };
        let slow = Probe { steady_period_ms: 5000, period_ms: 5000, ..unset.clone() };
        // (probe, starting, failures) -> pause
        let table = [
            (&unset, true, 1, ms(20)),
            (&unset, false, 1, ms(200)),
            (&unset, false, 3, ms(200)),
            (&unset, false, 0, ms(2000)),
            (&set, true, 1, ms(20)),
            (&set, false, 2, ms(50)),
            (&set, false, 0, ms(50)),
            (&slow, false, 0, ms(5000)),
            (&slow, false, 1, ms(5000)),
            (&slow, true, 0, ms(20)),
        ];
        for (probe, starting, failures, want) in table {
            assert_eq!(pace(probe, starting, failures), want, "{probe:?} starting {starting} failures {failures}");
        }
    }

    #[tokio::test]
    async fn a_probe_loop_keeps_its_connection() {
        // A server that counts the connections it accepts.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = accepted.clone();
        let app = axum::Router::new().route("/health", get(|| async { StatusCode::OK }));
        let listener = axum::serve::ListenerExt::tap_io(listener, move |_| {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let session = Session::new(port);
        for _ in 0..5 {
            assert_eq!(check(&session, &http_probe("/health", 10, 1), None).await, Ok(()));
        }
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 1, "five probes, one connection");
    }

    #[test]
    fn an_unset_liveness_period_waits_for_a_stretch_without_answers() {
        let ms = Duration::from_millis;
        // A grid point: a stretch from an answer just after it ends on the next second's.
        let t0 = grid_floor(epoch(), GRID, Instant::now());
        let unset = calm("/health", 400, 1000, 400, 4);
        let set = Probe { steady_period_ms: 400, ..unset.clone() };
        let look = LOOK_AGAIN;
        // (probe, own next probe, failing, last answer, readiness due) -> due
        let table = [
            (&unset, t0, false, None, None, t0),
            (&unset, t0, false, Some(t0 + ms(3)), None, t0 + ms(1000)),
            (&unset, t0 + ms(1000), false, Some(t0 + ms(301)), None, t0 + ms(1000)),
            // On the grid, never later than 1 s after the answer, never before its own next.
            (&unset, t0 + ms(1000), false, Some(t0 + ms(1250)), None, t0 + ms(2000)),
            (&unset, t0 + ms(1000), false, Some(t0 - ms(5000)), None, t0 + ms(1000)),
            // Readiness due at the same point: it goes alone, liveness looks just after.
            (&unset, t0, false, Some(t0 + ms(10)), Some(t0 + ms(1000)), t0 + ms(1000) + look),
            (&unset, t0, false, Some(t0 + ms(10)), Some(t0 + ms(2000)), t0 + ms(1000)),
            // Failing: its own pace, whatever answered before, whatever readiness does.
            (&unset, t0 + ms(400), true, Some(t0 + ms(300)), Some(t0 + ms(400)), t0 + ms(400)),
            // A period the manifest sets holds.
            (&set, t0 + ms(400), false, Some(t0 + ms(300)), Some(t0 + ms(400)), t0 + ms(400)),
        ];
        for (i, (probe, next, failing, answered, ready_due, want)) in table.into_iter().enumerate() {
            assert_eq!(liveness_due(probe, next, failing, answered, ready_due), want, "row {i}");
        }
    }

    #[test]
    fn calm_probes_keep_to_the_grid_and_are_never_late() {
        let ms = Duration::from_millis;
        // Whatever it counts from, a calm probe is on the grid, within one step under its period.
        let g = grid_floor(epoch(), GRID, Instant::now());
        for offset in (0..2400).step_by(37) {
            let from = g + ms(offset);
            for steady in [ms(1000), ms(2000)] {
                let due = calm_due(from, steady);
                assert!(due <= from + steady && due + GRID > from + steady, "{offset} {steady:?}");
                assert_eq!(grid_floor(epoch(), GRID, due), due, "{offset} {steady:?}: off the grid");
            }
        }
        // (probe, scheduled, started, pause) -> next due: the grid only for a calm pause.
        let (unset, set) = (calm("/ready", 200, 2000, 1000, 3), http_probe("/ready", 2000, 3));
        let table = [
            (&unset, g, g + ms(1), ms(2000), g + ms(2000)),
            (&unset, g + ms(30), g + ms(31), ms(2000), g + ms(2000)),
            (&unset, g + ms(30), g + ms(31), ms(200), g + ms(231)),
            (&unset, g + ms(30), g + ms(31), ms(20), g + ms(51)),
            (&set, g + ms(30), g + ms(31), ms(2000), g + ms(2031)),
        ];
        for (i, (probe, scheduled, started, pause, want)) in table.into_iter().enumerate() {
            assert_eq!(next_due(probe, scheduled, started, pause), want, "row {i}");
        }
    }

    /// The calm probes of one ready process, simulated with the defaults as the two loops
    /// run them, each probe answered `latency` after its timer fired `late`: which kind is
    /// sent when. A loop sees an answer (and the readiness loop's next due) only once it has
    /// come; at a tie the readiness timer fires first, as nothing orders them.
    fn calm_schedule(seconds: u64, late: Duration, latency: Duration) -> Vec<(Instant, &'static str)> {
        let ready_probe = calm("/ready", 200, 2000, 1000, 3);
        let live_probe = calm("/health", 400, 1000, 400, 4);
        let start = grid_floor(epoch(), GRID, Instant::now()) + Duration::from_millis(437);
        let (mut ready_at, mut live_wake, mut live_next) = (start, start, start);
        // Answers on their way: when each is seen, and the readiness due it brings.
        let mut coming: Vec<(Instant, Option<Instant>)> = Vec::new();
        let (mut answered, mut shown_due) = (None, None);
        let mut sent = Vec::new();
        while sent.last().is_none_or(|(at, _)| *at < start + Duration::from_secs(seconds)) {
            let now = ready_at.min(live_wake);
            coming.retain(|&(at, due)| {
                if at > now {
                    return true;
                }
                answered = answered.max(Some(at));
                shown_due = due.or(shown_due);
                false
            });
            let started = now + late;
            if ready_at <= live_wake {
                sent.push((now, "ready"));
                ready_at = next_due(&ready_probe, now, started, pace(&ready_probe, false, 0));
                coming.push((started + latency, Some(ready_at)));
                continue;
            }
            let due = liveness_due(&live_probe, live_next, false, answered, shown_due);
            if due > now {
                live_wake = due;
                continue;
            }
            sent.push((now, "live"));
            live_next = next_due(&live_probe, now, started, pace(&live_probe, false, 0));
            coming.push((started + latency, None));
            live_wake = started + latency;
        }
        sent
    }

    #[test]
    fn a_ready_process_gets_one_calm_probe_a_second_on_the_grid() {
        let ms = Duration::from_millis;
        for (late, latency) in [(ms(0), ms(1)), (ms(1), ms(5)), (ms(2), ms(9))] {
            let sent = calm_schedule(20, late, latency);
            let calm = &sent[2..];
            assert!((19..=21).contains(&calm.len()), "{late:?} {latency:?}: {} probes in 20 s", calm.len());
            for pair in calm.windows(2) {
                let ((a, kind_a), (b, kind_b)) = (pair[0], pair[1]);
                assert_ne!(kind_a, kind_b, "{late:?} {latency:?}: they take turns");
                assert_eq!(b - a, GRID, "{late:?} {latency:?}: one a second");
            }
            for (at, _) in calm {
                assert_eq!(grid_floor(epoch(), GRID, *at), *at, "{late:?} {latency:?}: off the grid");
            }
        }
        // Answers slower than the look again: liveness probes too, never more than 1 s
        // after the last answer.
        for (late, latency) in [(ms(1), ms(30)), (ms(5), ms(150))] {
            let sent = calm_schedule(20, late, latency);
            let calm = &sent[2..];
            assert!(calm.len() <= 31, "{late:?} {latency:?}: {} probes in 20 s", calm.len());
            for pair in calm.windows(2) {
                let (a, b) = (pair[0].0, pair[1].0);
                assert!(b > a && b <= a + late + latency + ms(1000), "{late:?} {latency:?}: {:?}", b - a);
            }
        }
    }

    /// A server counting its `/ready` and `/health` requests (both answer 200).
    async fn counting_server() -> (u16, Arc<[std::sync::atomic::AtomicUsize; 2]>) {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let hits: Arc<[AtomicUsize; 2]> = Arc::new([AtomicUsize::new(0), AtomicUsize::new(0)]);
        let (ready, health) = (hits.clone(), hits.clone());
        let app = axum::Router::new()
            .route(
                "/ready",
                get(move || async move {
                    ready[0].fetch_add(1, SeqCst);
                    StatusCode::OK
                }),
            )
            .route(
                "/health",
                get(move || async move {
                    health[1].fetch_add(1, SeqCst);
                    StatusCode::OK
                }),
            );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (port, hits)
    }

    async fn hits_reach(hits: &Arc<[std::sync::atomic::AtomicUsize; 2]>, which: usize, n: usize) {
        kit::testing::eventually(Duration::from_secs(10), "probe requests", || {
            let seen = hits[which].load(std::sync::atomic::Ordering::SeqCst);
            async move { (seen >= n).then_some(()) }
        })
        .await
    }

    #[tokio::test]
    async fn readiness_answers_stand_in_for_liveness_probes_of_an_unset_period() {
        let (port, hits) = counting_server().await;
        let session = Session::new(port);
        let readiness_probe = http_probe("/ready", 10, 3);
        // Unset: calm while well, a stretch of 3 s without an answer before probing.
        let calm = Probe { steady_period_ms: 3000, ..http_probe("/health", 20, 4) };
        let (ready_cancel, live_cancel) = (CancellationToken::new(), CancellationToken::new());
        let ready = tokio::spawn(readiness(session.clone(), readiness_probe, ready_cancel.clone(), |_, _| {}));
        hits_reach(&hits, 0, 1).await;
        let live = tokio::spawn(liveness(session.clone(), calm, live_cancel.clone(), |_, _| {}));
        hits_reach(&hits, 0, 30).await;
        let health = hits[1].load(std::sync::atomic::Ordering::SeqCst);
        // Readiness answered every 10 ms: no liveness probe was due.
        assert_eq!(health, 0, "liveness probed although readiness answered");
        ready_cancel.cancel();
        ready.await.unwrap();
        // Without answers, liveness probes again.
        hits_reach(&hits, 1, 2).await;
        live_cancel.cancel();
        live.await.unwrap();

        // A period the manifest sets holds, answers or not.
        let (port, hits) = counting_server().await;
        let session = Session::new(port);
        let cancel = CancellationToken::new();
        let ready = tokio::spawn(readiness(session.clone(), http_probe("/ready", 10, 3), cancel.clone(), |_, _| {}));
        let live = tokio::spawn(liveness(session, http_probe("/health", 20, 4), cancel.clone(), |_, _| {}));
        hits_reach(&hits, 1, 5).await;
        assert!(hits[0].load(std::sync::atomic::Ordering::SeqCst) > 0);
        cancel.cancel();
        ready.await.unwrap();
        live.await.unwrap();
    }
}
