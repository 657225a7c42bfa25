//! Load from `wrk` (one thread unless told, a fixed number of keep-alive connections), for the
//! benchmarks: a run and its figures parsed from wrk's report, and the Lua scripts that
//! shape its requests.
//!
//! ```no_run
//! use std::time::Duration;
//! use e2e::wrk::{Script, Wrk};
//! let dir = tempfile::tempdir().unwrap();
//! let script = Script::new("POST", "/api/data")
//!     .header("authorization", "Bearer TOKEN")
//!     .body(r#"{"key":"k-{n}","value":1}"#)
//!     .write(dir.path(), "writes");
//! let run = Wrk::new("http://127.0.0.1:3000").connections(16).duration(Duration::from_secs(5)).script(&script).run();
//! println!("{:.0} answers/s with a 2xx", run.ok_per_second());
//! ```

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// One wrk invocation: `wrk -tT -cN -dS --latency [-s script] URL` (`T` is 1 unless set).
#[derive(Clone, Debug)]
pub struct Wrk {
    url: String,
    threads: u32,
    connections: u32,
    duration: Duration,
    script: Option<PathBuf>,
}

impl Wrk {
    /// Load on `url` (`http://host:port/path`; a script may send other paths).
    pub fn new(url: &str) -> Self {
        Self { url: url.to_owned(), threads: 1, connections: 16, duration: Duration::from_secs(5), script: None }
    }

    /// wrk's load threads (`-t`), at least one and at most the connections.
    pub fn threads(mut self, threads: u32) -> Self {
        self.threads = threads.max(1);
        self
    }

    pub fn connections(mut self, connections: u32) -> Self {
        self.connections = connections.max(1);
        self
    }

    /// Whole seconds (wrk's resolution), at least one.
    pub fn duration(mut self, duration: Duration) -> Self {
        self.duration = duration.max(Duration::from_secs(1));
        self
    }

    pub fn script(mut self, path: &Path) -> Self {
        self.script = Some(path.to_owned());
        self
    }

    /// Runs wrk to the end; a wrk that cannot run or reports nothing is a panic.
    pub fn run(&self) -> Run {
        let mut cmd = Command::new("wrk");
        cmd.args([
            format!("-t{}", self.threads.min(self.connections)),
            format!("-c{}", self.connections),
            format!("-d{}s", self.duration.as_secs()),
            "--latency".to_owned(),
        ]);
        if let Some(script) = &self.script {
            cmd.arg("-s").arg(script);
        }
        cmd.arg(&self.url);
        let out = cmd.output().unwrap_or_else(|e| panic!("running wrk (is it installed?): {e}"));
        let text = String::from_utf8_lossy(&out.stdout);
        Run::parse(&text).unwrap_or_else(|| {
            panic!("wrk against {} reported nothing:\n{text}\n{}", self.url, String::from_utf8_lossy(&out.stderr))
        })
    }
}

/// What one wrk run reports.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Run {
    /// Requests answered (whatever the status).
    pub requests: u64,
    /// The run's length as wrk measured it.
    pub seconds: f64,
    /// wrk's `Requests/sec`: answers of any status per second.
    pub per_second: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    /// Answers with a status other than 2xx or 3xx.
    pub non_2xx: u64,
    /// Connect, read, write errors and timeouts.
    pub socket_errors: u64,
}

impl Run {
    /// Answers with a 2xx or 3xx per second.
    pub fn ok_per_second(&self) -> f64 {
        if self.seconds <= 0.0 { 0.0 } else { self.requests.saturating_sub(self.non_2xx) as f64 / self.seconds }
    }

    /// Requests that did not get a 2xx/3xx or failed on the socket.
    pub fn errors(&self) -> u64 {
        self.non_2xx + self.socket_errors
    }

    /// Parses wrk's report (`--latency`); `None` when it has no request count.
    pub fn parse(text: &str) -> Option<Self> {
        let field = |prefix: &str| -> Option<&str> {
            text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).map(str::trim)
        };
        // "12345 requests in 5.00s, 1.23MB read"
        let (requests, seconds) = text.lines().map(str::trim).find_map(|l| {
            let (n, rest) = l.split_once(" requests in ")?;
            let secs = rest.split(',').next()?;
            Some((n.parse::<u64>().ok()?, millis(secs)? / 1000.0))
        })?;
        // "Socket errors: connect 0, read 2, write 0, timeout 1"
        let socket_errors = field("Socket errors:").map_or(0, |list| {
            list.split(',').filter_map(|part| part.split_whitespace().nth(1)?.parse::<u64>().ok()).sum()
        });
        let latency = |p: &str| field(p).and_then(millis).unwrap_or(f64::NAN);
        Some(Self {
            requests,
            seconds,
            per_second: field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0),
            p50_ms: latency("50%"),
            p90_ms: latency("90%"),
            p99_ms: latency("99%"),
            non_2xx: field("Non-2xx or 3xx responses:").and_then(|v| v.parse().ok()).unwrap_or(0),
            socket_errors,
        })
    }
}

/// wrk's `123.45us`, `1.23ms`, `1.02s`, `2.00m` in milliseconds.
pub fn millis(value: &str) -> Option<f64> {
    let value = value.trim();
    let (number, scale) = if let Some(v) = value.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = value.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = value.strip_suffix('s') {
        (v, 1000.0)
    } else if let Some(v) = value.strip_suffix('m') {
        (v, 60_000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * scale)
}

/// A wrk Lua script sending one kind of request. In the path and the body, `{n}` is the
/// request's number (1, 2, ...; with [`cycle`](Script::cycle), 0 to k-1 over and over), so
/// each request can name its own key. With one wrk thread the numbers are unique.
#[derive(Clone, Debug)]
pub struct Script {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Option<String>,
    cycle: Option<u64>,
    delay_ms: Option<u64>,
}

impl Script {
    pub fn new(method: &str, path: &str) -> Self {
        Self {
            method: method.to_owned(),
            path: path.to_owned(),
            headers: Vec::new(),
            body: None,
            cycle: None,
            delay_ms: None,
        }
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A JSON body (the content type is set).
    pub fn body(mut self, body: &str) -> Self {
        self.body = Some(body.to_owned());
        self.header("content-type", "application/json")
    }

    /// `{n}` runs from 0 to `k - 1`, then again.
    pub fn cycle(mut self, k: u64) -> Self {
        self.cycle = Some(k.max(1));
        self
    }

    /// Each connection pauses this long after an answer before its next request (wrk's
    /// `delay()`): a moderate, paced load instead of as fast as possible.
    pub fn delay(mut self, ms: u64) -> Self {
        self.delay_ms = Some(ms);
        self
    }

    /// The Lua text.
    pub fn lua(&self) -> String {
        // Cycling numbers start at 0, the others at 1.
        let first = u64::from(self.cycle.is_none());
        let mut lua = format!("local n = {first}\nlocal headers = {{}}\n");
        for (name, value) in &self.headers {
            let _ = writeln!(lua, "headers[{}] = {}", lua_string(name), lua_string(value));
        }
        let number = match self.cycle {
            Some(k) => format!("(n % {k})"),
            None => "n".to_owned(),
        };
        let expr = |template: &str| {
            template.split("{n}").map(lua_string).collect::<Vec<_>>().join(&format!(" .. {number} .. "))
        };
        let body = self.body.as_deref().map_or("nil".to_owned(), expr);
        let _ = write!(
            lua,
            "request = function()\n  local r = wrk.format({}, {}, headers, {body})\n  n = n + 1\n  return r\nend\n",
            lua_string(&self.method),
            expr(&self.path),
        );
        if let Some(ms) = self.delay_ms {
            let _ = write!(lua, "delay = function()\n  return {ms}\nend\n");
        }
        lua
    }

    /// Writes the script as `dir/name.lua`; returns its path.
    pub fn write(&self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(format!("{name}.lua"));
        std::fs::write(&path, self.lua()).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        path
    }
}

/// A Lua string literal of `s`.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\{:03}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const REPORT: &str = "Running 5s test @ http://127.0.0.1:3000/api/data/health
  1 threads and 64 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency     2.91ms    1.02ms  27.53ms   88.10%
    Req/Sec    22.18k     1.10k   24.01k    78.00%
  Latency Distribution
     50%    2.75ms
     75%    3.10ms
     90%    3.70ms
     99%    6.31ms
  110368 requests in 5.00s, 25.58MB read
  Socket errors: connect 0, read 2, write 0, timeout 1
  Non-2xx or 3xx responses: 10
Requests/sec:  22070.63
Transfer/sec:      5.11MB
";

    #[test]
    fn a_report_is_parsed() {
        let run = Run::parse(REPORT).unwrap();
        assert_eq!(run.requests, 110_368);
        assert_eq!(run.seconds, 5.0);
        assert_eq!(run.per_second, 22_070.63);
        assert_eq!((run.p50_ms, run.p90_ms, run.p99_ms), (2.75, 3.7, 6.31));
        assert_eq!((run.non_2xx, run.socket_errors, run.errors()), (10, 3, 13));
        assert!((run.ok_per_second() - 110_358.0 / 5.0).abs() < 1e-9);
        assert_eq!(Run::parse("unable to connect to 127.0.0.1:1 Connection refused"), None);
    }

    #[test]
    fn durations_in_milliseconds() {
        assert_eq!(millis("250.00us"), Some(0.25));
        assert_eq!(millis("1.5ms"), Some(1.5));
        assert_eq!(millis("2.00s"), Some(2000.0));
        assert_eq!(millis("1.00m"), Some(60_000.0));
        assert_eq!(millis("fast"), None);
    }

    #[test]
    fn scripts_number_their_requests_and_escape_text() {
        let lua =
            Script::new("POST", "/api/data").header("authorization", "Bearer a\"b").body(r#"{"key":"w-{n}"}"#).lua();
        assert!(lua.starts_with("local n = 1\n"), "{lua}");
        assert!(lua.contains(r#"headers["authorization"] = "Bearer a\"b""#), "{lua}");
        assert!(lua.contains(r#"headers["content-type"] = "application/json""#), "{lua}");
        assert!(lua.contains(r#"wrk.format("POST", "/api/data", headers, "{\"key\":\"w-" .. n .. "\"}")"#), "{lua}");
        assert!(!lua.contains("delay"), "{lua}");

        let lua = Script::new("GET", "/api/data/r-{n}").cycle(100).delay(2).lua();
        assert!(lua.starts_with("local n = 0\n"), "{lua}");
        assert!(lua.contains(r#"wrk.format("GET", "/api/data/r-" .. (n % 100) .. "", headers, nil)"#), "{lua}");
        assert!(lua.contains("delay = function()\n  return 2\nend"), "{lua}");
    }
}
