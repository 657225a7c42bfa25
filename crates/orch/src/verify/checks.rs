//! The checks of a recorded [`History`], pure: the register workload handed key by key to
//! the linearizability [`checker`], after value integrity (every value read is, byte for
//! byte, the initial value or one some client wrote to that key; a read answered 404 is a
//! lost key); and the jobs workload.
//!
//! Jobs: every acknowledged submit's job, read back after the run, completed with the sum
//! of its operands; two submits with one idempotency key got one job id; two keys never
//! share a job id. A job still queued or running when the read-back ended makes the
//! verdict unknown. Jobs no acknowledged submit accounts for are counted: the service's job
//! total must have grown by exactly the number of distinct acknowledged jobs (after the run,
//! a submit whose answer was lost is sent again with its key, which must answer its job
//! rather than queue another) — which holds only while no one else submits jobs.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::checker::{self, Bound, Checked, Counterexample, Input, Op, Output, State, Verdict};
use super::history::{Event, F, History, Kind};

/// One key's check, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct KeyReport {
    pub key: String,
    #[serde(flatten)]
    pub checked: Checked,
}

/// The register workload's check of every key in `initial` (key → its version and value
/// text before the run).
pub fn registers(history: &History, initial: &BTreeMap<String, (i64, String)>, bound: Bound) -> Vec<KeyReport> {
    let mut by_key: BTreeMap<&str, Vec<(&Event, Option<&Event>)>> = BTreeMap::new();
    for (inv, done) in history.operations() {
        if matches!(inv.f, F::Read | F::Write | F::Cas) {
            by_key.entry(inv.key.as_str()).or_default().push((inv, done));
        }
    }
    initial
        .iter()
        .map(|(key, (version, text))| {
            let ops = by_key.remove(key.as_str()).unwrap_or_default();
            KeyReport { key: key.clone(), checked: register(*version, text, &ops, bound) }
        })
        .collect()
}

/// One key: integrity first, then the search.
fn register(version: i64, initial: &str, history: &[(&Event, Option<&Event>)], bound: Bound) -> Checked {
    let mut values: HashMap<&str, u32> = HashMap::from([(initial, 0)]);
    for (inv, _) in history {
        if let (F::Write | F::Cas, Some(v)) = (inv.f, &inv.value) {
            let next = values.len() as u32;
            values.entry(v.as_str()).or_insert(next);
        }
    }
    let mut ops = Vec::new();
    for (inv, done) in history {
        let id = |text: &Option<String>| text.as_deref().and_then(|t| values.get(t).copied());
        let (ret, kind) = match done {
            Some(d) if d.kind != Kind::Info => (Some(d.time), d.kind),
            _ => (None, Kind::Info),
        };
        let (input, output) = match (inv.f, kind, done) {
            (F::Read, Kind::Ok, Some(d)) => {
                let Some(value) = id(&d.value) else {
                    let why = format!(
                        "operation {} read a value no one wrote to this key: {}",
                        inv.op,
                        d.value.as_deref().unwrap_or("(none)")
                    );
                    let state = State { version: d.version.unwrap_or_default(), value: u32::MAX };
                    let cx = Counterexample { linearized: 0, state, stuck: inv.op, concurrent: Vec::new() };
                    return Checked {
                        verdict: Verdict::Invalid,
                        ops: history.len(),
                        explored: 0,
                        counterexample: Some(cx),
                        why: Some(why),
                    };
                };
                (Input::Read, Output::Read(State { version: d.version.unwrap_or_default(), value }))
            }
            // The key was created before the run and is never deleted: a 404 that an
            // instance answered is a read of a state the register never had (one from the
            // balancer alone, no instance behind it, observes nothing).
            (F::Read, Kind::Fail, Some(d)) if d.status == Some(404) && d.instance.is_some() => {
                (Input::Read, Output::Read(State { version: 0, value: u32::MAX }))
            }
            (F::Read, ..) => continue,
            (f, kind, done) => {
                let value = id(&inv.value).unwrap_or_default();
                let input = match (f, inv.version) {
                    (F::Cas, Some(expected)) => Input::Cas { expected, value },
                    _ => Input::Write(value),
                };
                let output = match (kind, done) {
                    (Kind::Ok, Some(d)) => Output::Written(d.version.unwrap_or_default()),
                    (Kind::Fail, Some(d)) if f == F::Cas && d.status == Some(412) => Output::CasFailed,
                    // A definite refusal of another kind: it did not happen.
                    (Kind::Fail, _) => continue,
                    _ => Output::Unknown,
                };
                (input, output)
            }
        };
        ops.push(Op { id: inv.op, call: inv.time, ret, input, output });
    }
    checker::check(State { version, value: 0 }, &ops, bound)
}

/// The jobs workload's check.
#[derive(Clone, Debug, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobsReport {
    pub verdict: Option<Verdict>,
    /// Jobs acknowledged (distinct ids).
    pub acknowledged: usize,
    pub completed: usize,
    /// Keys submitted more than once that got one id each time.
    pub resubmits_same_id: usize,
    /// What is wrong, one line each (invalid); what is not known yet (unknown).
    pub problems: Vec<String>,
    pub open: Vec<String>,
}

/// The sum of a job's operands (`[a, b]` as integers), as the compute service answers it.
fn expected_sum(operands: &str) -> Option<serde_json::Value> {
    let numbers: Vec<i64> = serde_json::from_str(operands).ok()?;
    Some(serde_json::Value::from(numbers.iter().sum::<i64>()))
}

/// The jobs check; `created` is how much the service's job total grew over the run, if known.
pub fn jobs(history: &History, created: Option<i64>) -> JobsReport {
    let mut report = JobsReport::default();
    // key → (operands, ids acknowledged); id → key; id → its last read-back.
    let mut keys: BTreeMap<&str, (&str, Vec<&str>)> = BTreeMap::new();
    let mut owner: HashMap<&str, &str> = HashMap::new();
    let mut last_poll: HashMap<&str, &Event> = HashMap::new();
    for (inv, done) in history.operations() {
        match (inv.f, done) {
            (F::Submit, done) => {
                let entry = keys.entry(inv.key.as_str()).or_insert((inv.value.as_deref().unwrap_or(""), Vec::new()));
                if let Some(id) = done.filter(|d| d.kind == Kind::Ok).and_then(|d| d.job.as_deref()) {
                    entry.1.push(id);
                    if let Some(other) = owner.insert(id, inv.key.as_str())
                        && other != inv.key
                    {
                        report.problems.push(format!("keys {other} and {} were both given job {id}", inv.key));
                    }
                }
            }
            (F::Poll, Some(d)) if d.kind == Kind::Ok => {
                if let Some(id) = d.job.as_deref() {
                    last_poll.insert(id, d);
                }
            }
            _ => {}
        }
    }
    for (key, (operands, ids)) in &keys {
        if ids.windows(2).any(|w| w[0] != w[1]) {
            report.problems.push(format!("resubmits of key {key} were given different jobs: {}", ids.join(", ")));
        } else if ids.len() > 1 {
            report.resubmits_same_id += 1;
        }
        let Some(&id) = ids.first() else { continue };
        report.acknowledged += 1;
        let Some(poll) = last_poll.get(id) else {
            report.open.push(format!("job {id} (key {key}) was never read back"));
            continue;
        };
        let result: Option<serde_json::Value> = poll.value.as_deref().and_then(|r| serde_json::from_str(r).ok());
        match poll.error.as_deref() {
            Some("completed") if result.is_some() && result == expected_sum(operands) => report.completed += 1,
            Some("completed") => report.problems.push(format!(
                "job {id} (key {key}, add {operands}) completed with {}",
                poll.value.as_deref().unwrap_or("no result")
            )),
            Some(status @ ("queued" | "running")) => report.open.push(format!("job {id} (key {key}) still {status}")),
            other => report.problems.push(format!("job {id} (key {key}) ended {}", other.unwrap_or("unreadable"))),
        }
    }
    if let Some(created) = created
        && created > owner.len() as i64
    {
        report.problems.push(format!(
            "the service holds {} more jobs than the {} acknowledged: a submit queued twice (unless another client submitted jobs during the run)",
            created - owner.len() as i64,
            owner.len()
        ));
    }
    if report.acknowledged == 0 && report.problems.is_empty() {
        report.open.push("no job was acknowledged: nothing to check".into());
    }
    report.verdict = Some(if !report.problems.is_empty() {
        Verdict::Invalid
    } else if !report.open.is_empty() {
        Verdict::Unknown
    } else {
        Verdict::Valid
    });
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(op: u64, kind: Kind, f: F, key: &str, time: u64) -> Event {
        Event { kind, ..Event::invoke(op, 0, f, key, time) }
    }

    fn history(events: Vec<Event>) -> History {
        History { events, faults: Vec::new() }
    }

    #[test]
    fn a_read_of_a_value_never_written_is_invalid_byte_for_byte() {
        let mut w = ev(1, Kind::Invoke, F::Write, "k", 0);
        w.value = Some(r#"{"a":"caf\u00e9"}"#.into());
        let mut w_ok = ev(1, Kind::Ok, F::Write, "k", 10);
        w_ok.version = Some(2);
        let r = ev(2, Kind::Invoke, F::Read, "k", 20);
        let mut r_ok = ev(2, Kind::Ok, F::Read, "k", 30);
        r_ok.version = Some(2);
        let initial = BTreeMap::from([("k".to_owned(), (1, "0".to_owned()))]);
        // The same JSON value, but not the same text: integrity is byte for byte.
        r_ok.value = Some(r#"{"a":"café"}"#.into());
        let h = history(vec![w.clone(), w_ok.clone(), r.clone(), r_ok.clone()]);
        let checked = &registers(&h, &initial, Bound::default())[0].checked;
        assert_eq!(checked.verdict, Verdict::Invalid);
        assert_eq!(checked.counterexample.as_ref().unwrap().stuck, 2);
        r_ok.value = w.value.clone();
        let h = history(vec![w, w_ok, r, r_ok]);
        assert_eq!(registers(&h, &initial, Bound::default())[0].checked.verdict, Verdict::Valid);
    }

    #[test]
    fn a_key_gone_missing_is_invalid() {
        let r = ev(1, Kind::Invoke, F::Read, "k", 0);
        let mut missing = ev(1, Kind::Fail, F::Read, "k", 10);
        missing.status = Some(404);
        let initial = BTreeMap::from([("k".to_owned(), (1, "0".to_owned()))]);
        // No instance answered (the balancer's own 404): nothing observed.
        let h = history(vec![r.clone(), missing.clone()]);
        assert_eq!(registers(&h, &initial, Bound::default())[0].checked.verdict, Verdict::Valid);
        missing.instance = Some("data-1".into());
        let h = history(vec![r.clone(), missing.clone()]);
        assert_eq!(registers(&h, &initial, Bound::default())[0].checked.verdict, Verdict::Invalid);
        // Any other refusal of a read observes nothing.
        missing.status = Some(401);
        let h = history(vec![r, missing]);
        assert_eq!(registers(&h, &initial, Bound::default())[0].checked.verdict, Verdict::Valid);
    }

    #[test]
    fn cas_refusals_are_observations_and_other_failures_did_not_happen() {
        let mut cas = ev(1, Kind::Invoke, F::Cas, "k", 0);
        cas.value = Some("1".into());
        cas.version = Some(1);
        let mut refused = ev(1, Kind::Fail, F::Cas, "k", 10);
        refused.status = Some(412);
        let initial = BTreeMap::from([("k".to_owned(), (1, "0".to_owned()))]);
        // Refused though the version was 1: invalid.
        let h = history(vec![cas.clone(), refused.clone()]);
        assert_eq!(registers(&h, &initial, Bound::default())[0].checked.verdict, Verdict::Invalid);
        // A 400 means it did not happen at all.
        refused.status = Some(400);
        let h = history(vec![cas, refused]);
        assert_eq!(registers(&h, &initial, Bound::default())[0].checked.verdict, Verdict::Valid);
    }

    fn submit(op: u64, key: &str, job: Option<&str>) -> [Event; 2] {
        let mut inv = ev(op, Kind::Invoke, F::Submit, key, op * 10);
        inv.value = Some("[2, 3]".into());
        let mut done = ev(op, if job.is_some() { Kind::Ok } else { Kind::Info }, F::Submit, key, op * 10 + 5);
        done.job = job.map(str::to_owned);
        [inv, done]
    }

    fn poll(op: u64, key: &str, job: &str, status: &str, result: &str) -> [Event; 2] {
        let inv = ev(op, Kind::Invoke, F::Poll, key, op * 10);
        let mut done = ev(op, Kind::Ok, F::Poll, key, op * 10 + 5);
        done.job = Some(job.into());
        done.error = Some(status.into());
        done.value = Some(result.into());
        [inv, done]
    }

    #[test]
    fn jobs_complete_once_with_their_result_and_keys_keep_their_id() {
        let check = |parts: Vec<[Event; 2]>| jobs(&history(parts.into_iter().flatten().collect()), Some(1));
        let ok = check(vec![
            submit(1, "a", Some("j1")),
            submit(2, "a", Some("j1")),
            submit(3, "b", None),
            poll(4, "a", "j1", "completed", "5"),
        ]);
        assert_eq!((ok.verdict, ok.acknowledged, ok.completed, ok.resubmits_same_id), (Some(Verdict::Valid), 1, 1, 1));
        let wrong = check(vec![submit(1, "a", Some("j1")), poll(2, "a", "j1", "completed", "6")]);
        assert_eq!(wrong.verdict, Some(Verdict::Invalid), "{wrong:?}");
        let twice =
            check(vec![submit(1, "a", Some("j1")), submit(2, "a", Some("j2")), poll(3, "a", "j1", "completed", "5")]);
        assert_eq!(twice.verdict, Some(Verdict::Invalid));
        let shared =
            check(vec![submit(1, "a", Some("j1")), submit(2, "b", Some("j1")), poll(3, "a", "j1", "completed", "5")]);
        assert_eq!(shared.verdict, Some(Verdict::Invalid));
        // One job more in the service than acknowledged: queued twice.
        let parts = [submit(1, "a", Some("j1")), poll(2, "a", "j1", "completed", "5")];
        let extra = jobs(&history(parts.into_iter().flatten().collect()), Some(2));
        assert_eq!(extra.verdict, Some(Verdict::Invalid), "{extra:?}");
        let open = check(vec![submit(1, "a", Some("j1")), poll(2, "a", "j1", "running", "null")]);
        assert_eq!(open.verdict, Some(Verdict::Unknown));
        let failed = check(vec![submit(1, "a", Some("j1")), poll(2, "a", "j1", "failed", "null")]);
        assert_eq!(failed.verdict, Some(Verdict::Invalid));
        // Nothing acknowledged, nothing shown: unknown, not valid.
        let none = jobs(&history(submit(1, "a", None).into_iter().collect()), Some(0));
        assert_eq!(none.verdict, Some(Verdict::Unknown), "{none:?}");
        assert_eq!(jobs(&history(Vec::new()), None).verdict, Some(Verdict::Unknown));
    }
}
