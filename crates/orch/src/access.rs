//! Who may do what to a cluster: its two tokens, the user's record of running clusters,
//! and how the CLI finds the control token — from local knowledge only.
//!
//! Both tokens are new at every start of a control plane, written 0600 before the control
//! API listens; the old values stop working at once.
//! - `DATA_DIR/control-token`: orch's control API (every mutation, an instance's details,
//!   logs). Only the CLI (the user) has it: no child process ever gets it.
//! - `DATA_DIR/registry-token`: the registry's mutations and the balancer's admin
//!   mutations (faults, round-robin reset). Given as `ORCH_CLUSTER_TOKEN` to the built-in
//!   components and to the command services whose manifest says `registers: true`.
//!
//! The CLI never takes a data dir (and so a token) from what a server says: whoever
//! listens on the control port while orch is down would learn it. It looks, in order, at
//! `--token-file PATH`, `ORCH_CONTROL_TOKEN`, the data dir of the manifest it is given,
//! and the record `orch apply` wrote for the user: `~/.orch/clusters/<control port>.json`
//! (dir 0700, file 0600: the pid, start time and data dir of the orch that listens on that
//! port). A token read from a data dir is sent only to the control URL that the data dir's
//! live orch recorded in `orch.json`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use kit::secret::Secret;
use serde::{Deserialize, Serialize};

use crate::supervisor::start_time;

/// orch's control token, in the data dir.
pub const CONTROL_TOKEN: &str = "control-token";
/// The registry token, in the data dir.
pub const REGISTRY_TOKEN: &str = "registry-token";
/// The one token of earlier versions: removed at start.
const OLD_TOKEN: &str = "cluster-token";

/// The tokens of one run of a control plane.
pub struct Tokens {
    pub control: Secret,
    pub registry: Secret,
}

/// Writes new tokens to `data_dir` (the old ones stop working).
pub fn rotate_tokens(data_dir: &Path) -> io::Result<Tokens> {
    match fs::remove_file(data_dir.join(OLD_TOKEN)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let control = Secret::new(kit::secret::rotate(&data_dir.join(CONTROL_TOKEN))?);
    let registry = Secret::new(kit::secret::rotate(&data_dir.join(REGISTRY_TOKEN))?);
    Ok(Tokens { control, registry })
}

/// Creates `dir` (and its parents) 0700, or makes an existing one 0700; returns the
/// mode it had when it was group- or world-accessible.
pub fn private_dir(dir: &Path) -> io::Result<Option<u32>> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
    let mode = fs::metadata(dir)?.permissions().mode() & 0o7777;
    if mode & 0o077 == 0 {
        return Ok(None);
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
    Ok(Some(mode))
}

// ---------------------------------------------------------------------------------------
// The user's record of running clusters
// ---------------------------------------------------------------------------------------

/// `~/.orch/clusters/<port>.json`: which orch listens on a control port, and its data dir.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UserRecord {
    pub pid: u32,
    pub start_time: u64,
    pub data_dir: PathBuf,
    pub control_url: String,
    pub manifest: PathBuf,
}

/// The user's home (`HOME`), if set.
pub fn home() -> Option<PathBuf> {
    std::env::var_os("HOME").filter(|h| !h.is_empty()).map(PathBuf::from)
}

fn record_path(home: &Path, port: u16) -> PathBuf {
    home.join(".orch").join("clusters").join(format!("{port}.json"))
}

/// Writes the record of this process, the orch on control port `port`.
pub fn write_record(
    home: &Path,
    port: u16,
    data_dir: &Path,
    control_url: &str,
    manifest: &Path,
) -> io::Result<PathBuf> {
    let pid = std::process::id();
    let record = UserRecord {
        pid,
        start_time: start_time(pid).unwrap_or(0),
        data_dir: data_dir.to_owned(),
        control_url: control_url.to_owned(),
        manifest: manifest.to_owned(),
    };
    let path = record_path(home, port);
    let dir = path.parent().expect("a record path has a parent");
    private_dir(&home.join(".orch"))?;
    private_dir(dir)?;
    let tmp = dir.join(format!(".{port}.json.tmp-{pid}"));
    let result = (|| {
        let mut file = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(&record).map_err(io::Error::other)?)?;
        fs::rename(&tmp, &path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Removes the record of control port `port` if it is this process's.
pub fn remove_record(home: &Path, port: u16) {
    let path = record_path(home, port);
    let ours = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice::<UserRecord>(&b).ok())
        .is_some_and(|r| r.pid == std::process::id());
    if ours {
        let _ = fs::remove_file(path);
    }
}

/// The record of control port `port`, if it is the user's own private file and names a
/// live orch; else why not.
pub fn read_record(home: &Path, port: u16) -> Result<UserRecord, String> {
    let path = record_path(home, port);
    let meta = fs::symlink_metadata(&path).map_err(|e| match e.kind() {
        io::ErrorKind::NotFound => format!("no record of a cluster on port {port} ({} does not exist)", path.display()),
        _ => format!("cannot read {}: {e}", path.display()),
    })?;
    // /proc/self belongs to the process's effective user.
    let uid = fs::metadata("/proc/self").map(|m| m.uid()).map_err(|e| format!("cannot read /proc/self: {e}"))?;
    if !meta.is_file() || meta.uid() != uid || meta.mode() & 0o077 != 0 {
        return Err(format!(
            "{} is not a private file of yours (it must be a regular file of uid {uid}, mode 0600); not trusting it",
            path.display()
        ));
    }
    let record: UserRecord = fs::read(&path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| format!("{} is not a cluster record", path.display()))?;
    if start_time(record.pid) != Some(record.start_time) {
        return Err(format!("the orch recorded in {} (pid {}) is not running", path.display(), record.pid));
    }
    Ok(record)
}

// ---------------------------------------------------------------------------------------
// The CLI's control token
// ---------------------------------------------------------------------------------------

/// What the CLI knows locally about where the control token is.
#[derive(Clone, Debug, Default)]
pub struct Sources {
    /// `--token-file PATH`.
    pub token_file: Option<PathBuf>,
    /// `ORCH_CONTROL_TOKEN`.
    pub token: Option<Secret>,
    /// The data dir of the manifest the CLI was given (`--manifest FILE`, `apply FILE`).
    pub data_dir: Option<PathBuf>,
    /// Where the user's records are (`HOME`).
    pub home: Option<PathBuf>,
}

impl Sources {
    /// The sources of this process: `ORCH_CONTROL_TOKEN` and `HOME` from the environment.
    pub fn from_env(token_file: Option<PathBuf>, data_dir: Option<PathBuf>) -> Self {
        let token = std::env::var("ORCH_CONTROL_TOKEN").ok().map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        Self { token_file, token: token.map(Secret::new), data_dir, home: home() }
    }

    /// The control token to send to the orch at `url`, or what the user should do.
    pub fn control_token(&self, url: &str) -> Result<Secret, String> {
        if let Some(path) = &self.token_file {
            return read_token(path);
        }
        if let Some(token) = &self.token {
            return Ok(token.clone());
        }
        let port = loopback_port(url);
        let found = match (&self.data_dir, port, &self.home) {
            (Some(dir), _, _) => token_of_data_dir(dir, url),
            (None, Some(port), Some(home)) => {
                read_record(home, port).and_then(|record| token_of_data_dir(&record.data_dir, url))
            }
            (None, Some(_), None) => Err("HOME is not set, so there is no record of running clusters".to_owned()),
            (None, None, _) => Err(format!("{url} is not a loopback address with a port")),
        };
        found.map_err(|why| {
            format!(
                "no control token for orch at {url}: {why}. Give the cluster's manifest (--manifest FILE), \
                 or its token (--token-file DATA_DIR/control-token, or ORCH_CONTROL_TOKEN); \
                 `orch apply` records the clusters it runs in ~/.orch/clusters/"
            )
        })
    }
}

fn read_token(path: &Path) -> Result<Secret, String> {
    let text =
        fs::read_to_string(path).map_err(|e| format!("cannot read the control token {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("the control token {} is empty", path.display()));
    }
    Ok(Secret::new(token))
}

/// The control token of `data_dir`, if the live orch of that data dir listens at `url`.
fn token_of_data_dir(data_dir: &Path, url: &str) -> Result<Secret, String> {
    let running = crate::state::running(data_dir)
        .ok_or_else(|| format!("no orch runs on the data dir {}", data_dir.display()))?;
    let same = loopback_port(&running.control_url).is_some_and(|p| Some(p) == loopback_port(url));
    if !same {
        return Err(format!(
            "the orch of the data dir {} listens at {}, not at {url}",
            data_dir.display(),
            running.control_url
        ));
    }
    read_token(&data_dir.join(CONTROL_TOKEN))
}

/// The port of a loopback URL (`127.0.0.1`, `localhost`, `::1`).
pub fn loopback_port(url: &str) -> Option<u16> {
    let url = reqwest::Url::parse(url).ok()?;
    let host = url.host_str()?;
    let loopback = host.eq_ignore_ascii_case("localhost")
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    loopback.then(|| url.port_or_known_default()).flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ports() {
        assert_eq!(loopback_port("http://127.0.0.1:3006"), Some(3006));
        assert_eq!(loopback_port("http://localhost:41/"), Some(41));
        assert_eq!(loopback_port("http://[::1]:7"), Some(7));
        assert_eq!(loopback_port("http://example.com:3006"), None);
        assert_eq!(loopback_port("http://10.0.0.1:3006"), None);
        assert_eq!(loopback_port("nonsense"), None);
    }

    #[test]
    fn records_are_private_and_name_a_live_orch() {
        let home = tempfile::tempdir().unwrap();
        let data = home.path().join("data");
        let path = write_record(home.path(), 4100, &data, "http://127.0.0.1:4100", Path::new("/m.yaml")).unwrap();
        let mode = |p: &Path| fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(mode(&home.path().join(".orch")), 0o700);
        let record = read_record(home.path(), 4100).unwrap();
        assert_eq!((record.pid, record.data_dir), (std::process::id(), data));

        // Readable by others: not trusted.
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        assert!(read_record(home.path(), 4100).unwrap_err().contains("not a private file"));
        fs::set_permissions(&path, fs::Permissions::from_mode(0o600)).unwrap();
        // A pid that no longer names the recorded process: not running.
        let mut stale = read_record(home.path(), 4100).unwrap();
        stale.start_time += 1;
        fs::write(&path, serde_json::to_vec(&stale).unwrap()).unwrap();
        assert!(read_record(home.path(), 4100).unwrap_err().contains("is not running"));
        assert!(read_record(home.path(), 4101).unwrap_err().contains("no record"));

        remove_record(home.path(), 4100);
        assert!(!path.exists());
    }

    #[test]
    fn a_token_file_or_the_environment_wins_and_nothing_is_guessed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("t"), "abc\n").unwrap();
        let sources = Sources { token_file: Some(dir.path().join("t")), ..Sources::default() };
        assert_eq!(sources.control_token("http://127.0.0.1:1").unwrap().expose(), "abc");
        let sources = Sources { token: Some(Secret::new("xyz")), ..Sources::default() };
        assert_eq!(sources.control_token("http://127.0.0.1:1").unwrap().expose(), "xyz");
        // A data dir with a token but no live orch: no token, and the message says what to do.
        fs::write(dir.path().join(CONTROL_TOKEN), "secret").unwrap();
        let sources = Sources { data_dir: Some(dir.path().to_owned()), ..Sources::default() };
        let err = sources.control_token("http://127.0.0.1:1").unwrap_err();
        assert!(err.contains("no orch runs on the data dir") && err.contains("--token-file"), "{err}");
        let sources = Sources { home: Some(dir.path().to_owned()), ..Sources::default() };
        assert!(sources.control_token("http://127.0.0.1:1").unwrap_err().contains("no record"));
    }
}
