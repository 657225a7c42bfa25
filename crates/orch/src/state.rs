//! What orch leaves in its data dir so that the next orch (and the CLI) can find its way:
//!
//! - `orch.lock`: held (flock) for as long as a control plane runs on this data dir; the
//!   kernel releases it when that process dies, however it dies.
//! - `orch.json`: the running orch's pid, control URL, manifest and cluster id, and the pid
//!   and start time of every child it runs. After a crash of orch (even SIGKILL) the next
//!   orch kills whatever is left of those children — only processes proven to be this
//!   cluster's: a recorded pid whose start time still matches (a recycled pid is someone
//!   else's), or a member of its process group started no earlier, and in both cases whose
//!   environment carries `ORCH_CLUSTER_ID=<the recorded id>` (orch gives every child a new
//!   random id at each start) — never anything found by name.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::Signal;
use serde::{Deserialize, Serialize};

use crate::supervisor::{is_zombie, process_group, start_time};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Record {
    pub pid: u32,
    pub start_time: u64,
    pub control_url: String,
    pub manifest: PathBuf,
    /// `ORCH_CLUSTER_ID` of every child of this run.
    #[serde(default)]
    pub cluster_id: String,
    pub children: BTreeMap<String, Child>,
}

/// The variable that marks every child of one run of orch.
pub const CLUSTER_ID_VAR: &str = "ORCH_CLUSTER_ID";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Child {
    pub pid: u32,
    pub start_time: u64,
}

/// The state file of a data dir.
pub struct StateFile {
    path: PathBuf,
    pub record: Record,
}

pub fn state_path(data_dir: &Path) -> PathBuf {
    data_dir.join("orch.json")
}

/// The record a running (or crashed) orch left in `data_dir`.
pub fn read(data_dir: &Path) -> Option<Record> {
    let text = fs::read_to_string(state_path(data_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// The record of the orch that runs on `data_dir` now (its recorded pid is alive and is
/// the same process).
pub fn running(data_dir: &Path) -> Option<Record> {
    read(data_dir).filter(|r| start_time(r.pid) == Some(r.start_time) && !is_zombie(r.pid))
}

impl StateFile {
    pub fn new(data_dir: &Path, control_url: String, manifest: PathBuf, cluster_id: String) -> Self {
        let pid = std::process::id();
        Self {
            path: state_path(data_dir),
            record: Record {
                pid,
                start_time: start_time(pid).unwrap_or(0),
                control_url,
                manifest,
                cluster_id,
                children: BTreeMap::new(),
            },
        }
    }

    pub fn child_started(&mut self, instance: &str, pid: u32) {
        let child = Child { pid, start_time: start_time(pid).unwrap_or(0) };
        self.record.children.insert(instance.to_owned(), child);
        self.save();
    }

    pub fn child_gone(&mut self, instance: &str) {
        if self.record.children.remove(instance).is_some() {
            self.save();
        }
    }

    /// Writes the file atomically (a reader never sees half of it).
    pub fn save(&self) {
        let tmp = self.path.with_extension("json.tmp");
        let result = serde_json::to_vec_pretty(&self.record)
            .map_err(io::Error::other)
            .and_then(|bytes| fs::write(&tmp, bytes))
            .and_then(|()| fs::rename(&tmp, &self.path));
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "cannot write the state file");
        }
    }

    /// Removes the file (a clean stop: nothing left to clean up).
    pub fn remove(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Takes `DATA_DIR/orch.lock`, or says which orch holds it.
pub fn lock(data_dir: &Path) -> Result<Flock<File>, String> {
    let path = data_dir.join("orch.lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|_| {
        let who = read(data_dir)
            .map(|r| format!(" (pid {}, control API {}, manifest {})", r.pid, r.control_url, r.manifest.display()))
            .unwrap_or_default();
        format!("another orch runs on the data dir {}{who}", data_dir.display())
    })
}

/// Kills what a crashed orch left behind in `data_dir` (call with the lock held); returns
/// the pids it killed.
pub fn clean_strays(data_dir: &Path) -> Vec<u32> {
    let Some(record) = read(data_dir) else { return Vec::new() };
    let mut killed = Vec::new();
    // Without an id (a record of an older orch) nothing can be proven to be ours.
    let marker = (!record.cluster_id.is_empty()).then(|| format!("{CLUSTER_ID_VAR}={}", record.cluster_id));
    let Some(marker) = marker else {
        let _ = fs::remove_file(state_path(data_dir));
        return killed;
    };
    let marked = |pid: u32| has_env_entry(pid, &marker);
    for (instance, child) in &record.children {
        if child.pid <= 1 || child.pid == std::process::id() {
            continue;
        }
        let leader = start_time(child.pid) == Some(child.start_time) && marked(child.pid);
        // A zombie is already dead (only not reaped yet): nothing to kill, nothing to report.
        if leader && !is_zombie(child.pid) {
            tracing::warn!(%instance, pid = child.pid, "killing a process left by a previous orch");
            // Only the leader: the group may hold processes that are not ours (below).
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.pid as i32), Signal::SIGKILL);
            killed.push(child.pid);
        }
        // Members of its process group that outlived it (a shell's children).
        for pid in group_members(child.pid) {
            let ours = start_time(pid).is_some_and(|t| t >= child.start_time) && marked(pid);
            if ours && pid != child.pid && pid != std::process::id() && !is_zombie(pid) {
                tracing::warn!(%instance, pid, "killing a process left by a previous orch");
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), Signal::SIGKILL);
                killed.push(pid);
            }
        }
    }
    let _ = fs::remove_file(state_path(data_dir));
    killed.sort_unstable();
    killed.dedup();
    killed
}

/// Whether the environment process `pid` started with holds the entry `entry` (`K=V`).
fn has_env_entry(pid: u32, entry: &str) -> bool {
    fs::read(format!("/proc/{pid}/environ")).is_ok_and(|env| env.split(|&b| b == 0).any(|kv| kv == entry.as_bytes()))
}

fn group_members(pgid: u32) -> Vec<u32> {
    let Ok(dir) = fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| process_group(pid) == Some(pgid))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::CommandExt;
    use std::process::Command;

    use super::*;

    #[test]
    fn the_lock_is_exclusive_and_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let mut state = StateFile::new(dir.path(), "http://127.0.0.1:1".into(), "/m.yaml".into(), "id".into());
        state.save();
        let held = lock(dir.path()).unwrap();
        let err = lock(dir.path()).unwrap_err();
        assert!(err.contains("another orch runs") && err.contains("http://127.0.0.1:1"), "{err}");
        drop(held);
        assert!(lock(dir.path()).is_ok());
        state.child_started("web-1", std::process::id());
        assert_eq!(read(dir.path()).unwrap().children["web-1"].pid, std::process::id());
        state.child_gone("web-1");
        assert!(read(dir.path()).unwrap().children.is_empty());
    }

    #[test]
    fn strays_are_killed_only_when_they_are_ours() {
        let dir = tempfile::tempdir().unwrap();
        let id = "c0ffee";
        let marked = |cmd: &mut Command| {
            cmd.env(CLUSTER_ID_VAR, id);
        };
        // A stray of the crashed orch: recorded, same start time, marked.
        let mut stray = Command::new("sleep");
        marked(stray.arg("30").process_group(0));
        let mut stray = stray.spawn().unwrap();
        // Decoys: a process group with the right start time but without the marker (a pid
        // reused by another program of the user), with another run's marker, and a marked
        // one whose start time does not match the record.
        let mut unmarked = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let mut other_run =
            Command::new("sleep").arg("30").env(CLUSTER_ID_VAR, "other").process_group(0).spawn().unwrap();
        let mut late = Command::new("sleep");
        marked(late.arg("30").process_group(0));
        let mut late = late.spawn().unwrap();
        let mut state = StateFile::new(dir.path(), String::new(), PathBuf::new(), id.into());
        state.child_started("web-1", stray.id());
        state.child_started("web-2", unmarked.id());
        state.child_started("web-3", other_run.id());
        state.record.children.insert("web-4".into(), Child { pid: late.id(), start_time: 1 });
        state.save();
        let killed = clean_strays(dir.path());
        assert_eq!(killed, vec![stray.id()]);
        assert!(!stray.wait().unwrap().success());
        for decoy in [&mut unmarked, &mut other_run, &mut late] {
            assert!(decoy.try_wait().unwrap().is_none(), "a process not proven ours is left alone");
            decoy.kill().unwrap();
            decoy.wait().unwrap();
        }
        assert!(read(dir.path()).is_none());
    }

    #[test]
    fn a_record_without_a_cluster_id_kills_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut child = Command::new("sleep").arg("30").process_group(0).spawn().unwrap();
        let mut state = StateFile::new(dir.path(), String::new(), PathBuf::new(), String::new());
        state.child_started("web-1", child.id());
        assert!(clean_strays(dir.path()).is_empty());
        assert!(child.try_wait().unwrap().is_none());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
