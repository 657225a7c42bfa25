//! The balancer's load-shape matrix (`matrix` step): the balancer against nginx and HAProxy
//! (`e2e::matrix`) at 8 and 64 connections, with one and two wrk threads, in two setups:
//! - dynamic discovery: the cluster's balancer (registry watch) over data-1..3, on
//!   `/api/data/health` (a tiny answer);
//! - static discovery: a balancer of its own (`orch run balancer`, `DATA_PORTS`, no
//!   registry) over three small backends of this process (`e2e::matrix::Backends`), for a
//!   tiny answer and for a ~4 KB one.
//!
//! nginx and HAProxy each get two workers (threads), as the balancer has one per core.
//! One row per shape: the balancer's requests/s over nginx's (the target, >= 1.05), beside
//! HAProxy's and the p99 ratios; then the worst p99 ratio against nginx over the matrix.

use std::net::SocketAddr;

use bench::report::{Row, Target};
use bench::stats::{round2, show_count, show_ms};
use e2e::cluster::Cluster;
use e2e::haproxy::Haproxy;
use e2e::matrix::{Backends, Contenders, Outcome, Shape, measure};
use e2e::nginx::Nginx;
use e2e::procfs;

use super::{Bench, TIGHT, data_behind_balancer, until};

/// Rounds per proxy and shape (the best kept); each round lasts `secs.min(ROUND_SECS)`.
const ROUNDS: usize = 3;
const ROUND_SECS: u64 = 3;

const DYNAMIC: [Shape; 4] = [
    Shape { id: "lbDynTinyC8T1", connections: 8, threads: 1, path: "/api/data/health" },
    Shape { id: "lbDynTinyC8T2", connections: 8, threads: 2, path: "/api/data/health" },
    Shape { id: "lbDynTinyC64T1", connections: 64, threads: 1, path: "/api/data/health" },
    Shape { id: "lbDynTinyC64T2", connections: 64, threads: 2, path: "/api/data/health" },
];

const STATIC: [Shape; 8] = [
    Shape { id: "lbStaticTinyC8T1", connections: 8, threads: 1, path: "/api/data/tiny" },
    Shape { id: "lbStaticTinyC8T2", connections: 8, threads: 2, path: "/api/data/tiny" },
    Shape { id: "lbStaticTinyC64T1", connections: 64, threads: 1, path: "/api/data/tiny" },
    Shape { id: "lbStaticTinyC64T2", connections: 64, threads: 2, path: "/api/data/tiny" },
    Shape { id: "lbStatic4kC8T1", connections: 8, threads: 1, path: "/api/data/4k" },
    Shape { id: "lbStatic4kC8T2", connections: 8, threads: 2, path: "/api/data/4k" },
    Shape { id: "lbStatic4kC64T1", connections: 64, threads: 1, path: "/api/data/4k" },
    Shape { id: "lbStatic4kC64T2", connections: 64, threads: 2, path: "/api/data/4k" },
];

impl Bench {
    pub(super) async fn matrix(&mut self, cluster: &Cluster) {
        self.progress.step("balancer matrix vs nginx and HAProxy (c8/c64 x wrk -t1/-t2 x tiny/4 KB)");
        let secs = self.secs.min(ROUND_SECS);
        let mut outcomes = Vec::new();

        let (upstreams, balancer_pid, balancer) = data_behind_balancer(cluster).await;
        let progress = &self.progress;
        outcomes.extend(tokio::task::block_in_place(|| {
            shapes(&DYNAMIC, &upstreams, balancer, &|| procfs::cpu_ticks(balancer_pid), secs, &|s| progress.note(s))
        }));

        // Static discovery: a balancer of its own over this process's backends.
        let backends = Backends::start(3);
        let ports: Vec<String> = backends.addrs.iter().map(|a| a.port().to_string()).collect();
        let ports = ports.join(",");
        let (listener, balancer) = e2e::listener();
        let envs = [("USE_DYNAMIC_DISCOVERY", "false"), ("REGISTER", "false"), ("DATA_PORTS", ports.as_str())];
        let static_balancer = e2e::Proc::component("balancer-matrix", "balancer", &listener, &envs);
        let ready = format!("http://{balancer}/ready");
        until(TIGHT, "the static balancer ready", || async {
            self.http.get(&ready).send().await.ok().filter(|r| r.status() == 200).map(|_| ())
        })
        .await;
        let pid = static_balancer.pid();
        let progress = &self.progress;
        outcomes.extend(tokio::task::block_in_place(|| {
            shapes(&STATIC, &backends.addrs, balancer, &|| procfs::cpu_ticks(pid), secs, &|s| progress.note(s))
        }));
        drop(static_balancer);

        let how = format!(
            "wrk keep-alive, {secs} s rounds, {ROUNDS} rounds alternating balancer, nginx, HAProxy (the best of each \
             kept), after 1 s of warm-up each; nginx worker_processes 2 (keepalive 64), HAProxy nbthread 2 \
             (http-reuse always), the balancer with one worker per core"
        );
        // Said in full on the first row of the matrix.
        let protocol = |n: usize| if n == 0 { how.clone() } else { "as in the matrix's first row".to_owned() };
        let errors_note = |errors: u64| if errors > 0 { format!("; {errors} errors") } else { String::new() };
        let mut worst: Option<(f64, &'static str)> = None;
        for (n, o) in outcomes.iter().enumerate() {
            let (vs_nginx, vs_haproxy) = (o.ratio(&o.nginx), o.ratio(&o.haproxy));
            let (p99_nginx, p99_haproxy) = (o.p99_ratio(&o.nginx), o.p99_ratio(&o.haproxy));
            if worst.is_none_or(|(w, _)| p99_nginx > w || w.is_nan()) {
                worst = Some((p99_nginx, o.shape.id));
            }
            let s = o.shape;
            let body = if s.path.ends_with("/4k") { "~4 KB" } else { "tiny" };
            let discovery = if s.path.ends_with("/health") { "dynamic" } else { "static" };
            let errors = o.balancer.run.errors() + o.nginx.run.errors() + o.haproxy.run.errors();
            let metric = format!("balancer/nginx req/s, {discovery}, {body}, c{} t{}", s.connections, s.threads);
            let shown = format!(
                "{vs_nginx:.2}x nginx, {vs_haproxy:.2}x HAProxy ({} req/s); \
                 p99 {p99_nginx:.2}x / {p99_haproxy:.2}x ({})",
                show_count(o.balancer.run.per_second),
                show_ms(o.balancer.run.p99_ms),
            );
            self.rows.push(
                Row::new(s.id, metric, vs_nginx, "x")
                    .shown(shown)
                    .target(Target::at_least(1.05, ">= 1.05"))
                    .how(format!("{}; GET {} with {discovery} discovery{}", protocol(n), s.path, errors_note(errors)))
                    .detail("balancerPerSecond", o.balancer.run.per_second)
                    .detail("nginxPerSecond", o.nginx.run.per_second)
                    .detail("haproxyPerSecond", o.haproxy.run.per_second)
                    .detail("balancerP99Ms", o.balancer.run.p99_ms)
                    .detail("nginxP99Ms", o.nginx.run.p99_ms)
                    .detail("haproxyP99Ms", o.haproxy.run.p99_ms)
                    .detail("vsHaproxy", round2(vs_haproxy))
                    .detail("p99VsNginx", round2(p99_nginx))
                    .detail("p99VsHaproxy", round2(p99_haproxy))
                    .detail("balancerCpuUsPerRequest", round2(o.balancer.cpu_us))
                    .detail("nginxCpuUsPerRequest", round2(o.nginx.cpu_us))
                    .detail("haproxyCpuUsPerRequest", round2(o.haproxy.cpu_us))
                    .detail("errors", errors),
            );
        }
        let (worst, at) = worst.unwrap_or((f64::NAN, "-"));
        self.rows.push(
            Row::new("lbMatrixWorstP99", "balancer/nginx p99, worst shape of the matrix", worst, "x")
                .shown(format!("{worst:.2}x ({at})"))
                .target(Target::at_most(1.0, "<= 1.00"))
                .how("the rows above: the largest balancer p99 over nginx's p99 in the same shape"),
        );
    }
}

/// Each of `list` measured on the balancer at `balancer`, an nginx and an HAProxy started
/// here over `upstreams`.
fn shapes(
    list: &[Shape],
    upstreams: &[SocketAddr],
    balancer: SocketAddr,
    balancer_cpu: &dyn Fn() -> u64,
    secs: u64,
    progress: &dyn Fn(&str),
) -> Vec<Outcome> {
    let nginx = Nginx::start(upstreams, 2);
    let haproxy = Haproxy::start(upstreams, 2);
    let contenders = Contenders { balancer, balancer_cpu, nginx: &nginx, haproxy: &haproxy };
    list.iter()
        .map(|shape| {
            progress(&format!("{}: wrk -t{} -c{} {}", shape.id, shape.threads, shape.connections, shape.path));
            measure(*shape, &contenders, secs, ROUNDS)
        })
        .collect()
}
