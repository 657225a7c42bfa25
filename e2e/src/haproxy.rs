//! HAProxy as the balancer's second yardstick (beside [`crate::nginx`]): an HAProxy in
//! front of given backends, a child process from a config in a temp dir, ended by its PID.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::process::Child;

use nix::sys::signal::Signal;

use crate::nginx::{free_port, spawn, stop, wait_listening};
use crate::procfs;

/// An HAProxy proxying every path to `upstreams`, round-robin over kept-alive connections.
pub struct Haproxy {
    child: Child,
    pub addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl Haproxy {
    /// Starts HAProxy in HTTP mode with `nbthread threads`, `balance roundrobin` over
    /// `upstreams` with `http-reuse always` (its keep-alive pool of server connections), no
    /// log, on a free port of 127.0.0.1; returns once it accepts connections.
    pub fn start(upstreams: &[SocketAddr], threads: usize) -> Self {
        let dir = tempfile::tempdir().expect("a temp dir for haproxy");
        let port = free_port();
        let servers: String = upstreams.iter().enumerate().map(|(n, a)| format!("    server s{n} {a}\n")).collect();
        let conf = format!(
            "global\n\
             \x20   nbthread {threads}\n\
             \x20   maxconn 8192\n\
             defaults\n\
             \x20   mode http\n\
             \x20   timeout connect 5s\n\
             \x20   timeout client 60s\n\
             \x20   timeout server 60s\n\
             \x20   option http-keep-alive\n\
             \x20   http-reuse always\n\
             frontend front\n\
             \x20   bind 127.0.0.1:{port}\n\
             \x20   default_backend backends\n\
             backend backends\n\
             \x20   balance roundrobin\n\
             {servers}"
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).expect("writing haproxy.cfg");
        let child = spawn("haproxy", &[OsStr::new("-db"), OsStr::new("-f"), path.as_os_str()]);
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let haproxy = Self { child, addr, _dir: dir };
        wait_listening(addr, "haproxy");
        haproxy
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// CPU time (clock ticks) of the process, all its threads.
    pub fn cpu_ticks(&self) -> u64 {
        procfs::cpu_ticks(self.pid())
    }
}

impl Drop for Haproxy {
    /// SIGTERM (HAProxy's immediate stop) by its PID, SIGKILL if it lingers; reaped.
    fn drop(&mut self) {
        stop(&mut self.child, Signal::SIGTERM);
    }
}
