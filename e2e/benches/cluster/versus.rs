//! The `nginx` step: the cluster's balancer against nginx in front of the same data
//! instances (`e2e::nginx::compare`).

use bench::report::{Row, Target};
use bench::stats::{round2, show_count, show_ms};
use e2e::cluster::Cluster;
use e2e::nginx::{self, Nginx, Setup};
use e2e::procfs;
use e2e::wrk::Run;

use super::Bench;
use super::support::{data_behind_balancer, wrk_errors};

impl Bench {
    /// Step 3: the cluster's balancer and an nginx in front of the same data instances.
    pub(super) async fn versus_nginx(&mut self, cluster: &Cluster) {
        self.progress.step("balancer vs nginx in front of data-1..3 (wrk -t1)");
        let (upstreams, balancer_pid, balancer) = data_behind_balancer(cluster).await;
        let progress = &self.progress;
        let secs = self.secs;
        let c = tokio::task::block_in_place(|| {
            let nginx = Nginx::start(&upstreams, 2);
            nginx::compare(&Setup {
                balancer,
                balancer_cpu: &|| procfs::cpu_ticks(balancer_pid),
                nginx: &nginx,
                direct: upstreams[0],
                path: "/api/data/health",
                connections: 64,
                secs,
                rounds: 3,
                progress: &|what| progress.note(what),
            })
        });
        let throughput = |r: &Run| {
            format!("{} req/s, p50 {}, p99 {}", show_count(r.per_second), show_ms(r.p50_ms), show_ms(r.p99_ms))
        };
        let rounds = format!(
            "wrk -t1 -c64 keep-alive, GET /api/data/health (answered by data-1..3) for {secs} s; median of 3 rounds \
             alternating balancer and nginx"
        );
        let row = |id: &'static str, label: &'static str, round: &nginx::Round, setup: &str| {
            Row::new(id, label, round.run.per_second, "req/s")
                .shown(throughput(&round.run))
                .how(format!("{rounds}; {setup}, {:.1} us CPU per request{}", round.cpu_us, wrk_errors(&round.run)))
                .detail("p50Ms", round.run.p50_ms)
                .detail("p99Ms", round.run.p99_ms)
                .detail("cpuUsPerRequest", round2(round.cpu_us))
                .detail("errors", round.run.errors())
        };
        self.rows.push(row(
            "balancerThroughput",
            "balancer throughput, 64 connections",
            &c.balancer,
            "the cluster's balancer (BALANCER_WORKERS = 2 cores)",
        ));
        self.rows.push(row(
            "nginxThroughput",
            "nginx throughput, same backends and load",
            &c.nginx,
            "nginx worker_processes 2, upstream round-robin over data-1..3 with keepalive 64",
        ));
        self.rows.push(
            Row::new("balancerNginxRatio", "throughput ratio balancer / nginx", c.ratio(), "x")
                .shown(format!("{:.2}", c.ratio()))
                .target(Target::at_least(1.0, ">= 1.00"))
                .how("the two rows above"),
        );
        let (conns, pause) = c.moderate;
        self.rows.push(
            Row::new("balancerAddedP99", "balancer's added p99 at moderate load", c.balancer_added_p99_ms(), "ms")
                .shown(format!(
                    "{:+.2} ms (p99 {} vs {} direct)",
                    c.balancer_added_p99_ms(),
                    show_ms(c.balancer_moderate.p99_ms),
                    show_ms(c.direct_moderate.p99_ms)
                ))
                .target(Target::below(1.0, "< 1 ms"))
                .how(format!(
                    "wrk -t1, {conns} connections each pausing {pause} ms between requests, {} s each: p99 through the \
                     balancer ({:.0} req/s) minus p99 straight to data-1; nginx adds {:+.2} ms (p99 {})",
                    secs.min(5),
                    c.balancer_moderate.per_second,
                    c.nginx_added_p99_ms(),
                    show_ms(c.nginx_moderate.p99_ms)
                ))
                .detail("directP99Ms", c.direct_moderate.p99_ms)
                .detail("balancerP99Ms", c.balancer_moderate.p99_ms)
                .detail("nginxP99Ms", c.nginx_moderate.p99_ms),
        );
    }
}
