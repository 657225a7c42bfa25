//! Starting a child process: socket activation, its own process group, death with orch.
//!
//! Theory of operation. The listening socket is bound by orch and must become fd 3 of the
//! child, with `LISTEN_PID` naming the child itself — a pid known only after `fork`. Between
//! `fork` and `exec` only async-signal-safe calls are allowed (no allocation), and std's
//! `Command` has captured the environment before forking. So the whole `argv` and `envp`
//! are built as C strings here, before the fork, with a fixed-size placeholder for
//! `LISTEN_PID`'s digits; in the child, a `pre_exec` hook writes `getpid()` into the
//! placeholder, moves the socket to fd 3, asks the kernel to SIGKILL the child when orch
//! dies (`PR_SET_PDEATHSIG`), and calls `execve` itself. std has already redirected
//! stdio, changed directory and made a new process group (so a Ctrl-C in the terminal
//! reaches orch only, and orch stops children in order). If `execve` fails, the hook
//! returns the error and std reports it to the parent as the spawn error.
//!
//! `PR_SET_PDEATHSIG` fires when the *thread* that forked exits, not the process. Every
//! child is therefore forked by one [`SpawnThread`] that lives as long as orch (never a
//! pooled thread, whose exit would kill the children).
//!
//! The controller sees processes through the [`Spawner`] trait (start one, signal one),
//! which [`SpawnThread`] implements for real and `supervisor::double` for the
//! controller's tests, without processes.

use std::ffi::{CString, OsStr};
use std::future::Future;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::pin::Pin;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use nix::sys::signal::Signal;
use tokio::io::AsyncRead;
use tokio::sync::oneshot;

/// Everything needed to start one process.
#[derive(Clone, Debug)]
pub struct LaunchSpec {
    pub program: PathBuf,
    /// `argv[0]`, as `ps` shows it.
    pub argv0: String,
    pub args: Vec<String>,
    /// The complete environment (nothing else is inherited).
    pub env: Vec<(String, String)>,
    pub cwd: PathBuf,
    /// Passed as fd 3 with `LISTEN_FDS=1` and `LISTEN_PID=<pid>`.
    pub socket: Option<Arc<TcpListener>>,
    /// `cgroup.procs` files the child writes itself into before `exec` (see
    /// [`cgroup`](super::cgroup)); empty: it stays in orch's cgroup.
    pub cgroups: Vec<PathBuf>,
}

/// A started process.
#[derive(Debug)]
pub struct Spawned {
    pub child: tokio::process::Child,
    pub pid: u32,
}

/// A boxed future that can move between tasks.
pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;
/// A child's output stream.
pub type Output = Pin<Box<dyn AsyncRead + Send>>;

/// A started process as the controller holds it, whoever started it.
pub struct Child {
    pub pid: u32,
    pub stdout: Option<Output>,
    pub stderr: Option<Output>,
    /// Resolves once the process has exited (and is reaped).
    pub exit: BoxFuture<io::Result<ExitStatus>>,
}

/// Starts processes and signals them: the seam between the controller and the OS.
pub trait Spawner: Send + Sync + 'static {
    /// Starts a process as `spec` says.
    fn spawn(&self, spec: LaunchSpec) -> BoxFuture<io::Result<Child>>;
    /// Sends `signal` to the process group that `pid` leads (see
    /// [`signal_group`](super::signal_group)).
    fn signal(&self, pid: u32, signal: Signal);
}

impl Spawner for SpawnThread {
    fn spawn(&self, spec: LaunchSpec) -> BoxFuture<io::Result<Child>> {
        let this = self.clone();
        Box::pin(async move {
            let Spawned { mut child, pid } = this.start_process(spec).await?;
            let stdout = child.stdout.take().map(|o| Box::pin(o) as Output);
            let stderr = child.stderr.take().map(|e| Box::pin(e) as Output);
            Ok(Child { pid, stdout, stderr, exit: Box::pin(async move { child.wait().await }) })
        })
    }

    fn signal(&self, pid: u32, signal: Signal) {
        super::signal_group(pid, signal);
    }
}

struct Job {
    spec: LaunchSpec,
    reply: oneshot::Sender<io::Result<Spawned>>,
}

/// The one thread that forks every child; see the module docs.
#[derive(Clone)]
pub struct SpawnThread {
    jobs: std_mpsc::Sender<Job>,
}

impl SpawnThread {
    /// Starts the spawner thread; children are registered with `runtime` for reaping.
    pub fn start(runtime: tokio::runtime::Handle) -> io::Result<Self> {
        let (jobs, rx) = std_mpsc::channel::<Job>();
        std::thread::Builder::new().name("orch-spawner".into()).spawn(move || {
            let _guard = runtime.enter();
            while let Ok(job) = rx.recv() {
                let _ = job.reply.send(spawn(job.spec));
            }
            // Never exit while orch runs: the exit of this thread would kill every child.
            loop {
                std::thread::park();
            }
        })?;
        Ok(Self { jobs })
    }

    /// Forks and execs `spec` on the thread.
    pub async fn start_process(&self, spec: LaunchSpec) -> io::Result<Spawned> {
        let (reply, rx) = oneshot::channel();
        self.jobs.send(Job { spec, reply }).map_err(|_| io::Error::other("the spawner thread is gone"))?;
        rx.await.map_err(|_| io::Error::other("the spawner thread is gone"))?
    }
}

/// Binds a listening socket on 127.0.0.1:`port` (0: any free port) with a deep backlog, so
/// connections wait while its process restarts.
pub fn bind_listener(port: u16) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    raise_backlog(listener.as_raw_fd());
    Ok(listener)
}

#[allow(unsafe_code)]
fn raise_backlog(fd: RawFd) {
    // SAFETY: listen(2) on a socket we own; calling it again on a listening socket only
    // changes its backlog (the kernel caps it at net.core.somaxconn).
    unsafe {
        libc::listen(fd, 4096);
    }
}

const LISTEN_PID_PREFIX: &[u8] = b"LISTEN_PID=";

/// What the child needs between fork and exec, prepared before the fork.
struct Exec {
    program: CString,
    /// Owns the strings `argv` and `envp` point into.
    _strings: Vec<CString>,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    /// `LISTEN_PID=` followed by room for the digits and the NUL.
    listen_pid: Vec<u8>,
    socket: Option<RawFd>,
    parent: libc::pid_t,
    /// Open `cgroup.procs` files (close-on-exec), written `0` in the child to join.
    cgroups: Vec<std::os::fd::OwnedFd>,
    cgroup_fds: Vec<RawFd>,
}

// SAFETY: the raw pointers point into heap buffers this struct owns; they are read only in
// the forked child, which has its own copy of memory.
#[allow(unsafe_code)]
unsafe impl Send for Exec {}
#[allow(unsafe_code)]
unsafe impl Sync for Exec {}

fn cstring(s: impl AsRef<[u8]>) -> io::Result<CString> {
    CString::new(s.as_ref())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a NUL byte in a command or variable"))
}

impl Exec {
    fn prepare(spec: &LaunchSpec) -> io::Result<Self> {
        let program = cstring(spec.program.as_os_str().as_bytes())?;
        let mut strings = Vec::new();
        let mut argv = Vec::new();
        for arg in std::iter::once(spec.argv0.as_str()).chain(spec.args.iter().map(String::as_str)) {
            let c = cstring(arg)?;
            argv.push(c.as_ptr());
            strings.push(c);
        }
        argv.push(std::ptr::null());
        let mut envp = Vec::new();
        for (k, v) in &spec.env {
            if k == "LISTEN_PID" || k == "LISTEN_FDS" {
                continue;
            }
            let c = cstring(format!("{k}={v}"))?;
            envp.push(c.as_ptr());
            strings.push(c);
        }
        let mut listen_pid = LISTEN_PID_PREFIX.to_vec();
        listen_pid.resize(LISTEN_PID_PREFIX.len() + 24, 0);
        if spec.socket.is_some() {
            let c = cstring("LISTEN_FDS=1")?;
            envp.push(c.as_ptr());
            strings.push(c);
            envp.push(listen_pid.as_ptr().cast());
        }
        envp.push(std::ptr::null());
        let mut cgroups = Vec::new();
        for path in &spec.cgroups {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot join cgroup {}: {e}", path.display())))?;
            cgroups.push(std::os::fd::OwnedFd::from(file));
        }
        let cgroup_fds = cgroups.iter().map(|f| f.as_raw_fd()).collect();
        Ok(Self {
            program,
            cgroups,
            cgroup_fds,
            _strings: strings,
            argv,
            envp,
            listen_pid,
            socket: spec.socket.as_ref().map(|s| s.as_raw_fd()),
            parent: std::process::id() as libc::pid_t,
        })
    }

    /// Runs in the forked child: async-signal-safe calls only, no allocation.
    #[allow(unsafe_code)]
    fn exec(&mut self) -> io::Result<()> {
        // SAFETY: every call is async-signal-safe; the pointers are valid (see `prepare`),
        // and `listen_pid` has room for any pid's digits plus the NUL.
        unsafe {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) != 0 {
                return Err(io::Error::last_os_error());
            }
            // orch died before the line above: nobody would ever kill this child.
            if libc::getppid() != self.parent {
                libc::_exit(1);
            }
            // Join the instance's cgroups: `0` is the writing process itself.
            for fd in &self.cgroup_fds {
                if libc::write(*fd, b"0".as_ptr().cast(), 1) != 1 {
                    return Err(io::Error::last_os_error());
                }
            }
            if let Some(fd) = self.socket {
                if fd == 3 {
                    let flags = libc::fcntl(3, libc::F_GETFD);
                    if flags < 0 || libc::fcntl(3, libc::F_SETFD, flags & !libc::FD_CLOEXEC) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                } else if libc::dup2(fd, 3) < 0 {
                    return Err(io::Error::last_os_error());
                }
                let mut digits = [0u8; 20];
                let mut n = libc::getpid() as u64;
                let mut len = 0;
                loop {
                    digits[len] = b'0' + (n % 10) as u8;
                    len += 1;
                    n /= 10;
                    if n == 0 {
                        break;
                    }
                }
                let start = LISTEN_PID_PREFIX.len();
                for i in 0..len {
                    self.listen_pid[start + i] = digits[len - 1 - i];
                }
                self.listen_pid[start + len] = 0;
            }
            libc::execve(self.program.as_ptr(), self.argv.as_ptr(), self.envp.as_ptr());
        }
        Err(io::Error::last_os_error())
    }
}

/// Forks and execs `spec` (call it from the [`SpawnThread`]).
#[allow(unsafe_code)]
fn spawn(spec: LaunchSpec) -> io::Result<Spawned> {
    let mut exec = Exec::prepare(&spec)?;
    let exec_cgroups = std::mem::take(&mut exec.cgroups);
    let mut cmd = tokio::process::Command::new(OsStr::new(&spec.program));
    cmd.env_clear()
        .current_dir(&spec.cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(false);
    // SAFETY: the hook runs in the forked child and only makes async-signal-safe calls on
    // memory prepared before the fork (see `Exec::exec`).
    unsafe {
        cmd.pre_exec(move || exec.exec());
    }
    let child = cmd.spawn()?;
    let pid = child.id().ok_or_else(|| io::Error::other("the child has no pid"))?;
    // Keep the socket alive until the fork is done (the caller holds it too).
    drop(spec.socket);
    drop(exec_cgroups);
    Ok(Spawned { child, pid })
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    fn sh(script: &str, socket: Option<Arc<TcpListener>>) -> LaunchSpec {
        LaunchSpec {
            program: "/bin/sh".into(),
            argv0: "sh".into(),
            args: vec!["-c".into(), script.into()],
            env: vec![("GREETING".into(), "hi".into()), ("LISTEN_PID".into(), "1".into())],
            cwd: "/tmp".into(),
            socket,
            cgroups: Vec::new(),
        }
    }

    #[tokio::test]
    async fn socket_activation_names_the_child_itself() {
        let spawner = SpawnThread::start(tokio::runtime::Handle::current()).unwrap();
        let listener = Arc::new(bind_listener(0).unwrap());
        let port = listener.local_addr().unwrap().port();
        // The shell prints what it was given, then proves fd 3 is the socket by its port.
        let script = r#"echo "$LISTEN_PID $$ $LISTEN_FDS $GREETING $(pwd)"; readlink /proc/$$/fd/3"#;
        let mut spawned = spawner.start_process(sh(script, Some(listener.clone()))).await.unwrap();
        let mut out = String::new();
        spawned.child.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        let status = spawned.child.wait().await.unwrap();
        assert!(status.success());
        let mut lines = out.lines();
        let first: Vec<&str> = lines.next().unwrap().split(' ').collect();
        assert_eq!(first[0], spawned.pid.to_string(), "LISTEN_PID is the child's pid: {out}");
        assert_eq!(first[1], spawned.pid.to_string());
        assert_eq!(&first[2..], ["1", "hi", "/tmp"]);
        let inode = lines.next().unwrap().trim_start_matches("socket:[").trim_end_matches(']').to_owned();
        // /proc/net/tcp lists the listening socket with its inode: fd 3 is orch's socket.
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let row = table.lines().find(|l| l.split_whitespace().nth(9) == Some(inode.as_str())).unwrap();
        let local = row.split_whitespace().nth(1).unwrap();
        assert_eq!(local, format!("0100007F:{port:04X}"), "{row}");
    }

    #[tokio::test]
    async fn children_get_their_own_process_group_and_no_stray_activation() {
        let spawner = SpawnThread::start(tokio::runtime::Handle::current()).unwrap();
        let mut spawned = spawner
            .start_process(sh(r#"echo "${LISTEN_PID:-none} ${LISTEN_FDS:-none}"; exec sleep 30"#, None))
            .await
            .unwrap();
        let pid = spawned.pid;
        let mut line = [0u8; 10];
        let n = spawned.child.stdout.as_mut().unwrap().read(&mut line).await.unwrap();
        assert_eq!(&line[..n], b"none none\n");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        assert_eq!(fields[2], pid.to_string(), "the child leads its own process group");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
        spawned.child.wait().await.unwrap();
    }

    #[tokio::test]
    async fn the_child_writes_itself_into_its_cgroups_before_exec() {
        let spawner = SpawnThread::start(tokio::runtime::Handle::current()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let procs = dir.path().join("cgroup.procs");
        std::fs::write(&procs, "").unwrap();
        // A plain file stands in for cgroup.procs: `0` ("myself") is what the child writes.
        let mut spec = sh("exit 0", None);
        spec.cgroups = vec![procs.clone()];
        let mut spawned = spawner.start_process(spec).await.unwrap();
        assert!(spawned.child.wait().await.unwrap().success());
        assert_eq!(std::fs::read_to_string(&procs).unwrap(), "0");
        let mut spec = sh("exit 0", None);
        spec.cgroups = vec![dir.path().join("missing/cgroup.procs")];
        let err = spawner.start_process(spec).await.unwrap_err();
        assert!(err.to_string().contains("cannot join cgroup"), "{err}");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let spawner = SpawnThread::start(tokio::runtime::Handle::current()).unwrap();
        let mut spec = sh("true", None);
        spec.program = "/nonexistent/program".into();
        let err = spawner.start_process(spec).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotFound, "{err}");
    }
}
