//! The rows of `make bench`: each figure with its unit, its text, its target and how it was
//! measured; rendered as the table printed at the end, as `target/bench/summary.md`, and as
//! `target/bench/summary.json`, whose field names are a contract (`id`, `metric`, `value`,
//! `unit`, `shown`, `target` {`op`, `value`, `text`}, `pass`, `how`, `details`; beside the
//! rows, `machine`, `targetsMet`, `targets`).

use std::fmt::Write as _;
use std::path::PathBuf;
use std::process::Command;

use serde_json::{Map, Value, json};

use crate::table::Table;

/// How a figure is held against its target.
#[derive(Clone, Copy)]
enum Cmp {
    Below,
    AtMost,
    AtLeast,
}

/// A bound a figure must meet, and its text (`< 1 s`).
#[derive(Clone, Copy)]
pub struct Target {
    cmp: Cmp,
    bound: f64,
    text: &'static str,
}

impl Target {
    pub fn below(bound: f64, text: &'static str) -> Option<Self> {
        Some(Self { cmp: Cmp::Below, bound, text })
    }

    pub fn at_most(bound: f64, text: &'static str) -> Option<Self> {
        Some(Self { cmp: Cmp::AtMost, bound, text })
    }

    pub fn at_least(bound: f64, text: &'static str) -> Option<Self> {
        Some(Self { cmp: Cmp::AtLeast, bound, text })
    }

    fn met(&self, value: f64) -> bool {
        match self.cmp {
            Cmp::Below => value < self.bound,
            Cmp::AtMost => value <= self.bound,
            Cmp::AtLeast => value >= self.bound,
        }
    }

    fn op(&self) -> &'static str {
        match self.cmp {
            Cmp::Below => "<",
            Cmp::AtMost => "<=",
            Cmp::AtLeast => ">=",
        }
    }
}

/// One line of the table.
pub struct Row {
    pub id: &'static str,
    pub metric: String,
    /// The figure held against the target (NaN: not measured).
    pub value: f64,
    pub unit: &'static str,
    /// The figure as shown, with its companions (p50, p99, ...).
    pub shown: String,
    pub target: Option<Target>,
    /// How it was measured.
    pub how: String,
    pub details: Map<String, Value>,
}

impl Row {
    pub fn new(id: &'static str, metric: impl Into<String>, value: f64, unit: &'static str) -> Self {
        Self {
            id,
            metric: metric.into(),
            value,
            unit,
            shown: String::new(),
            target: None,
            how: String::new(),
            details: Map::new(),
        }
    }

    pub fn shown(mut self, shown: impl Into<String>) -> Self {
        self.shown = shown.into();
        self
    }

    pub fn target(mut self, target: Option<Target>) -> Self {
        self.target = target;
        self
    }

    pub fn how(mut self, how: impl Into<String>) -> Self {
        self.how = how.into();
        self
    }

    pub fn detail(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.details.insert(key.to_owned(), value.into());
        self
    }

    /// Whether the figure meets its target (None: no target).
    pub fn pass(&self) -> Option<bool> {
        let target = self.target?;
        Some(!self.value.is_nan() && target.met(self.value))
    }

    fn verdict(&self) -> &'static str {
        match self.pass() {
            Some(true) => "pass",
            Some(false) => "MISS",
            None => "",
        }
    }

    pub fn json(&self) -> Value {
        json!({
            "id": self.id,
            "metric": self.metric,
            "value": if self.value.is_nan() { Value::Null } else { json!(self.value) },
            "unit": self.unit,
            "shown": self.shown,
            "target": self.target.map(|t| json!({"op": t.op(), "value": t.bound, "text": t.text})),
            "pass": self.pass(),
            "how": self.how,
            "details": self.details,
        })
    }
}

/// Sorts `rows` by the position of their id in `order` (ids not in it last).
pub fn sort(rows: &mut [Row], order: &[&str]) {
    rows.sort_by_key(|r| order.iter().position(|id| *id == r.id).unwrap_or(order.len()));
}

/// (targets met, targets).
pub fn met(rows: &[Row]) -> (usize, usize) {
    (rows.iter().filter(|r| r.pass() == Some(true)).count(), rows.iter().filter(|r| r.target.is_some()).count())
}

/// `rows` as a [`Table`] built from `table`, `none` in the target column of a row without one.
fn table(table: Table, rows: &[Row], none: &str) -> Table {
    let mut table = table.right("#", 2).left("metric", 6).left("value", 5).left("target", 6).left("result", 6);
    for (n, r) in rows.iter().enumerate() {
        let target = r.target.map_or(none, |t| t.text);
        table.row([(n + 1).to_string(), r.metric.clone(), r.shown.clone(), target.to_owned(), r.verdict().to_owned()]);
    }
    table
}

/// The table of `rows` under `header`, then the count of targets met and how each row was
/// measured.
pub fn text(header: &str, rows: &[Row]) -> String {
    let (passed, targets) = met(rows);
    let mut out = format!("\n{header}\n\n{}", table(Table::new().gap("  ").rule(), rows, "-").text());
    let _ = writeln!(out, "\n{passed} of {targets} targets met. How each row was measured:");
    for (n, r) in rows.iter().enumerate() {
        let _ = writeln!(out, "{:>2}. {}", n + 1, r.how);
    }
    out
}

/// The same as Markdown, for the README.
pub fn markdown(header: &str, rows: &[Row]) -> String {
    let mut md = format!("{header}\n\n{}", table(Table::new(), rows, "").markdown());
    md.push_str("\nHow each row was measured:\n\n");
    for (n, r) in rows.iter().enumerate() {
        let _ = writeln!(md, "{}. {}", n + 1, r.how);
    }
    md
}

/// The summary's JSON: `fields` (what the run was), `machine`, `targetsMet`, `targets` and
/// the `rows`.
pub fn summary(machine: &Value, rows: &[Row], fields: Map<String, Value>) -> Value {
    let (passed, targets) = met(rows);
    let mut summary = fields;
    summary.insert("machine".to_owned(), machine.clone());
    summary.insert("targetsMet".to_owned(), passed.into());
    summary.insert("targets".to_owned(), targets.into());
    summary.insert("rows".to_owned(), rows.iter().map(Row::json).collect());
    Value::Object(summary)
}

/// Writes `target/bench/summary.json` and `summary.md` beside it; returns the JSON's path.
pub fn write(summary: &Value, markdown: &str) -> PathBuf {
    let dir = target_dir().join("bench");
    std::fs::create_dir_all(&dir).expect("creating target/bench");
    let json_path = dir.join("summary.json");
    std::fs::write(&json_path, serde_json::to_string_pretty(summary).expect("JSON") + "\n")
        .expect("writing summary.json");
    std::fs::write(dir.join("summary.md"), markdown).expect("writing summary.md");
    json_path
}

/// `target/`, from the benchmark's own path (`target/release/deps/<bench>-...`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the benchmark has a path");
    exe.ancestors().nth(3).expect("target/<profile>/deps/<exe>").to_owned()
}

/// The machine the figures come from: CPU, cores, memory, kernel, OS, date, load average
/// and the commit measured.
pub fn machine() -> Value {
    let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
    let cpuinfo = read("/proc/cpuinfo");
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name")?.split_once(':').map(|(_, v)| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown CPU".to_owned());
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:")?.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let os = read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME=").map(|v| v.trim_matches('"').to_owned()))
        .unwrap_or_default();
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
    };
    let commit = git(&["rev-parse", "--short", "HEAD"]).unwrap_or_else(|| "unknown".to_owned());
    let dirty = git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    json!({
        "cpu": cpu,
        "cores": std::thread::available_parallelism().map_or(0, |n| n.get()),
        "memory": format!("{:.1} GiB", mem_kib as f64 / 1024.0 / 1024.0),
        "memoryKiB": mem_kib,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "os": os,
        "date": kit::time::now_iso(),
        // other work on the machine while the benchmark starts (1, 5, 15 minutes)
        "loadAverage": read("/proc/loadavg").split_whitespace().take(3).collect::<Vec<_>>().join(" "),
        "commit": if dirty { format!("{commit} (with uncommitted changes)") } else { commit },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<Row> {
        vec![
            Row::new("b", "second", 3.0, "ms").shown("3.00 ms").target(Target::below(1.0, "< 1 ms")).how("by b"),
            Row::new("a", "first metric", 0.5, "ms").shown("0.50 ms").target(Target::below(1.0, "< 1 ms")).how("by a"),
            Row::new("c", "third", f64::NAN, "x").shown("n/a").how("by c").detail("k", 1),
        ]
    }

    #[test]
    fn the_table_shows_each_verdict_and_how() {
        let mut rows = rows();
        sort(&mut rows, &["a", "b"]);
        let text = text("head", &rows);
        let expected = "\nhead\n\n \
             #  metric        value    target  result\n\
             -----------------------------------------\n \
             1  first metric  0.50 ms  < 1 ms  pass\n \
             2  second        3.00 ms  < 1 ms  MISS\n \
             3  third         n/a      -       \n\
             \n1 of 2 targets met. How each row was measured:\n \
             1. by a\n 2. by b\n 3. by c\n";
        assert_eq!(text, expected);
    }

    #[test]
    fn markdown_leaves_a_missing_target_empty() {
        let md = markdown("head", &rows()[2..]);
        assert_eq!(
            md,
            "head\n\n| # | metric | value | target | result |\n| ---: | --- | --- | --- | --- |\n\
             | 1 | third | n/a |  |  |\n\nHow each row was measured:\n\n1. by c\n"
        );
    }

    #[test]
    fn the_summary_keeps_its_field_names() {
        let mut fields = Map::new();
        fields.insert("wrkSeconds".to_owned(), 5.into());
        let s = summary(&json!({"cores": 2}), &rows(), fields);
        assert_eq!(s["wrkSeconds"], 5);
        assert_eq!(s["machine"]["cores"], 2);
        assert_eq!((s["targetsMet"].as_u64(), s["targets"].as_u64()), (Some(1), Some(2)));
        let first = &s["rows"][0];
        let keys: Vec<&str> = first.as_object().unwrap().keys().map(String::as_str).collect();
        assert_eq!(keys, ["details", "how", "id", "metric", "pass", "shown", "target", "unit", "value"]);
        assert_eq!(first["target"], json!({"op": "<", "value": 1.0, "text": "< 1 ms"}));
        assert_eq!((first["pass"].clone(), first["value"].clone()), (json!(false), json!(3.0)));
        assert_eq!((s["rows"][2]["value"].clone(), s["rows"][2]["pass"].clone()), (Value::Null, Value::Null));
    }
}
