//! Helpers for the end-to-end tests in `tests/`, which run the real `orch` binary.
//!
//! The binary is `target/<profile>/orch` (set `ORCH_BIN` to use another); `make test` builds
//! it before the tests run. A [`Proc`] is one process a test started: it is ended by its PID
//! when dropped, never by name. A [`cluster::Cluster`] is a whole cluster under a real
//! `orch apply` on a temporary manifest; [`topology::Topology`] writes the full cluster's
//! manifest (the shipped topology on automatic ports); [`traffic`] is client traffic
//! through the balancer with every outcome counted.
//!
//! For the benchmarks (`benches/cluster.rs`, and the balancer's): [`wrk`] runs load and
//! reads its figures, [`nginx`] is the yardstick proxy and the balancer-vs-nginx protocol,
//! [`procfs`] reads CPU time and memory of processes.

pub mod cluster;
pub mod haproxy;
pub mod matrix;
pub mod nginx;
pub mod procfs;
pub mod topology;
pub mod traffic;
pub mod wrk;

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use kit::testing::{eventually, eventually_every, still_pending};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Whether the tests run under CI (`CI=true` or `CI=1`), where a missing tool is a failure,
/// not a skip.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The `orch` binary under test.
pub fn orch_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("ORCH_BIN") {
        return PathBuf::from(path);
    }
    // target/<profile>/deps/<test binary> -> target/<profile>/orch
    let exe = std::env::current_exe().expect("the test binary has a path");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("target/<profile>/deps");
    let orch = profile_dir.join("orch");
    assert!(orch.exists(), "{} is missing: run `cargo build -p orch` first (`make test` does)", orch.display());
    orch
}

/// Where the tests' process logs go: `target/e2e-logs`.
pub fn log_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test binary has a path");
    let target = exe.ancestors().nth(3).expect("target/<profile>/deps/<exe>");
    let dir = target.join("e2e-logs");
    std::fs::create_dir_all(&dir).expect("creating target/e2e-logs");
    dir
}

/// A process started by a test, ended by its PID when dropped.
pub struct Proc {
    child: Child,
    pub name: String,
}

impl Proc {
    /// `orch run COMPONENT` serving `listener` through socket activation (fd 3), with
    /// `envs`. The test keeps its own copy of the socket, so a killed and restarted
    /// component keeps its address, as under orch. Output goes to `target/e2e-logs/NAME.log`.
    pub fn component(name: &str, component: &str, listener: &TcpListener, envs: &[(&str, &str)]) -> Self {
        Self::activated(name, listener, &["run", component], |cmd| {
            cmd.env("SERVICE_NAME", name).envs(envs.iter().copied());
        })
    }

    /// `orch ARGS` serving `listener` through socket activation (fd 3), its environment set
    /// by `configure`; output to `target/e2e-logs/NAME.log`.
    pub fn activated(name: &str, listener: &TcpListener, args: &[&str], configure: impl FnOnce(&mut Command)) -> Self {
        let fd = listener.as_raw_fd();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log_dir().join(format!("{name}.log")))
            .expect("opening the log file");
        let mut cmd = Command::new("/bin/sh");
        // LISTEN_PID must name the process that serves; the shell knows its PID as $$ and
        // exec keeps it.
        cmd.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" "$@""#]).arg(orch_bin()).args(args);
        configure(&mut cmd);
        cmd.stdin(Stdio::null()).stdout(log.try_clone().expect("cloning the log file")).stderr(log);
        // SAFETY: dup2 is async-signal-safe; it runs in the forked child before exec.
        #[allow(unsafe_code)]
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd.spawn().expect("starting orch");
        Self { child, name: name.to_owned() }
    }

    /// A process of any command.
    pub fn command(name: &str, cmd: &mut Command) -> Self {
        Self { child: cmd.spawn().expect("starting a process"), name: name.to_owned() }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` to this process.
    pub fn signal(&self, signal: Signal) {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
    }

    /// Waits for the process to exit, at most `deadline`.
    pub fn wait(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for a child") {
                return Some(status);
            }
            if start.elapsed() > deadline {
                return None;
            }
            std::thread::park_timeout(Duration::from_millis(10));
        }
    }

    /// SIGKILL, then reap.
    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        }
    }
}

/// A listening socket on 127.0.0.1 with a free port, to hand to a [`Proc`].
pub fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0");
    let addr = listener.local_addr().expect("a bound socket has an address");
    (listener, addr)
}
