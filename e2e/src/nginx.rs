//! nginx as the yardstick for the balancer: an nginx in front of given backends (a child
//! process from a config in a temp dir, ended by its PID), and [`compare`], the one protocol
//! both the balancer's benchmark and the cluster benchmark use to set the balancer against
//! it with wrk.
//!
//! The protocol: both proxies warmed up (2 s each), then `rounds` throughput rounds of
//! `secs` seconds at `connections` keep-alive connections, alternating balancer and nginx so
//! a passing disturbance on the machine hits both alike, the median round of each reported
//! with the proxy's CPU time per request (user + system, from `/proc`, which other programs
//! on the machine disturb less than requests per second). Then moderate load: 8 connections,
//! each pausing 2 ms between requests, against one backend directly and through each proxy;
//! the added p99 is the proxy's p99 minus the direct one.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::procfs;
use crate::wrk::{Run, Script, Wrk};

/// Whether `program` is on the PATH (or in /usr/sbin, where Debian puts nginx).
pub fn have(program: &str) -> bool {
    let on_path = std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()));
    on_path || Path::new("/usr/sbin").join(program).is_file()
}

/// nginx and wrk are there, installed with apt-get (quietly) when missing and possible.
pub fn ensure_tools() -> bool {
    if have("nginx") && have("wrk") {
        return true;
    }
    println!("installing nginx and wrk with apt-get ...");
    let quiet = |args: &[&str]| {
        Command::new("apt-get")
            .args(args)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
    };
    let _ = quiet(&["update", "-qq"]);
    let _ = quiet(&["install", "-y", "-qq", "--no-install-recommends", "nginx", "wrk"]);
    have("nginx") && have("wrk")
}

/// An nginx proxying every path to `upstreams`, round-robin over keep-alive connections.
pub struct Nginx {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// Starts nginx with `worker_processes workers`, `upstream` round-robin over `upstreams`
    /// with `keepalive 64`, access log off, on a free port of 127.0.0.1; returns once it
    /// accepts connections.
    pub fn start(upstreams: &[SocketAddr], workers: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for nginx");
        let port = free_port();
        let servers: String = upstreams.iter().map(|a| format!("    server {a};\n")).collect();
        let conf = format!(
            "worker_processes {workers};\n\
             daemon off;\n\
             pid {dir}/nginx.pid;\n\
             error_log {dir}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
               access_log off;\n\
               client_body_temp_path {dir}/body;\n\
               proxy_temp_path {dir}/proxy;\n\
               fastcgi_temp_path {dir}/fastcgi;\n\
               uwsgi_temp_path {dir}/uwsgi;\n\
               scgi_temp_path {dir}/scgi;\n\
               upstream backends {{\n{servers}    keepalive 64;\n  }}\n\
               server {{\n\
                 listen 127.0.0.1:{port};\n\
                 location / {{\n\
                   proxy_pass http://backends;\n\
                   proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n\
                 }}\n\
               }}\n\
             }}\n",
            dir = dir.path().display()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).expect("writing nginx.conf");
        let (prefix, log) = (dir.path().as_os_str(), dir.path().join("error.log"));
        let child = spawn(
            "nginx",
            &[OsStr::new("-p"), prefix, OsStr::new("-c"), path.as_os_str(), OsStr::new("-e"), log.as_os_str()],
        );
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let nginx = Self { child, addr, _dir: dir };
        wait_listening(addr, "nginx");
        nginx
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (clock ticks) of the master process and its workers.
    pub fn cpu_ticks(&self) -> u64 {
        let pid = self.pid();
        procfs::cpu_ticks(pid) + procfs::children(pid).into_iter().map(procfs::cpu_ticks).sum::<u64>()
    }
}

impl Drop for Nginx {
    /// SIGQUIT (a graceful stop) to the master by its PID, SIGKILL if it lingers; reaped.
    fn drop(&mut self) {
        stop(&mut self.child, Signal::SIGQUIT);
    }
}

/// Starts `program` (from /usr/sbin when it is there, where Debian puts it, else from the
/// PATH) with `args`, its output but for errors dropped.
pub(crate) fn spawn(program: &str, args: &[&OsStr]) -> Child {
    let sbin = Path::new("/usr/sbin").join(program);
    let binary = if sbin.exists() { sbin.into_os_string() } else { program.into() };
    Command::new(binary)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {program}: {e}"))
}

/// A port of 127.0.0.1 free right now, for a yardstick proxy's config.
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// Waits (5 s at most) until `what` accepts connections on `addr`.
pub(crate) fn wait_listening(addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{what} does not listen on {addr}");
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Sends `signal` to `child` by its PID, SIGKILL if it lingers past 2 s; reaped.
pub(crate) fn stop(child: &mut Child, signal: Signal) {
    let _ = kill(Pid::from_raw(child.id() as i32), signal);
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The balancer and nginx side by side (see the module docs for the protocol).
pub struct Setup<'a> {
    pub balancer: SocketAddr,
    /// The balancer's CPU time so far, in clock ticks.
    pub balancer_cpu: &'a dyn Fn() -> u64,
    pub nginx: &'a Nginx,
    /// One of the backends, for the direct baseline at moderate load.
    pub direct: SocketAddr,
    /// The path every request asks for.
    pub path: &'a str,
    /// Connections of the throughput rounds.
    pub connections: u32,
    pub secs: u64,
    pub rounds: usize,
    /// Told what runs next.
    pub progress: &'a dyn Fn(&str),
}

/// A throughput round and the proxy's CPU time per request during it.
#[derive(Clone, Debug)]
pub struct Round {
    pub run: Run,
    /// Microseconds of CPU (user + system) per request; NaN when nothing was answered.
    pub cpu_us: f64,
}

/// What [`compare`] measured.
#[derive(Clone, Debug)]
pub struct Comparison {
    /// The median throughput round of each.
    pub balancer: Round,
    pub nginx: Round,
    pub direct_moderate: Run,
    pub balancer_moderate: Run,
    pub nginx_moderate: Run,
    /// How the moderate load was paced: connections and pause.
    pub moderate: (u32, u64),
}

impl Comparison {
    /// Balancer requests/s over nginx's.
    pub fn ratio(&self) -> f64 {
        self.balancer.run.per_second / self.nginx.run.per_second
    }

    /// p99 through the balancer minus p99 direct, at moderate load.
    pub fn balancer_added_p99_ms(&self) -> f64 {
        self.balancer_moderate.p99_ms - self.direct_moderate.p99_ms
    }

    pub fn nginx_added_p99_ms(&self) -> f64 {
        self.nginx_moderate.p99_ms - self.direct_moderate.p99_ms
    }
}

/// Runs the comparison: a few seconds of warm-up, `rounds × 2 × secs` of throughput, three
/// moderate runs of `min(secs, 5)` seconds.
pub fn compare(setup: &Setup<'_>) -> Comparison {
    const MODERATE: (u32, u64) = (8, 2);
    let url = |addr: SocketAddr| format!("http://{addr}{}", setup.path);
    let secs = Duration::from_secs(setup.secs);
    let nginx_cpu = || setup.nginx.cpu_ticks();
    let round = |addr: SocketAddr, cpu: &dyn Fn() -> u64| round(&url(addr), setup.connections, 1, secs, cpu);

    (setup.progress)("warming up both proxies");
    let warm = Duration::from_secs(2);
    Wrk::new(&url(setup.balancer)).connections(setup.connections).duration(warm).run();
    Wrk::new(&url(setup.nginx.addr)).connections(setup.connections).duration(warm).run();

    let (mut balancer, mut nginx) = (Vec::new(), Vec::new());
    for n in 1..=setup.rounds {
        (setup.progress)(&format!("throughput round {n}/{}: balancer, then nginx", setup.rounds));
        balancer.push(round(setup.balancer, setup.balancer_cpu));
        nginx.push(round(setup.nginx.addr, &nginx_cpu));
    }

    (setup.progress)("moderate load: direct, balancer, nginx");
    let dir = tempfile::tempdir().expect("a temp dir for the wrk script");
    let script = Script::new("GET", setup.path).delay(MODERATE.1).write(dir.path(), "moderate");
    let moderate = |addr: SocketAddr| {
        Wrk::new(&url(addr)).connections(MODERATE.0).duration(secs.min(Duration::from_secs(5))).script(&script).run()
    };
    Comparison {
        balancer: median(balancer),
        nginx: median(nginx),
        direct_moderate: moderate(setup.direct),
        balancer_moderate: moderate(setup.balancer),
        nginx_moderate: moderate(setup.nginx.addr),
        moderate: MODERATE,
    }
}

/// One wrk run of `secs` on `url` (`threads` load threads, `connections` keep-alive
/// connections) and the proxy's CPU time per request meanwhile, from `cpu` (clock ticks).
pub fn round(url: &str, connections: u32, threads: u32, secs: Duration, cpu: &dyn Fn() -> u64) -> Round {
    let before = cpu();
    let run = Wrk::new(url).connections(connections).threads(threads).duration(secs).run();
    let ticks = cpu().saturating_sub(before);
    let cpu_us = if run.requests == 0 {
        f64::NAN
    } else {
        ticks as f64 * 1e6 / procfs::TICKS_PER_SECOND as f64 / run.requests as f64
    };
    Round { run, cpu_us }
}

/// The round with the median throughput.
fn median(mut rounds: Vec<Round>) -> Round {
    assert!(!rounds.is_empty(), "at least one round");
    rounds.sort_by(|a, b| a.run.per_second.total_cmp(&b.run.per_second));
    rounds.swap_remove(rounds.len() / 2)
}
