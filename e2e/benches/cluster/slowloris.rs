//! The `slowloris` step: requests answered by the registry and by the balancer (wrk) while
//! [`SLOW_CONNECTIONS`] connections each hold a partial request open against it.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bench::stats::{ms, show_ms};
use e2e::cluster::Cluster;
use e2e::wrk::Wrk;

use super::Bench;
use super::support::{ready_instance, wrk_rate, wrk_row};

/// Connections each holding a partial request, in the slowloris step.
const SLOW_CONNECTIONS: usize = 2000;

impl Bench {
    /// Step 12: requests answered while [`SLOW_CONNECTIONS`] connections each hold a partial
    /// request open (a header line, then silence), on the registry (kit's server) and on the
    /// balancer (its own), beside the same wrk run without them.
    pub(super) async fn slowloris(&mut self, cluster: &Cluster) {
        self.progress.step(&format!("slowloris: {SLOW_CONNECTIONS} partial requests held open, registry and balancer"));
        raise_open_files(SLOW_CONNECTIONS as u64 + 1000);
        let targets = [
            ("slowlorisRegistry", "registry-1", "/health", "the registry's GET /health"),
            ("slowlorisBalancer", "balancer-1", "/api/data/health", "GET /api/data/health through the balancer"),
        ];
        for (id, instance, path, what) in targets {
            let (_, port) = ready_instance(cluster, instance).await;
            let addr = SocketAddr::from(([127, 0, 0, 1], port));
            let url = format!("http://{addr}{path}");
            let wrk = Wrk::new(&url).connections(16).duration(Duration::from_secs(self.secs));
            let alone = tokio::task::block_in_place(|| wrk.run());
            let t0 = Instant::now();
            let slow = hold_partial_requests(addr, path, SLOW_CONNECTIONS).await;
            let opened = slow.len();
            self.progress.note(&format!("{instance}: {opened} slow connections open in {}", show_ms(ms(t0.elapsed()))));
            let under = tokio::task::block_in_place(|| wrk.run());
            let still_open = slow.iter().filter(|c| is_open(c)).count();
            drop(slow);
            self.progress.note(&format!(
                "{instance}: {} alone, {} beside them; {still_open} of {opened} still open after {}",
                wrk_rate(&alone, "req"),
                wrk_rate(&under, "req"),
                show_ms(ms(t0.elapsed()))
            ));
            self.rows.push(
                wrk_row(
                    id,
                    &format!("{what}, {SLOW_CONNECTIONS} slow connections held open"),
                    &under,
                    "req/s",
                    "req",
                    format!(
                        "{opened} connections to {instance} each sent a partial request (`GET {path} HTTP/1.1` and \
                         one header line, no end) and then nothing; meanwhile wrk -t1 -c16 for {} s: {} (without \
                         them: {}); {still_open} of them still open at the end ({} after they opened)",
                        self.secs,
                        what,
                        wrk_rate(&alone, "req"),
                        show_ms(ms(t0.elapsed()))
                    ),
                )
                .detail("slowConnections", opened)
                .detail("stillOpen", still_open)
                .detail("withoutPerSecond", alone.ok_per_second())
                .detail("withoutP99Ms", alone.p99_ms),
            );
        }
    }
}

/// Raises this process's soft limit of open files to at least `wanted` (up to the hard
/// limit): the slowloris step holds thousands of sockets.
fn raise_open_files(wanted: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("reading RLIMIT_NOFILE");
    if soft < wanted {
        let raised = wanted.min(hard);
        setrlimit(Resource::RLIMIT_NOFILE, raised, hard).expect("raising RLIMIT_NOFILE");
        assert!(raised >= wanted, "RLIMIT_NOFILE: the hard limit {hard} is below the {wanted} open files needed");
    }
}

/// `n` connections to `addr`, each having sent the start of a request for `path` and no
/// more (opened 100 at a time; those that fail to open are left out).
async fn hold_partial_requests(addr: SocketAddr, path: &str, n: usize) -> Vec<tokio::net::TcpStream> {
    use tokio::io::AsyncWriteExt;
    let partial = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n");
    let open = |_| async {
        let mut stream =
            tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await.ok()?.ok()?;
        stream.write_all(partial.as_bytes()).await.ok()?;
        Some(stream)
    };
    let mut held = Vec::with_capacity(n);
    for start in (0..n).step_by(100) {
        let batch = futures_util::future::join_all((start..n.min(start + 100)).map(open)).await;
        held.extend(batch.into_iter().flatten());
    }
    held
}

/// Whether the server still keeps `stream` open: nothing to read yet (no answer, no close).
fn is_open(stream: &tokio::net::TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(stream.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
}
