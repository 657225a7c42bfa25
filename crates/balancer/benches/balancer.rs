//! The balancer against nginx, in one run, over the same three fast backends.
//!
//! - Backends: three tiny hyper servers (a 40-byte JSON answer) on a 2-thread runtime of
//!   this process.
//! - Balancer: in this process, on its own 2-thread runtime (as `orch run balancer` runs
//!   it), static discovery over the three backends, round-robin.
//! - nginx: `worker_processes 2`, `upstream` round-robin with `keepalive 64`, access log
//!   off, run as a child from a config in a temp dir and ended by PID.
//! - Load: wrk, one thread. Throughput: 64 connections for `BENCH_SECS` (default 5) seconds
//!   against each proxy in turn, three rounds alternating, the median round reported.
//!   Moderate load: 8 connections, each pausing 2 ms between
//!   requests (wrk's `delay()`), against a backend directly and through each proxy; the
//!   added p99 is the proxy's p99 minus the direct p99.
//! - Also shown: the proxy's CPU time per request (user + system, from /proc), which the
//!   other programs on the machine disturb less than requests per second.
//!
//! nginx and wrk are installed with apt-get when missing. Run: `cargo bench -p balancer
//! --bench balancer`. The machine has 2 cores, shared by wrk, the proxy and the backends.

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Throughput rounds per proxy.
const ROUNDS: usize = 3;

const BODY: &[u8] = br#"{"message":"ok","service":"data-bench"}"#;

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    if !ensure_tools() {
        println!("nginx or wrk is missing and could not be installed; benchmark skipped");
        return;
    }
    let backends_rt = runtime(2, "bench-backend");
    let backends: Vec<SocketAddr> = (0..3).map(|_| backends_rt.block_on(backend())).collect();

    let balancer_rt = runtime(2, "bench-balancer");
    let balancer = balancer_rt.block_on(start_balancer(&backends));

    let dir = tempfile::tempdir().expect("a temp dir");
    let nginx_port = free_port();
    let mut nginx = start_nginx(dir.path(), nginx_port, &backends);
    let nginx_addr: SocketAddr = ([127, 0, 0, 1], nginx_port).into();
    wait_for(nginx_addr);
    let script = dir.path().join("moderate.lua");
    std::fs::write(&script, "function delay()\n  return 2\nend\n").expect("writing the wrk script");

    let path = "/api/data/bench";
    // Warm both up (connections, pools, caches).
    wrk(balancer, path, 64, 2, None);
    wrk(nginx_addr, path, 64, 2, None);

    // Alternate rounds, so a passing disturbance on the machine hits both alike; the median
    // round of each is reported.
    let (mut balancer_rounds, mut nginx_rounds) = (Vec::new(), Vec::new());
    for _ in 0..ROUNDS {
        let before = balancer_cpu();
        let mut round = wrk(balancer, path, 64, secs, None);
        round.cpu_us = per_request(balancer_cpu() - before, &round, secs);
        balancer_rounds.push(round);
        let before = nginx_cpu(nginx.id());
        let mut round = wrk(nginx_addr, path, 64, secs, None);
        round.cpu_us = per_request(nginx_cpu(nginx.id()) - before, &round, secs);
        nginx_rounds.push(round);
    }
    let (balancer_max, nginx_max) = (median(balancer_rounds), median(nginx_rounds));
    let direct_mod = wrk(backends[0], path, 8, secs.min(5), Some(&script));
    let balancer_mod = wrk(balancer, path, 8, secs.min(5), Some(&script));
    let nginx_mod = wrk(nginx_addr, path, 8, secs.min(5), Some(&script));

    stop(&mut nginx);

    println!();
    println!("balancer vs nginx, 3 backends, round-robin, keep-alive (wrk -t1; 2 cores shared)");
    println!("{:<34} {:>12} {:>10} {:>10} {:>14}", "run", "requests/s", "p50 ms", "p99 ms", "proxy CPU/req");
    let row = |name: &str, r: &Wrk| {
        let cpu = if r.cpu_us.is_nan() { String::new() } else { format!("{:.1} us", r.cpu_us) };
        println!("{name:<34} {:>12.0} {:>10.3} {:>10.3} {cpu:>14}", r.rps, r.p50_ms, r.p99_ms)
    };
    row("balancer, 64 connections (median)", &balancer_max);
    row("nginx, 64 connections (median)", &nginx_max);
    row("backend direct, moderate (8c, 2ms)", &direct_mod);
    row("balancer, moderate (8c, 2ms)", &balancer_mod);
    row("nginx, moderate (8c, 2ms)", &nginx_mod);
    println!();
    println!("throughput ratio balancer / nginx: {:.2}", balancer_max.rps / nginx_max.rps);
    println!(
        "added p99 at moderate load: balancer {:+.3} ms, nginx {:+.3} ms",
        balancer_mod.p99_ms - direct_mod.p99_ms,
        nginx_mod.p99_ms - direct_mod.p99_ms
    );
    drop(balancer_rt);
    drop(backends_rt);
}

fn runtime(threads: usize, name: &str) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name(name)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// A fast backend: any request gets the same small JSON answer.
async fn backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = service_fn(|_req: Request<hyper::body::Incoming>| async {
                    let mut res = Response::new(Full::new(Bytes::from_static(BODY)));
                    res.headers_mut().insert("content-type", "application/json".parse().expect("valid"));
                    Ok::<_, Infallible>(res)
                });
                let _ =
                    hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service).await;
            });
        }
    });
    addr
}

async fn start_balancer(backends: &[SocketAddr]) -> SocketAddr {
    let ports: Vec<String> = backends.iter().map(|a| a.port().to_string()).collect();
    let ports = ports.join(",");
    let vars = kit::Vars::from_pairs([
        ("USE_DYNAMIC_DISCOVERY", "false"),
        ("REGISTER", "false"),
        ("DATA_PORTS", ports.as_str()),
        ("HEALTH_CHECK_INTERVAL_MS", "2000"),
    ]);
    let config = balancer::Config::from_vars(&vars).expect("config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(balancer::serve(config, listener, kit::Shutdown::new()));
    let http = reqwest::Client::new();
    for _ in 0..200 {
        if http.get(format!("http://{addr}/ready")).send().await.is_ok_and(|r| r.status() == 200) {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the balancer did not get ready");
}

fn have(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
        || Path::new("/usr/sbin").join(program).exists()
}

fn ensure_tools() -> bool {
    if have("nginx") && have("wrk") {
        return true;
    }
    println!("installing nginx and wrk with apt-get ...");
    let quiet = |args: &[&str]| {
        Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").stdout(Stdio::null()).status()
    };
    let _ = quiet(&["update", "-qq"]);
    let _ = quiet(&["install", "-y", "-qq", "nginx", "wrk"]);
    have("nginx") && have("wrk")
}

fn nginx_binary() -> &'static str {
    if Path::new("/usr/sbin/nginx").exists() { "/usr/sbin/nginx" } else { "nginx" }
}

fn start_nginx(dir: &Path, port: u16, backends: &[SocketAddr]) -> Child {
    let servers: String = backends.iter().map(|a| format!("    server {a};\n")).collect();
    let conf = format!(
        "worker_processes 2;\n\
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
           upstream data {{\n{servers}    keepalive 64;\n  }}\n\
           server {{\n\
             listen 127.0.0.1:{port};\n\
             location / {{\n\
               proxy_pass http://data;\n\
               proxy_http_version 1.1;\n\
               proxy_set_header Connection \"\";\n\
             }}\n\
           }}\n\
         }}\n",
        dir = dir.display()
    );
    let path = dir.join("nginx.conf");
    std::fs::File::create(&path).and_then(|mut f| f.write_all(conf.as_bytes())).expect("writing nginx.conf");
    Command::new(nginx_binary())
        .arg("-p")
        .arg(dir)
        .arg("-c")
        .arg(&path)
        .arg("-e")
        .arg(dir.join("error.log"))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("starting nginx")
}

/// Ends nginx by its PID (SIGQUIT: graceful), then reaps it.
fn stop(child: &mut Child) {
    let _ = Command::new("kill").args(["-QUIT", &child.id().to_string()]).status();
    for _ in 0..100 {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

fn wait_for(addr: SocketAddr) {
    for _ in 0..200 {
        if std::net::TcpStream::connect(addr).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    panic!("nothing listens on {addr}");
}

/// The round with the median throughput.
fn median(mut rounds: Vec<Wrk>) -> Wrk {
    rounds.sort_by(|a, b| a.rps.total_cmp(&b.rps));
    rounds.swap_remove(rounds.len() / 2)
}

/// CPU time (user + system, in clock ticks) of this process's balancer worker threads.
fn balancer_cpu() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("balancer-")))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| ticks(&stat))
        .sum()
}

/// CPU time (clock ticks) of nginx's master `pid` and its worker processes.
fn nginx_cpu(pid: u32) -> u64 {
    let Ok(procs) = std::fs::read_dir("/proc") else { return 0 };
    procs
        .flatten()
        .filter_map(|p| std::fs::read_to_string(p.path().join("stat")).ok())
        .filter(|stat| {
            let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
            stat.starts_with(&format!("{pid} ")) || fields.get(1) == Some(&pid.to_string().as_str())
        })
        .map(|stat| ticks(&stat))
        .sum()
}

/// utime + stime from a `/proc/.../stat` line.
fn ticks(stat: &str) -> u64 {
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    // After the command: state is field 3 of the line, utime 14 and stime 15.
    let field = |n: usize| fields.get(n - 3).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    field(14) + field(15)
}

/// Microseconds of CPU per request, from clock ticks (100 per second) over a run.
fn per_request(ticks: u64, run: &Wrk, secs: u64) -> f64 {
    let requests = run.rps * secs as f64;
    if requests <= 0.0 { f64::NAN } else { ticks as f64 * 10_000.0 / requests }
}

struct Wrk {
    cpu_us: f64,
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn wrk(addr: SocketAddr, path: &str, connections: u32, secs: u64, script: Option<&Path>) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t1", &format!("-c{connections}"), &format!("-d{secs}s"), "--latency"]);
    if let Some(script) = script {
        cmd.arg("-s").arg(script);
    }
    cmd.arg(format!("http://{addr}{path}"));
    let out = cmd.output().expect("running wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |prefix: &str| -> Option<&str> {
        text.lines().map(str::trim).find_map(|l| l.strip_prefix(prefix)).map(str::trim)
    };
    let rps = field("Requests/sec:").and_then(|v| v.parse().ok()).unwrap_or(0.0);
    let errors = field("Non-2xx or 3xx responses:").or_else(|| field("Socket errors:"));
    if let Some(errors) = errors {
        println!("wrk against {addr}: {errors}");
    }
    Wrk {
        cpu_us: f64::NAN,
        rps,
        p50_ms: field("50%").map_or(f64::NAN, millis),
        p99_ms: field("99%").map_or(f64::NAN, millis),
    }
}

/// wrk's `123.45us`, `1.23ms`, `1.02s` in milliseconds.
fn millis(value: &str) -> f64 {
    let number = |s: &str| s.parse::<f64>().unwrap_or(f64::NAN);
    if let Some(v) = value.strip_suffix("us") {
        number(v) / 1000.0
    } else if let Some(v) = value.strip_suffix("ms") {
        number(v)
    } else if let Some(v) = value.strip_suffix('s') {
        number(v) * 1000.0
    } else {
        f64::NAN
    }
}
