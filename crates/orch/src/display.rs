//! The console of a foreground `orch apply`: a progress display until every instance is
//! ready, then the live event log. On a terminal the progress is one line redrawn in
//! place (failures still print above it); otherwise every event is a plain line.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::controller::Progress;
use crate::events::{EventLog, Kind};

pub struct Header {
    pub name: String,
    pub manifest: PathBuf,
    pub data_dir: PathBuf,
    pub control_url: String,
}

/// Events that show even while the progress line is drawn.
fn is_trouble(kind: Kind) -> bool {
    matches!(kind, Kind::Exited | Kind::Crashloop | Kind::LivenessFailed | Kind::ManifestRejected | Kind::NotReady)
}

pub async fn run(header: Header, events: Arc<EventLog>, mut progress: watch::Receiver<Progress>, terminal: bool) {
    let started = Instant::now();
    let mut out = std::io::stdout();
    let _ = writeln!(
        out,
        "orch: cluster {:?} from {}\n  control API {}  (other terminals: export ORCH_CONTROL_URL={})\n  data dir    {}",
        header.name,
        header.manifest.display(),
        header.control_url,
        header.control_url,
        header.data_dir.display()
    );
    let mut seen = 0u64;
    let mut all_ready = false;
    let mut latest = events.subscribe();
    let mut redraw = tokio::time::interval(Duration::from_millis(100));
    loop {
        let p = *progress.borrow_and_update();
        let (batch, next) = events.since(seen, 1000);
        seen = next;
        for event in &batch {
            if all_ready || !terminal || is_trouble(event.kind) {
                let _ = writeln!(out, "{}{}", if terminal { "\r\x1b[2K" } else { "" }, event.line());
            }
        }
        if !all_ready && p.total == 0 && !p.stopping {
            all_ready = true;
            let _ = writeln!(out, "nothing to run: every service has 0 replicas; events follow");
        } else if !all_ready && p.total > 0 && p.ready == p.total {
            all_ready = true;
            let clear = if terminal { "\r\x1b[2K" } else { "" };
            let _ = writeln!(
                out,
                "{clear}all {} instances ready in {:.2} s; events follow (Ctrl-C stops the cluster)",
                p.total,
                started.elapsed().as_secs_f64()
            );
        } else if !all_ready && terminal && !p.stopping {
            let _ = write!(
                out,
                "\r\x1b[2K  starting: {}/{} ready  {:.1} s",
                p.ready,
                p.total,
                started.elapsed().as_secs_f64()
            );
        }
        let _ = out.flush();
        if batch.iter().any(|e| e.kind == Kind::Stopped && e.instance.is_none() && e.message == "cluster stopped") {
            if terminal && !all_ready {
                let _ = writeln!(out);
            }
            return;
        }
        tokio::select! {
            changed = progress.changed() => if changed.is_err() && events.latest() == seen { return },
            _ = latest.changed() => {}
            _ = redraw.tick(), if terminal && !all_ready => {}
        }
    }
}
