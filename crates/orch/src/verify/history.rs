//! The history of a verify run, in Jepsen's model: every operation is an `invoke` event
//! when a client starts it and one completion when it ends: `ok` (it happened, with what
//! the cluster answered), `fail` (it certainly did not happen) or `info` (the client cannot
//! tell: a timeout, a lost connection, a 5xx). Fault windows of the nemesis are recorded
//! beside the operations. Written as JSON lines, one event a line.
//!
//! Times are microseconds since the run began, from one monotonic clock.

use std::io::Write;

use serde::{Deserialize, Serialize};

/// What an event says of its operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Invoke,
    Ok,
    Fail,
    Info,
}

/// The function of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum F {
    /// A register read: `GET /api/data/KEY`.
    Read,
    /// A blind register write: `PUT /api/data/KEY` with no version.
    Write,
    /// Compare-and-set on the version: `PUT /api/data/KEY` with `If-Match`.
    Cas,
    /// A job submit: `POST /api/compute/job` with an `Idempotency-Key`.
    Submit,
    /// A job read back: `GET /api/compute/job/ID`.
    Poll,
}

impl F {
    pub fn as_str(self) -> &'static str {
        match self {
            F::Read => "read",
            F::Write => "write",
            F::Cas => "cas",
            F::Submit => "submit",
            F::Poll => "poll",
        }
    }
}

/// One event of the history.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// The operation's number, shared by its invoke and its completion.
    pub op: u64,
    /// The client (Jepsen's process) that ran it.
    pub process: u32,
    #[serde(rename = "type")]
    pub kind: Kind,
    pub f: F,
    /// The register key, or the job's idempotency key.
    pub key: String,
    /// Microseconds since the run began.
    pub time: u64,
    /// The value written (on invoke) or read (on ok), as JSON text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The version a cas expects (invoke), or the version read or written (ok).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// A job's id (submit ok, poll).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<String>,
    /// The HTTP status of the answer, if one came.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The instance that answered (the balancer's `X-Upstream-Instance`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Why it failed or is unknown, or a poll's status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Event {
    pub fn invoke(op: u64, process: u32, f: F, key: &str, time: u64) -> Self {
        Self {
            op,
            process,
            kind: Kind::Invoke,
            f,
            key: key.to_owned(),
            time,
            value: None,
            version: None,
            job: None,
            status: None,
            instance: None,
            error: None,
        }
    }

    /// The completion of `self` (an invoke) as `kind` at `time`, with nothing observed yet.
    pub fn complete(&self, kind: Kind, time: u64) -> Self {
        Self {
            kind,
            time,
            value: None,
            version: None,
            job: None,
            status: None,
            instance: None,
            error: None,
            ..self.clone()
        }
    }
}

/// A fault window of the nemesis.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Fault {
    /// kill, pause, latency, errors or partition.
    pub action: String,
    /// What it hit (an instance or a service).
    pub target: String,
    pub start: u64,
    pub end: u64,
    /// What orch said it did.
    pub description: String,
}

/// A line of the history file: an operation's event or a fault window.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
pub enum Line {
    Event(Event),
    Fault { fault: Fault },
}

/// The whole record of a run.
#[derive(Clone, Debug, Default)]
pub struct History {
    pub events: Vec<Event>,
    pub faults: Vec<Fault>,
}

impl History {
    /// The history as JSON lines: events in time order, then the fault windows.
    pub fn write_jsonl(&self, out: &mut impl Write) -> std::io::Result<()> {
        let mut events: Vec<&Event> = self.events.iter().collect();
        events.sort_by_key(|e| (e.time, e.kind != Kind::Invoke, e.op));
        for e in events {
            serde_json::to_writer(&mut *out, e)?;
            out.write_all(b"\n")?;
        }
        for f in &self.faults {
            serde_json::to_writer(&mut *out, &Line::Fault { fault: f.clone() })?;
            out.write_all(b"\n")?;
        }
        Ok(())
    }

    /// Pairs of (invoke, completion) per operation, the completion `None` when the run
    /// ended first; in invoke order.
    pub fn operations(&self) -> Vec<(&Event, Option<&Event>)> {
        let mut done = std::collections::HashMap::new();
        for e in self.events.iter().filter(|e| e.kind != Kind::Invoke) {
            done.insert(e.op, e);
        }
        let mut ops: Vec<(&Event, Option<&Event>)> =
            self.events.iter().filter(|e| e.kind == Kind::Invoke).map(|e| (e, done.get(&e.op).copied())).collect();
        ops.sort_by_key(|(i, _)| (i.time, i.op));
        ops
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_round_trips_and_pairs_operations() {
        let mut w = Event::invoke(1, 0, F::Write, "k", 10);
        w.value = Some("\"a\"".into());
        let mut ok = w.complete(Kind::Ok, 20);
        ok.version = Some(2);
        let r = Event::invoke(2, 1, F::Read, "k", 15);
        let h = History {
            events: vec![ok.clone(), w.clone(), r.clone()],
            faults: vec![Fault {
                action: "kill".into(),
                target: "data-1".into(),
                start: 5,
                end: 5,
                description: "killed".into(),
            }],
        };
        let mut buf = Vec::new();
        h.write_jsonl(&mut buf).unwrap();
        let text = String::from_utf8(buf).unwrap();
        let lines: Vec<Line> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4);
        assert!(matches!(&lines[0], Line::Event(e) if *e == w));
        assert!(matches!(&lines[3], Line::Fault { fault } if fault.target == "data-1"));
        assert!(text.lines().next().unwrap().contains("\"type\":\"invoke\""));
        let ops = h.operations();
        assert_eq!(ops.len(), 2);
        assert_eq!(ops[0].1, Some(&ok));
        assert_eq!(ops[1].1, None);
    }
}
