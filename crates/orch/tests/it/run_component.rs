//! `orch run COMPONENT`: one component in the foreground, by hand or socket-activated.

use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use kit::testing::eventually;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const ORCH: &str = env!("CARGO_BIN_EXE_orch");

/// Waits for `child` to exit, at most `deadline`; kills it (by its PID) if it does not.
fn wait_exit(child: Child, deadline: Duration) -> std::process::ExitStatus {
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut child = child;
        let _ = tx.send(child.wait());
    });
    match rx.recv_timeout(deadline) {
        Ok(status) => status.unwrap(),
        Err(_) => {
            let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            panic!("process {pid} did not exit within {deadline:?}");
        }
    }
}

#[tokio::test]
async fn serves_from_a_socket_passed_by_socket_activation() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let fd = listener.as_raw_fd();

    // As systemd (and orch) do it: the socket becomes fd 3 of the child, and LISTEN_PID
    // names the child, which the shell knows as $$ before it execs orch.
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", r#"LISTEN_PID=$$ LISTEN_FDS=1 exec "$0" run registry"#, ORCH])
        .env("SERVICE_NAME", "registry-activated")
        .env("PORT", "1") // ignored: the inherited socket wins
        .stdout(Stdio::null())
        .stderr(Stdio::null());
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
    let child = cmd.spawn().unwrap();
    drop(listener); // only the child holds the socket now

    let url = format!("http://{addr}/health");
    let body: serde_json::Value = eventually(Duration::from_secs(10), "the activated registry to answer", || async {
        let res = reqwest::get(&url).await.ok()?;
        res.json().await.ok()
    })
    .await;
    assert_eq!(body["status"], "healthy");
    assert_eq!(body["service"], "registry-activated");

    kill(Pid::from_raw(child.id() as i32), Signal::SIGTERM).unwrap();
    let status = wait_exit(child, Duration::from_secs(10));
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let out = Command::new(ORCH).args(["run", "registry"]).env("PORT", "http").output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"invalid PORT="http""#), "{stderr}");
}

#[test]
fn unknown_component_lists_the_known_ones() {
    let out = Command::new(ORCH).args(["run", "mongodb"]).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("registry") && stderr.contains("compute"), "{stderr}");
}
