//! The balancer against nginx, in one run, over the same three fast backends.
//!
//! - Backends: three tiny hyper servers (a 40-byte JSON answer) on a 2-thread runtime of
//!   this process.
//! - Balancer: in this process, on its own 2-thread runtime (as `orch run balancer` runs
//!   it), static discovery over the three backends, round-robin.
//! - nginx: `worker_processes 2`, `upstream` round-robin with `keepalive 64`, access log
//!   off, run as a child from a config in a temp dir and ended by PID.
//! - Load: wrk, one thread, by `e2e::nginx::compare` (the protocol the cluster benchmark
//!   uses too): 64 connections for `BENCH_SECS` (default 5) seconds against each proxy in
//!   turn, three rounds alternating, the median round reported; moderate load: 8
//!   connections, each pausing 2 ms between requests (wrk's `delay()`), against a backend
//!   directly and through each proxy; the added p99 is the proxy's p99 minus the direct p99.
//! - Also shown: the proxy's CPU time per request (user + system, from /proc), which the
//!   other programs on the machine disturb less than requests per second.
//!
//! nginx and wrk are installed with apt-get when missing. Run: `cargo bench -p balancer
//! --bench balancer` (`make bench-all` runs it with every other benchmark). The machine has
//! 2 cores, shared by wrk, the proxy and the backends.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bench::table::Table;
use bytes::Bytes;
use e2e::nginx::{self, Nginx, Setup};
use e2e::procfs;
use e2e::wrk::Run;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;

/// Throughput rounds per proxy.
const ROUNDS: usize = 3;

const BODY: &[u8] = br#"{"message":"ok","service":"data-bench"}"#;

fn main() {
    let secs: u64 = std::env::var("BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5);
    if !nginx::ensure_tools() {
        println!("nginx or wrk is missing and could not be installed; benchmark skipped");
        return;
    }
    let backends_rt = runtime(2, "bench-backend");
    let backends: Vec<SocketAddr> = (0..3).map(|_| backends_rt.block_on(backend())).collect();

    let balancer_rt = runtime(2, "bench-balancer");
    let balancer = balancer_rt.block_on(start_balancer(&backends));
    let nginx = Nginx::start(&backends, 2);

    let c = nginx::compare(&Setup {
        balancer,
        balancer_cpu: &balancer_cpu,
        nginx: &nginx,
        direct: backends[0],
        path: "/api/data/bench",
        connections: 64,
        secs,
        rounds: ROUNDS,
        progress: &|_| {},
    });
    drop(nginx);

    let runs = [
        (&c.balancer.run, "balancer"),
        (&c.nginx.run, "nginx"),
        (&c.direct_moderate, "backend direct, moderate"),
        (&c.balancer_moderate, "balancer, moderate"),
        (&c.nginx_moderate, "nginx, moderate"),
    ];
    for (run, name) in runs {
        if run.errors() > 0 {
            println!("wrk against {name}: {} non-2xx, {} socket errors", run.non_2xx, run.socket_errors);
        }
    }
    println!();
    println!("balancer vs nginx, 3 backends, round-robin, keep-alive (wrk -t1; 2 cores shared)");
    let mut table = Table::new()
        .left("run", 34)
        .right("requests/s", 12)
        .right("p50 ms", 10)
        .right("p99 ms", 10)
        .right("proxy CPU/req", 14);
    let mut row = |name: &str, r: &Run, cpu_us: f64| {
        let cpu = if cpu_us.is_nan() { String::new() } else { format!("{cpu_us:.1} us") };
        let figures = [format!("{:.0}", r.per_second), format!("{:.3}", r.p50_ms), format!("{:.3}", r.p99_ms)];
        table.row([name.to_owned()].into_iter().chain(figures).chain([cpu]));
    };
    row("balancer, 64 connections (median)", &c.balancer.run, c.balancer.cpu_us);
    row("nginx, 64 connections (median)", &c.nginx.run, c.nginx.cpu_us);
    row("backend direct, moderate (8c, 2ms)", &c.direct_moderate, f64::NAN);
    row("balancer, moderate (8c, 2ms)", &c.balancer_moderate, f64::NAN);
    row("nginx, moderate (8c, 2ms)", &c.nginx_moderate, f64::NAN);
    table.print();
    println!();
    println!("throughput ratio balancer / nginx: {:.2}", c.ratio());
    println!(
        "added p99 at moderate load: balancer {:+.3} ms, nginx {:+.3} ms",
        c.balancer_added_p99_ms(),
        c.nginx_added_p99_ms()
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

/// CPU time (user + system, in clock ticks) of this process's balancer worker threads.
fn balancer_cpu() -> u64 {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return 0 };
    tasks
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("balancer-")))
        .filter_map(|t| std::fs::read_to_string(t.path().join("stat")).ok())
        .map(|stat| procfs::ticks_of_stat(&stat))
        .sum()
}
