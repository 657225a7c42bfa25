//! What a verify run shows: the summary printed (operations by function and outcome, the
//! faults with their times, each check's verdict and, when invalid, the counterexample's
//! operations), and the files of `--out`: `history.jsonl`, `results.json` and
//! `timeline.html`, a self-contained page with one SVG timeline per key.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use super::checker::Verdict;
use super::checks::{JobsReport, KeyReport};
use super::history::{Event, F, History, Kind};

/// Everything a run found.
pub struct Outcome<'a> {
    pub history: &'a History,
    pub keys: &'a [KeyReport],
    pub jobs: Option<&'a JobsReport>,
    pub verdict: Verdict,
}

fn secs(micros: u64) -> String {
    format!("{:.3}s", micros as f64 / 1e6)
}

/// One operation, as a line of a counterexample.
fn describe(inv: &Event, done: Option<&Event>) -> String {
    let mut line = format!("op {} process {} {} {}", inv.op, inv.process, inv.f.as_str(), inv.key);
    if let Some(v) = inv.version {
        let _ = write!(line, " if-version {v}");
    }
    if let Some(v) = &inv.value {
        let _ = write!(line, " value {v}");
    }
    let _ = write!(line, " | called {}", secs(inv.time));
    match done {
        Some(d) => {
            let _ = write!(line, ", {} at {}", kind_str(d.kind), secs(d.time));
            if let (F::Read, Some(v)) = (d.f, &d.value) {
                let _ = write!(line, " read {v}");
            }
            if let Some(v) = d.version {
                let _ = write!(line, " version {v}");
            }
            if let Some(i) = &d.instance {
                let _ = write!(line, " from {i}");
            }
            if let Some(e) = &d.error {
                let _ = write!(line, " ({e})");
            }
        }
        None => line.push_str(", no answer before the end"),
    }
    line
}

fn kind_str(kind: Kind) -> &'static str {
    match kind {
        Kind::Invoke => "invoke",
        Kind::Ok => "ok",
        Kind::Fail => "fail",
        Kind::Info => "info",
    }
}

/// The summary printed at the end of a run.
pub fn summary(o: &Outcome<'_>) -> String {
    let ops = o.history.operations();
    let mut counts: BTreeMap<F, [usize; 3]> = BTreeMap::new();
    for (inv, done) in &ops {
        let slot = match done.map(|d| d.kind) {
            Some(Kind::Ok) => 0,
            Some(Kind::Fail) => 1,
            _ => 2,
        };
        counts.entry(inv.f).or_default()[slot] += 1;
    }
    let rows: Vec<Vec<String>> = counts
        .iter()
        .map(|(f, [ok, fail, info])| {
            vec![
                f.as_str().to_owned(),
                ok.to_string(),
                fail.to_string(),
                info.to_string(),
                (ok + fail + info).to_string(),
            ]
        })
        .collect();
    let mut out = crate::cli::table(&["OPERATION", "OK", "FAIL", "UNKNOWN", "TOTAL"], &rows);
    out.push('\n');
    if o.history.faults.is_empty() {
        out.push_str("faults: none\n");
    } else {
        let rows: Vec<Vec<String>> = o
            .history
            .faults
            .iter()
            .map(|f| vec![secs(f.start), secs(f.end), f.action.clone(), f.description.clone()])
            .collect();
        out.push_str(&crate::cli::table(&["FROM", "TO", "FAULT", "WHAT"], &rows));
        if o.history.faults.iter().all(|f| f.description.starts_with("not injected")) {
            out.push_str("warning: no fault was injected: the verdict is of a cluster left alone\n");
        }
    }
    out.push('\n');
    let by_op: HashMap<u64, (&Event, Option<&Event>)> = ops.iter().map(|&(i, d)| (i.op, (i, d))).collect();
    if !o.keys.is_empty() {
        let rows: Vec<Vec<String>> = o
            .keys
            .iter()
            .map(|k| {
                vec![
                    k.key.clone(),
                    k.checked.ops.to_string(),
                    k.checked.explored.to_string(),
                    k.checked.verdict.as_str().to_owned(),
                ]
            })
            .collect();
        out.push_str(&crate::cli::table(&["KEY", "OPS", "EXPLORED", "LINEARIZABLE"], &rows));
    }
    for k in o.keys {
        if let Some(why) = &k.checked.why {
            let _ = writeln!(out, "{}: {why}", k.key);
        }
        if let Some(cx) = &k.checked.counterexample {
            let _ = writeln!(
                out,
                "\ncounterexample on {}: after {} linearized operations the register is at version {}; no order explains the first of these",
                k.key, cx.linearized, cx.state.version
            );
            for id in std::iter::once(&cx.stuck).chain(&cx.concurrent) {
                if let Some((inv, done)) = by_op.get(id) {
                    let _ = writeln!(out, "  {}", describe(inv, *done));
                }
            }
        }
    }
    if let Some(j) = o.jobs {
        let _ = writeln!(
            out,
            "\njobs: {} acknowledged, {} completed with the right result, {} idempotent resubmits answered with the same id: {}",
            j.acknowledged,
            j.completed,
            j.resubmits_same_id,
            j.verdict.unwrap_or(Verdict::Valid).as_str()
        );
        for p in j.problems.iter().chain(&j.open).take(10) {
            let _ = writeln!(out, "  {p}");
        }
    }
    let _ = writeln!(out, "\nverdict: {}", o.verdict.as_str());
    out
}

/// Writes `history.jsonl`, `results.json` and `timeline.html` into `dir`.
pub fn write(dir: &Path, o: &Outcome<'_>, about: &serde_json::Value) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let mut file = std::io::BufWriter::new(std::fs::File::create(dir.join("history.jsonl"))?);
    o.history.write_jsonl(&mut file)?;
    std::io::Write::flush(&mut file)?;
    let results = serde_json::json!({
        "run": about,
        "verdict": o.verdict,
        "registers": o.keys,
        "jobs": o.jobs,
        "faults": o.history.faults,
    });
    std::fs::write(dir.join("results.json"), serde_json::to_vec_pretty(&results).unwrap_or_default())?;
    std::fs::write(dir.join("timeline.html"), timeline(o))
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

const WIDTH: f64 = 1200.0;
const LANE: f64 = 10.0;
const LEFT: f64 = 70.0;

/// The timeline page: per key, one lane per client, each operation a bar from its call to
/// its completion (unknown ones run to the end, hatched), coloured by function, faded when
/// failed; the counterexample's operations outlined in red; fault windows as bands.
pub fn timeline(o: &Outcome<'_>) -> String {
    let ops = o.history.operations();
    let end = ops
        .iter()
        .map(|(i, d)| d.map_or(i.time, |d| d.time))
        .chain(o.history.faults.iter().map(|f| f.end))
        .max()
        .unwrap_or(1)
        .max(1);
    let x = |t: u64| LEFT + t as f64 / end as f64 * WIDTH;
    let mut groups: BTreeMap<&str, Vec<(&Event, Option<&Event>)>> = BTreeMap::new();
    for &(inv, done) in &ops {
        // Jobs have a key each: they share one timeline.
        let group = if matches!(inv.f, F::Submit | F::Poll) { "jobs" } else { inv.key.as_str() };
        groups.entry(group).or_default().push((inv, done));
    }
    let marked: HashMap<&str, Vec<u64>> = o
        .keys
        .iter()
        .filter_map(|k| {
            let cx = k.checked.counterexample.as_ref()?;
            Some((k.key.as_str(), std::iter::once(cx.stuck).chain(cx.concurrent.iter().copied()).collect()))
        })
        .collect();
    let mut page = String::from(
        "<!doctype html><meta charset=utf-8><title>orch verify: timeline</title>\n<style>body{font:13px sans-serif;margin:16px}\
         h2{font-size:14px;margin:18px 0 4px}svg text{font:10px sans-serif}</style>\n",
    );
    let _ = writeln!(
        page,
        "<h1>orch verify: {}</h1><p>One lane per client; a bar from an operation's call to its answer. \
         <b style=color:#3572b0>read</b>, <b style=color:#2e9e5b>write</b>, <b style=color:#e08a1e>cas</b>, \
         <b style=color:#8a5cc7>job</b>; faded: failed; hatched to the end: unknown outcome; red outline: the \
         counterexample; red bands: fault windows. Hover for details.</p>",
        o.verdict.as_str()
    );
    page.push_str("<svg width=0 height=0><defs><pattern id=h width=4 height=4 patternUnits=userSpaceOnUse><path d='M0 4L4 0' stroke=#999/></pattern></defs></svg>\n");
    for (key, ops) in groups {
        let mut lanes: Vec<u32> = ops.iter().map(|(i, _)| i.process).collect();
        lanes.sort_unstable();
        lanes.dedup();
        let height = LANE * lanes.len() as f64 + 20.0;
        let verdict = o.keys.iter().find(|k| k.key == key).map(|k| k.checked.verdict.as_str()).unwrap_or("");
        let _ = writeln!(page, "<h2>{} {}</h2>", escape(key), verdict);
        let _ = writeln!(page, "<svg width={} height={height}>", WIDTH + LEFT + 10.0);
        for f in &o.history.faults {
            let (a, b) = (x(f.start), x(f.end).max(x(f.start) + 2.0));
            let _ = writeln!(
                page,
                "<rect x={a:.1} y=0 width={:.1} height={height} fill=#e33 opacity=.15><title>{} {}: {} ({}–{})</title></rect>",
                b - a,
                escape(&f.action),
                escape(&f.target),
                escape(&f.description),
                secs(f.start),
                secs(f.end)
            );
        }
        for (n, p) in lanes.iter().enumerate() {
            let name = if *p == u32::MAX { "after".to_owned() } else { format!("c{p}") };
            let _ = writeln!(page, "<text x=2 y={:.1}>{name}</text>", LANE * n as f64 + 9.0);
        }
        let red = marked.get(key);
        for (inv, done) in ops {
            let lane = lanes.binary_search(&inv.process).unwrap_or(0);
            let y = LANE * lane as f64 + 1.0;
            let (to, fill) = match done {
                Some(d) if d.kind != Kind::Info => (d.time, colour(inv.f)),
                _ => (end, "url(#h)"),
            };
            let opacity = if done.is_some_and(|d| d.kind == Kind::Fail) { 0.35 } else { 0.9 };
            let stroke = if red.is_some_and(|r| r.contains(&inv.op)) { " stroke=#d00 stroke-width=2" } else { "" };
            let _ = writeln!(
                page,
                "<rect x={:.1} y={y:.1} width={:.1} height={} fill={fill} opacity={opacity}{stroke}><title>{}</title></rect>",
                x(inv.time),
                (x(to) - x(inv.time)).max(1.0),
                LANE - 2.0,
                escape(&describe(inv, done))
            );
        }
        let axis = LANE * lanes.len() as f64 + 14.0;
        for i in 0..=10 {
            let t = end / 10 * i;
            let _ = writeln!(page, "<text x={:.1} y={axis}>{}</text>", x(t), secs(t));
        }
        page.push_str("</svg>\n");
    }
    page
}

fn colour(f: F) -> &'static str {
    match f {
        F::Read => "#3572b0",
        F::Write => "#2e9e5b",
        F::Cas => "#e08a1e",
        F::Submit | F::Poll => "#8a5cc7",
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::verify::checker::Bound;
    use crate::verify::checks;
    use crate::verify::history::Fault;

    #[test]
    fn an_invalid_run_shows_its_counterexample_in_the_summary_and_the_timeline() {
        // A write acknowledged at version 2, then a read of the initial value: stale.
        let mut w = Event::invoke(1, 0, F::Write, "k", 0);
        w.value = Some("\"<new>\"".into());
        let mut w_ok = w.complete(Kind::Ok, 10);
        w_ok.version = Some(2);
        w_ok.instance = Some("data-1".into());
        let r = Event::invoke(2, 1, F::Read, "k", 20);
        let mut r_ok = r.complete(Kind::Ok, 30);
        r_ok.version = Some(1);
        r_ok.value = Some("\"old\"".into());
        r_ok.instance = Some("data-2".into());
        let fault = Fault {
            action: "kill".into(),
            target: "data".into(),
            start: 5,
            end: 5,
            description: "killed data-1".into(),
        };
        let history = History { events: vec![w, w_ok, r, r_ok], faults: vec![fault] };
        let initial = BTreeMap::from([("k".to_owned(), (1, "\"old\"".to_owned()))]);
        let keys = checks::registers(&history, &initial, Bound::default());
        let outcome = Outcome { history: &history, keys: &keys, jobs: None, verdict: Verdict::Invalid };
        let text = summary(&outcome);
        assert!(text.contains("counterexample on k: after 1 linearized operations"), "{text}");
        assert!(
            text.contains("op 2 process 1 read k | called 0.000s, ok at 0.000s read \"old\" version 1 from data-2"),
            "{text}"
        );
        assert!(text.contains("killed data-1"), "{text}");
        assert!(text.ends_with("verdict: invalid\n"), "{text}");
        let page = timeline(&outcome);
        assert!(page.contains("stroke=#d00"), "the stuck read is outlined");
        assert!(page.contains("&quot;&lt;new&gt;&quot;"), "values are escaped");
        assert!(!page.contains("\"<new>\""));
        assert_eq!(page.matches("<svg width=1280").count(), 1, "one chart for the one key");
    }
}
