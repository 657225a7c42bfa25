//! The event log: what happened to the cluster, numbered, in memory, in
//! `DATA_DIR/events.jsonl` (moved to `events.jsonl.1` when it grows past a cap, so the two
//! files together hold at most twice the cap), and served by `GET /api/events` (with long
//! polling). The event itself is a wire type, [`kit::orch_api::Event`].

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::watch;

/// Events kept in memory (the files have more).
const KEEP: usize = 10_000;

pub use kit::orch_api::{Event, EventKind as Kind};

pub struct EventLog {
    inner: Mutex<Inner>,
    latest: watch::Sender<u64>,
}

struct Inner {
    seq: u64,
    recent: VecDeque<Event>,
    file: Option<Filed>,
}

/// The file events are appended to.
struct Filed {
    path: PathBuf,
    file: File,
    len: u64,
    rotate_at: u64,
}

impl Filed {
    fn open(path: &Path, rotate_at: u64) -> std::io::Result<Self> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { path: path.to_owned(), file, len, rotate_at })
    }

    /// Appends `line`, first moving a file that would grow past the cap to `<path>.1`.
    fn append(&mut self, line: &[u8]) -> std::io::Result<()> {
        if self.len > 0 && self.len + line.len() as u64 > self.rotate_at {
            let mut old = self.path.as_os_str().to_owned();
            old.push(".1");
            std::fs::rename(&self.path, old)?;
            *self = Self::open(&self.path, self.rotate_at)?;
        }
        self.file.write_all(line)?;
        self.len += line.len() as u64;
        Ok(())
    }
}

impl EventLog {
    /// A log appending to `path` (created if needed), moved to `<path>.1` whenever it would
    /// grow past `rotate_at` bytes; `None` keeps events in memory only.
    pub fn open(path: Option<&Path>, rotate_at: u64) -> std::io::Result<Self> {
        let file = path.map(|p| Filed::open(p, rotate_at)).transpose()?;
        let (latest, _) = watch::channel(0);
        Ok(Self { inner: Mutex::new(Inner { seq: 0, recent: VecDeque::new(), file }), latest })
    }

    /// Records an event and wakes whoever waits for one.
    pub fn emit(&self, kind: Kind, service: Option<&str>, instance: Option<&str>, message: impl Into<String>) -> Event {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        inner.seq += 1;
        let event = Event {
            seq: inner.seq,
            time: kit::time::now_iso(),
            kind,
            service: service.map(str::to_owned),
            instance: instance.map(str::to_owned),
            message: message.into(),
        };
        tracing::debug!(seq = event.seq, kind = kind.as_str(), message = %event.message, "event");
        if let Some(file) = inner.file.as_mut() {
            let mut line = serde_json::to_vec(&event).unwrap_or_default();
            line.push(b'\n');
            if let Err(e) = file.append(&line) {
                tracing::warn!(error = %e, "cannot append to events.jsonl");
            }
        }
        inner.recent.push_back(event.clone());
        if inner.recent.len() > KEEP {
            inner.recent.pop_front();
        }
        let seq = inner.seq;
        drop(inner);
        self.latest.send_replace(seq);
        event
    }

    /// Events after `since`, oldest first, at most `limit`; and the seq to ask from next.
    pub fn since(&self, since: u64, limit: usize) -> (Vec<Event>, u64) {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let events: Vec<Event> = inner.recent.iter().filter(|e| e.seq > since).take(limit).cloned().collect();
        let next = events.last().map_or(since.min(inner.seq), |e| e.seq);
        (events, next)
    }

    /// Like [`since`](Self::since), but waits up to `wait` for at least one event.
    pub async fn wait_since(&self, since: u64, limit: usize, wait: Duration) -> (Vec<Event>, u64) {
        let mut rx = self.latest.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|&latest| latest > since)).await;
        self.since(since, limit)
    }

    /// The latest seq.
    pub fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.latest.subscribe()
    }

    /// The recent events of one instance.
    pub fn of_instance(&self, instance: &str, limit: usize) -> Vec<Event> {
        let inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let mut events: Vec<Event> = inner
            .recent
            .iter()
            .rev()
            .filter(|e| e.instance.as_deref() == Some(instance))
            .take(limit)
            .cloned()
            .collect();
        events.reverse();
        events
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn numbered_filed_and_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = std::sync::Arc::new(EventLog::open(Some(&path), 1 << 20).unwrap());
        log.emit(Kind::Started, Some("web"), Some("web-1"), "web-1 started");
        log.emit(Kind::Ready, Some("web"), Some("web-1"), "web-1 ready");
        let (events, next) = log.since(0, 10);
        assert_eq!(events.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
        assert_eq!(next, 2);
        assert_eq!(log.since(1, 10).0.len(), 1);
        assert_eq!(log.since(0, 1), (vec![events[0].clone()], 1));
        assert_eq!(log.since(2, 10), (vec![], 2));

        // A waiter wakes on the next event.
        let waiter = tokio::spawn({
            let log = log.clone();
            async move { log.wait_since(2, 10, Duration::from_secs(10)).await }
        });
        tokio::task::yield_now().await;
        log.emit(Kind::Exited, Some("web"), Some("web-1"), "web-1 exited (signal SIGKILL)");
        let (events, next) = waiter.await.unwrap();
        assert_eq!((events.len(), next), (1, 3));
        // No event within the wait: empty.
        assert_eq!(log.wait_since(3, 10, Duration::from_millis(20)).await, (vec![], 3));

        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2]["type"], "exited");
        assert_eq!(lines[2]["instance"], "web-1");
        assert_eq!(log.of_instance("web-1", 2).len(), 2);
    }

    #[test]
    fn the_file_is_rotated_at_its_cap_keeping_one_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("events.jsonl");
        let log = EventLog::open(Some(&path), 1000).unwrap();
        for i in 0..100 {
            log.emit(Kind::Started, Some("web"), Some("web-1"), format!("web-1 started ({i})"));
        }
        let size = |p: &Path| std::fs::metadata(p).unwrap().len();
        let old = dir.path().join("events.jsonl.1");
        assert!(size(&path) <= 1000 && size(&old) <= 1000, "{} {}", size(&path), size(&old));
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 2, "one old file is kept");
        let last = std::fs::read_to_string(&path).unwrap();
        assert!(last.lines().last().unwrap().contains("web-1 started (99)"), "{last}");
        // A new log goes on appending to the file it finds.
        drop(log);
        let log = EventLog::open(Some(&path), 1000).unwrap();
        log.emit(Kind::Stopped, None, None, "cluster stopped");
        assert!(std::fs::read_to_string(&path).unwrap().ends_with("\"cluster stopped\"}\n"));
    }
}
