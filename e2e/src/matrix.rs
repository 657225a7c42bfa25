//! The balancer's load-shape matrix: the balancer, nginx and HAProxy in front of the same
//! backends, under each [`Shape`] (connections, wrk threads, answer size), measured in
//! alternating rounds; and [`Backends`], small HTTP/1 backends that answer a tiny or a
//! ~4 KB body, for the shapes whose backends are not a cluster's.
//!
//! The protocol of a shape: a one-second warm-up of each proxy, then `rounds` rounds of
//! `secs` seconds, balancer, nginx, HAProxy in turn (so a passing disturbance of the busy
//! machine hits each alike), the round with the most requests per second kept for each
//! (the same rule for all three), with its p99 and the proxy's CPU time per request.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::haproxy::Haproxy;
use crate::nginx::{Nginx, Round, round};

/// A load shape: `wrk -t{threads} -c{connections}` on `path`.
#[derive(Clone, Copy, Debug)]
pub struct Shape {
    /// The row's id in `make bench`'s table.
    pub id: &'static str,
    pub connections: u32,
    pub threads: u32,
    pub path: &'static str,
}

/// The three proxies in front of the same backends.
pub struct Contenders<'a> {
    pub balancer: SocketAddr,
    /// The balancer's CPU time so far, in clock ticks.
    pub balancer_cpu: &'a dyn Fn() -> u64,
    pub nginx: &'a Nginx,
    pub haproxy: &'a Haproxy,
}

/// What one shape measured: the kept round of each proxy.
#[derive(Clone, Debug)]
pub struct Outcome {
    pub shape: Shape,
    pub balancer: Round,
    pub nginx: Round,
    pub haproxy: Round,
}

impl Outcome {
    /// Balancer requests/s over `other`'s.
    pub fn ratio(&self, other: &Round) -> f64 {
        self.balancer.run.per_second / other.run.per_second
    }

    /// Balancer p99 over `other`'s (below 1: the balancer's tail is shorter).
    pub fn p99_ratio(&self, other: &Round) -> f64 {
        self.balancer.run.p99_ms / other.run.p99_ms
    }
}

/// Measures `shape` on the `contenders` (see the module docs).
pub fn measure(shape: Shape, contenders: &Contenders<'_>, secs: u64, rounds: usize) -> Outcome {
    let nginx_cpu = || contenders.nginx.cpu_ticks();
    let haproxy_cpu = || contenders.haproxy.cpu_ticks();
    let proxies: [(SocketAddr, &dyn Fn() -> u64); 3] = [
        (contenders.balancer, contenders.balancer_cpu),
        (contenders.nginx.addr, &nginx_cpu),
        (contenders.haproxy.addr, &haproxy_cpu),
    ];
    let url = |addr: SocketAddr| format!("http://{addr}{}", shape.path);
    let run = |addr: SocketAddr, cpu: &dyn Fn() -> u64, secs: u64| {
        round(&url(addr), shape.connections, shape.threads, Duration::from_secs(secs), cpu)
    };
    for (addr, cpu) in proxies {
        run(addr, cpu, 1);
    }
    let mut kept: [Option<Round>; 3] = [None, None, None];
    for _ in 0..rounds.max(1) {
        for (n, (addr, cpu)) in proxies.into_iter().enumerate() {
            let this = run(addr, cpu, secs);
            if kept[n].as_ref().is_none_or(|k| this.run.per_second > k.run.per_second) {
                kept[n] = Some(this);
            }
        }
    }
    let [Some(balancer), Some(nginx), Some(haproxy)] = kept else { unreachable!("at least one round each") };
    Outcome { shape, balancer, nginx, haproxy }
}

/// HTTP/1 backends, each a thread with a single-threaded runtime of its own, that answer
/// every request with a small JSON body, or with ~4 KB when the path ends in `/4k`. They
/// read request heads only (the matrix sends GETs) and keep connections open. They live
/// as long as the process.
pub struct Backends {
    pub addrs: Vec<SocketAddr>,
}

/// The tiny answer's body.
pub const TINY: &str = r#"{"message":"ok","service":"data-bench"}"#;

/// Bytes of the larger answer's body.
pub const LARGE: usize = 4096;

impl Backends {
    pub fn start(count: usize) -> Self {
        let tiny = answer(TINY.as_bytes());
        let mut large_body = String::from(r#"{"data":""#);
        large_body.push_str(&"x".repeat(LARGE - large_body.len() - 2));
        large_body.push_str(r#""}"#);
        let large = answer(large_body.as_bytes());
        let addrs = (0..count)
            .map(|n| {
                let listener = TcpListener::bind("127.0.0.1:0").expect("binding a backend");
                let addr = listener.local_addr().expect("a bound socket has an address");
                listener.set_nonblocking(true).expect("a non-blocking listener");
                let (tiny, large) = (tiny.clone(), large.clone());
                std::thread::Builder::new()
                    .name(format!("backend-{n}"))
                    .spawn(move || {
                        let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build();
                        runtime.expect("a backend runtime").block_on(serve(listener, tiny, large));
                    })
                    .expect("a backend thread");
                addr
            })
            .collect();
        Self { addrs }
    }
}

/// A whole HTTP/1.1 answer with `body`.
fn answer(body: &[u8]) -> Vec<u8> {
    let mut out =
        format!("HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n", body.len())
            .into_bytes();
    out.extend_from_slice(body);
    out
}

async fn serve(listener: TcpListener, tiny: Vec<u8>, large: Vec<u8>) {
    let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
    let (tiny, large): (&'static [u8], &'static [u8]) = (tiny.leak(), large.leak());
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::spawn(connection(stream, tiny, large));
    }
}

/// Answers each complete request head on `stream` (pipelined ones in order).
async fn connection(mut stream: tokio::net::TcpStream, tiny: &'static [u8], large: &'static [u8]) {
    let mut buf = Vec::with_capacity(8192);
    let mut out = Vec::new();
    loop {
        let mut chunk = [0u8; 8192];
        let n = match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = &buf[..end];
            let target = head.split(|b| *b == b' ').nth(1).unwrap_or_default();
            out.extend_from_slice(if target.ends_with(b"/4k") { large } else { tiny });
            buf.drain(..end + 4);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
        if buf.len() > 64 << 10 {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Write};

    use super::*;

    /// Reads one answer with a `content-length` from `stream`: its head and body.
    fn read_answer(stream: &mut std::net::TcpStream) -> (String, Vec<u8>) {
        let mut bytes = Vec::new();
        let mut byte = [0u8; 1];
        while !bytes.ends_with(b"\r\n\r\n") {
            assert_eq!(stream.read(&mut byte).expect("reading a head"), 1, "the backend closed early");
            bytes.push(byte[0]);
        }
        let head = String::from_utf8(bytes).expect("a text head");
        let length: usize = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(name, _)| name.eq_ignore_ascii_case("content-length")))
            .and_then(|(_, n)| n.trim().parse().ok())
            .expect("a content-length");
        let mut body = vec![0u8; length];
        stream.read_exact(&mut body).expect("reading a body");
        (head, body)
    }

    /// One GET of `path` through the proxy at `addr`: the answer's body.
    fn get(addr: SocketAddr, path: &str) -> Vec<u8> {
        let mut stream = std::net::TcpStream::connect(addr).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        write!(stream, "GET {path} HTTP/1.1\r\nhost: bench\r\n\r\n").expect("writing");
        let (head, body) = read_answer(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body
    }

    #[test]
    fn nginx_and_haproxy_proxy_to_the_backends() {
        if !(crate::nginx::have("nginx") && crate::nginx::have("haproxy")) {
            println!("nginx or haproxy is not installed: skipped (scripts/deps.sh installs haproxy)");
            return;
        }
        let backends = Backends::start(2);
        let nginx = Nginx::start(&backends.addrs, 1);
        let haproxy = Haproxy::start(&backends.addrs, 1);
        for addr in [nginx.addr, haproxy.addr] {
            assert_eq!(get(addr, "/api/data/tiny"), TINY.as_bytes());
            assert_eq!(get(addr, "/api/data/4k").len(), LARGE);
        }
        let (nginx_pid, haproxy_pid) = (nginx.pid(), haproxy.pid());
        drop((nginx, haproxy));
        for pid in [nginx_pid, haproxy_pid] {
            assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists(), "{pid} ended and reaped");
        }
    }

    #[test]
    fn backends_answer_tiny_and_large_bodies_on_one_connection() {
        let backends = Backends::start(1);
        let mut stream = std::net::TcpStream::connect(backends.addrs[0]).expect("connecting");
        stream.set_read_timeout(Some(Duration::from_secs(10))).expect("a read timeout");
        // Two requests in one write (pipelined), then one more: each gets its own answer.
        stream
            .write_all(b"GET /api/data/tiny HTTP/1.1\r\nhost: x\r\n\r\nGET /api/data/4k HTTP/1.1\r\nhost: x\r\n\r\n")
            .expect("writing");
        let (head, body) = read_answer(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body, TINY.as_bytes());
        let (_, body) = read_answer(&mut stream);
        assert_eq!(body.len(), LARGE);
        let json: serde_json::Value = serde_json::from_slice(&body).expect("the large body is JSON");
        assert!(json["data"].as_str().is_some_and(|d| d.len() > 4000), "{}", body.len());
        stream.write_all(b"GET /other HTTP/1.1\r\n\r\n").expect("writing");
        assert_eq!(read_answer(&mut stream).1, TINY.as_bytes());
    }
}
