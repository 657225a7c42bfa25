//! The listening socket of a component.
//!
//! Under orch, the socket is bound by orch and inherited through the systemd
//! socket-activation protocol: `LISTEN_PID` names this process, `LISTEN_FDS` counts the
//! sockets, and the first one is fd 3. orch keeps its copy open while the process restarts,
//! so clients see a short delay instead of "connection refused". Run by hand, a component
//! binds `BIND_ADDR:PORT` itself (`PORT` unset or `0`: any free port).
//!
//! A server holds one file descriptor per connection, and the usual soft limit of open files
//! (1024) is far below what a server should hold: [`raise_fd_limit`] raises it to the hard
//! limit; [`listener`] and `serve` call it.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, RawFd};

use tokio::net::TcpListener;

use crate::config::{Config, Vars};

/// The first socket passed by socket activation.
pub const LISTEN_FDS_START: RawFd = 3;

/// The inherited fd, if `LISTEN_PID`/`LISTEN_FDS` say this process was given one.
pub fn activation_fd(vars: &Vars, pid: u32) -> Option<RawFd> {
    let listen_pid: u32 = vars.get("LISTEN_PID")?.trim().parse().ok()?;
    let listen_fds: u32 = vars.get("LISTEN_FDS")?.trim().parse().ok()?;
    (listen_pid == pid && listen_fds >= 1).then_some(LISTEN_FDS_START)
}

/// The listener for this component: inherited when socket activation says so, else bound.
/// Raises the open files limit first (see [`raise_fd_limit`]), for components with servers
/// of their own too.
pub async fn listener(config: &Config, vars: &Vars) -> io::Result<TcpListener> {
    raise_fd_limit();
    match activation_fd(vars, std::process::id()) {
        Some(fd) => {
            // The environment names this process; a stale LISTEN_PID from a parent won't match.
            let listener = inherit(fd)?;
            tracing::debug!(fd, addr = %listener.local_addr()?, "using inherited socket");
            Ok(listener)
        }
        None => {
            let addr = SocketAddr::new(config.bind_addr, config.port.unwrap_or(0));
            TcpListener::bind(addr).await.map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        }
    }
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit; returns the soft limit in
/// force afterwards (`None` if it cannot be read). Raising it twice is harmless.
pub fn raise_fd_limit() -> Option<u64> {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).ok()?;
    if soft >= hard {
        return Some(soft);
    }
    match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
        Ok(()) => Some(hard),
        Err(e) => {
            tracing::warn!(soft, hard, error = %e, "cannot raise the open files limit");
            Some(soft)
        }
    }
}

/// Takes ownership of an inherited listening socket.
#[allow(unsafe_code)]
pub fn inherit(fd: RawFd) -> io::Result<TcpListener> {
    // SAFETY: socket activation hands this fd to this process alone, and it is taken once;
    // `local_addr` below fails cleanly if it is not a socket.
    let std_listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    std_listener
        .local_addr()
        .map_err(|e| io::Error::new(e.kind(), format!("inherited fd {fd} is not a listening TCP socket: {e}")))?;
    std_listener.set_nonblocking(true)?;
    TcpListener::from_std(std_listener)
}

#[cfg(test)]
mod tests {
    use std::os::fd::IntoRawFd;

    use super::*;

    #[test]
    fn activation_needs_matching_pid_and_a_count() {
        let vars = |pid: &str, fds: &str| Vars::from_pairs([("LISTEN_PID", pid), ("LISTEN_FDS", fds)]);
        assert_eq!(activation_fd(&vars("42", "1"), 42), Some(3));
        assert_eq!(activation_fd(&vars("42", "2"), 42), Some(3));
        assert_eq!(activation_fd(&vars("41", "1"), 42), None);
        assert_eq!(activation_fd(&vars("42", "0"), 42), None);
        assert_eq!(activation_fd(&vars("x", "1"), 42), None);
        assert_eq!(activation_fd(&Vars::from_pairs([("LISTEN_FDS", "1")]), 42), None);
    }

    #[tokio::test]
    async fn serves_from_an_inherited_fd() {
        let bound = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = bound.local_addr().unwrap();
        let listener = inherit(bound.into_raw_fd()).unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
        let accept = tokio::spawn(async move { listener.accept().await.map(|(_, peer)| peer) });
        let client = tokio::net::TcpStream::connect(addr).await.unwrap();
        assert_eq!(accept.await.unwrap().unwrap(), client.local_addr().unwrap());
    }

    #[test]
    fn the_fd_limit_is_raised_to_the_hard_limit() {
        use nix::sys::resource::{Resource, getrlimit, setrlimit};
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        // The usual default soft limit, below the hard one where the hard one allows.
        setrlimit(Resource::RLIMIT_NOFILE, hard.min(1024), hard).unwrap();
        let soft = raise_fd_limit().unwrap();
        let (now, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        assert_eq!((soft, now), (hard, hard));
        assert_eq!(raise_fd_limit(), Some(hard));
    }

    #[test]
    fn a_file_is_not_a_socket() {
        let file = tempfile::tempfile().unwrap();
        let err = inherit(file.into_raw_fd()).unwrap_err();
        assert!(err.to_string().contains("not a listening TCP socket"), "{err}");
    }
}
