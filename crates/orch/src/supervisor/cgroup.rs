//! Kernel-enforced resource limits: a cgroup per instance, below the cgroup orch runs in.
//!
//! Theory of operation. [`Cgroups::discover`] reads `/proc/self/cgroup` (where orch runs)
//! and `/proc/self/mountinfo` (where each hierarchy is mounted), then makes one parent,
//! `orch-<tag>` (the tag names the data dir), directly below orch's own cgroup and nowhere
//! else: cgroup v2 when the unified hierarchy offers the memory, cpu and pids controllers
//! and they can be delegated to the parent; otherwise cgroup v1, one parent in each of the
//! memory, cpu, cpuacct and pids hierarchies that is writable (memory at least). A parent
//! left by a crashed orch with the same data dir is emptied of its instance cgroups first.
//! Each instance gets `<parent>/<instance>`; its process joins before `exec` (the spawner
//! writes `0`, "myself", into each `cgroup.procs` between fork and exec), so everything it
//! forks is counted. The parents are removed when [`Cgroups`] is dropped (orch's exit).
//!
//! Nothing here decides: the controller asks for an instance's cgroup, its limits, usage
//! and OOM kills. Every path is derived from the layout, so tests can lay out a fake
//! hierarchy in a temporary directory.

use std::io;
use std::path::{Path, PathBuf};

use crate::manifest::Resources;

/// The CFS period, µs: a quota of `cpu` millicores is `cpu * PERIOD / 1000` µs per period.
const PERIOD_US: u64 = 100_000;

/// Which hierarchy a directory belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ctl {
    /// cgroup v2: every controller in one directory.
    Unified,
    Memory,
    Cpu,
    Cpuacct,
    Pids,
}

impl Ctl {
    fn v1_name(self) -> &'static str {
        match self {
            Ctl::Unified => "",
            Ctl::Memory => "memory",
            Ctl::Cpu => "cpu",
            Ctl::Cpuacct => "cpuacct",
            Ctl::Pids => "pids",
        }
    }
}

/// The parents orch owns, one per hierarchy (one in all for v2).
#[derive(Debug)]
pub struct Cgroups {
    parents: Vec<(Ctl, PathBuf)>,
}

/// One instance's cgroup (a directory per hierarchy).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InstanceCgroup {
    dirs: Vec<(Ctl, PathBuf)>,
}

/// What an instance uses now, from its cgroup's own counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters {
    pub memory_bytes: Option<u64>,
    /// CPU time used since the cgroup was made, µs.
    pub cpu_usec: Option<u64>,
    pub pids: Option<u64>,
}

impl Cgroups {
    /// The parents below orch's own cgroup, v2 where usable, else v1; `None` when no
    /// hierarchy with a memory controller is writable (the caller falls back to a watchdog).
    pub fn discover(tag: &str) -> Option<Self> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
        let name = format!("orch-{tag}");
        Self::unified(&own, &mounts, &name).or_else(|| Self::v1(&own, &mounts, &name))
    }

    /// cgroup v2: usable when orch's own v2 cgroup offers memory, cpu and pids and the new
    /// parent can enable them for its children.
    fn unified(own: &str, mounts: &str, name: &str) -> Option<Self> {
        let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mount = mounts_of(mounts).into_iter().find(|m| m.fstype == "cgroup2")?;
        let dir = mount.dir_of(path)?;
        let offered = std::fs::read_to_string(dir.join("cgroup.controllers")).ok()?;
        if !["memory", "cpu", "pids"].iter().all(|c| offered.split_whitespace().any(|o| o == *c)) {
            return None;
        }
        let enabled = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if !["memory", "cpu", "pids"].iter().all(|c| enabled.split_whitespace().any(|o| o == *c))
            && std::fs::write(dir.join("cgroup.subtree_control"), "+memory +cpu +pids").is_err()
        {
            return None;
        }
        let parent = dir.join(name);
        let made = Self::make(vec![(Ctl::Unified, parent.clone())])?;
        std::fs::write(parent.join("cgroup.subtree_control"), "+memory +cpu +pids").ok()?;
        Some(made)
    }

    /// cgroup v1: a parent in each writable hierarchy of memory, cpu, cpuacct and pids.
    fn v1(own: &str, mounts: &str, name: &str) -> Option<Self> {
        let mounts = mounts_of(mounts);
        let mut parents = Vec::new();
        for ctl in [Ctl::Memory, Ctl::Cpu, Ctl::Cpuacct, Ctl::Pids] {
            let c = ctl.v1_name();
            let path = own.lines().find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, list, path) = (parts.next()?, parts.next()?, parts.next()?);
                list.split(',').any(|x| x == c).then_some(path)
            });
            let mount = mounts.iter().find(|m| m.fstype == "cgroup" && m.options.split(',').any(|o| o == c));
            if let (Some(path), Some(mount)) = (path, mount)
                && let Some(dir) = mount.dir_of(path)
            {
                let parent = dir.join(name);
                if std::fs::create_dir_all(&parent).is_ok() && parent.join("cgroup.procs").exists() {
                    parents.push((ctl, parent));
                }
            }
        }
        if !parents.iter().any(|(c, _)| *c == Ctl::Memory) {
            for (_, p) in &parents {
                let _ = std::fs::remove_dir(p);
            }
            return None;
        }
        Self::make(parents)
    }

    /// Takes `parents` as orch's own: made if missing, emptied of a crashed run's instances.
    pub fn make(parents: Vec<(Ctl, PathBuf)>) -> Option<Self> {
        for (_, p) in &parents {
            std::fs::create_dir_all(p).ok()?;
        }
        let cgroups = Self { parents };
        for (_, parent) in &cgroups.parents {
            for stray in subdirs(parent) {
                if let Err(e) = std::fs::remove_dir(&stray) {
                    tracing::warn!(cgroup = %stray.display(), "cannot remove a stray cgroup: {e}");
                }
            }
        }
        Some(cgroups)
    }

    /// "cgroup v2" or "cgroup v1 (memory, cpu, cpuacct, pids)": what enforces the limits.
    pub fn describe(&self) -> String {
        if self.parents.iter().any(|(c, _)| *c == Ctl::Unified) {
            return "cgroup v2".to_owned();
        }
        let names: Vec<&str> = self.parents.iter().map(|(c, _)| c.v1_name()).collect();
        format!("cgroup v1 ({})", names.join(", "))
    }

    /// Limits in `resources` that no hierarchy here can enforce.
    pub fn unenforced(&self, resources: &Resources) -> Vec<&'static str> {
        let has = |ctl: Ctl| self.parents.iter().any(|(c, _)| *c == ctl || *c == Ctl::Unified);
        let mut missing = Vec::new();
        if resources.cpu.is_some() && !has(Ctl::Cpu) {
            missing.push("cpu");
        }
        if resources.pids.is_some() && !has(Ctl::Pids) {
            missing.push("pids");
        }
        missing
    }

    /// The cgroup of `instance` with `resources` set (made if missing).
    pub fn prepare(&self, instance: &str, resources: &Resources) -> io::Result<InstanceCgroup> {
        let dirs: Vec<(Ctl, PathBuf)> = self.parents.iter().map(|(c, p)| (*c, p.join(instance))).collect();
        for (_, dir) in &dirs {
            std::fs::create_dir_all(dir)?;
        }
        let cgroup = InstanceCgroup { dirs };
        cgroup.set_limits(resources).map_err(io::Error::other)?;
        Ok(cgroup)
    }
}

impl Drop for Cgroups {
    /// orch exits: its instances' cgroups (empty by now) and the parents go.
    /// Processes killed a moment ago may still be leaving: a short, bounded wait for them.
    fn drop(&mut self) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        loop {
            let left: Vec<PathBuf> =
                self.parents.iter().flat_map(|(_, p)| subdirs(p)).filter(|d| std::fs::remove_dir(d).is_err()).collect();
            if left.is_empty() || std::time::Instant::now() >= deadline {
                for dir in left {
                    tracing::warn!(cgroup = %dir.display(), "an instance's cgroup is still in use at exit");
                }
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        for (_, parent) in &self.parents {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

impl InstanceCgroup {
    fn dir(&self, ctl: Ctl) -> Option<&Path> {
        self.dirs.iter().find(|(c, _)| *c == ctl || *c == Ctl::Unified).map(|(_, d)| d.as_path())
    }

    fn unified(&self) -> bool {
        self.dirs.iter().any(|(c, _)| *c == Ctl::Unified)
    }

    /// The `cgroup.procs` files a process writes itself into to join (one per hierarchy).
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.dirs.iter().map(|(_, d)| d.join("cgroup.procs")).collect()
    }

    /// Sets every limit (`None`: unlimited). A memory limit below what is in use now is
    /// refused by v1 (the error says so); the other limits stay set.
    pub fn set_limits(&self, r: &Resources) -> Result<(), String> {
        let mut errors = Vec::new();
        let mut write = |dir: Option<&Path>, file: &str, value: String| {
            if let Some(dir) = dir
                && let Err(e) = std::fs::write(dir.join(file), &value)
            {
                errors.push(format!("{file} = {value}: {e}"));
            }
        };
        let v2 = self.unified();
        let unlimited = |v2: bool| if v2 { "max".to_owned() } else { "-1".to_owned() };
        let memory = r.memory.map_or_else(|| unlimited(v2), |b| b.to_string());
        write(self.dir(Ctl::Memory), if v2 { "memory.max" } else { "memory.limit_in_bytes" }, memory);
        if v2 {
            let quota = r.cpu.map_or_else(|| "max".to_owned(), |m| (m * PERIOD_US / 1000).max(1000).to_string());
            write(self.dir(Ctl::Cpu), "cpu.max", format!("{quota} {PERIOD_US}"));
        } else {
            write(self.dir(Ctl::Cpu), "cpu.cfs_period_us", PERIOD_US.to_string());
            let quota = r.cpu.map_or_else(|| "-1".to_owned(), |m| (m * PERIOD_US / 1000).max(1000).to_string());
            write(self.dir(Ctl::Cpu), "cpu.cfs_quota_us", quota);
        }
        write(self.dir(Ctl::Pids), "pids.max", r.pids.map_or_else(|| "max".to_owned(), |p| p.to_string()));
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Memory, CPU time and processes now.
    pub fn counters(&self) -> Counters {
        let v2 = self.unified();
        let memory_bytes = self
            .dir(Ctl::Memory)
            .and_then(|d| read_u64(&d.join(if v2 { "memory.current" } else { "memory.usage_in_bytes" })));
        let cpu_usec = if v2 {
            self.dir(Ctl::Cpu).and_then(|d| keyed(&d.join("cpu.stat"), "usage_usec"))
        } else {
            self.dir(Ctl::Cpuacct).and_then(|d| read_u64(&d.join("cpuacct.usage"))).map(|ns| ns / 1000)
        };
        let pids = self.dir(Ctl::Pids).and_then(|d| read_u64(&d.join("pids.current")));
        Counters { memory_bytes, cpu_usec, pids }
    }

    /// How many processes the kernel's OOM killer has killed in this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let file = if self.unified() { "memory.events" } else { "memory.oom_control" };
        self.dir(Ctl::Memory).and_then(|d| keyed(&d.join(file), "oom_kill")).unwrap_or(0)
    }

    /// The processes still in the cgroup (what the instance forked and left behind).
    pub fn pids(&self) -> Vec<u32> {
        let mut pids: Vec<u32> = self
            .dirs
            .iter()
            .filter_map(|(_, d)| std::fs::read_to_string(d.join("cgroup.procs")).ok())
            .flat_map(|text| text.lines().filter_map(|l| l.trim().parse().ok()).collect::<Vec<u32>>())
            .collect();
        pids.sort_unstable();
        pids.dedup();
        pids
    }

    /// Removes the cgroup; false while processes remain in it.
    pub fn remove(&self) -> bool {
        self.dirs.iter().fold(true, |ok, (_, d)| (std::fs::remove_dir(d).is_ok() || !d.exists()) && ok)
    }
}

/// The parent's tag for data dir `dir` (FNV-1a of its path): the same data dir, the same
/// parent, so a crashed run's cgroups are found by the next.
pub fn tag_of(dir: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let hash = dir
        .as_os_str()
        .as_bytes()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3));
    format!("{hash:016x}")
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The value of `key` in a flat keyed file (`oom_kill 3`).
fn keyed(path: &Path, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse().ok())
}

fn subdirs(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir)
        .map(|rd| rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| e.path()).collect())
        .unwrap_or_default()
}

/// One line of `/proc/self/mountinfo`: what is mounted where.
struct Mount {
    /// The directory of the hierarchy that is mounted (`/` for its root).
    root: String,
    point: PathBuf,
    fstype: String,
    options: String,
}

impl Mount {
    /// The directory of cgroup `path` (as `/proc/self/cgroup` names it) under this mount.
    fn dir_of(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" { path } else { path.strip_prefix(self.root.as_str())? };
        let rel = rel.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rel.is_empty() { self.point.clone() } else { self.point.join(rel) })
    }
}

fn mounts_of(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let mut right = right.split(' ');
            let fstype = right.next()?.to_owned();
            let options = right.nth(1).unwrap_or_default().to_owned();
            Some(Mount { root: left.get(3)?.to_string(), point: PathBuf::from(left.get(4)?), fstype, options })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MOUNTS: &str = "\
30 25 0:27 / /sys/fs/cgroup/unified rw,relatime shared:6 - cgroup2 cgroup2 rw
35 25 0:32 / /sys/fs/cgroup/memory rw,relatime shared:15 - cgroup cgroup rw,memory
36 25 0:33 /nested /sys/fs/cgroup/cpu,cpuacct rw,relatime shared:16 - cgroup cgroup rw,cpu,cpuacct
";

    #[test]
    fn mountinfo_places_each_hierarchy() {
        let mounts = mounts_of(MOUNTS);
        assert_eq!(mounts.len(), 3);
        assert_eq!(mounts[0].fstype, "cgroup2");
        assert_eq!(mounts[1].dir_of("/a/b"), Some(PathBuf::from("/sys/fs/cgroup/memory/a/b")));
        assert_eq!(mounts[1].dir_of("/"), Some(PathBuf::from("/sys/fs/cgroup/memory")));
        assert_eq!(mounts[2].options, "rw,cpu,cpuacct");
        assert_eq!(mounts[2].dir_of("/nested/x"), Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x")));
        assert_eq!(mounts[2].dir_of("/elsewhere"), None, "a cgroup outside the mounted part has no directory");
        assert_eq!(mounts[1].dir_of("/../etc"), None);
    }

    fn fake(files: &[&str]) -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let parent = tmp.path().join("orch-x");
        std::fs::create_dir_all(&parent).unwrap();
        for f in files {
            std::fs::write(parent.join(f), "").unwrap();
        }
        (tmp, parent)
    }

    #[test]
    fn v2_limits_and_counters_are_its_files() {
        let (_tmp, parent) = fake(&[]);
        std::fs::create_dir(parent.join("stray-1")).unwrap();
        let cgroups = Cgroups::make(vec![(Ctl::Unified, parent.clone())]).unwrap();
        assert!(!parent.join("stray-1").exists(), "a crashed run's cgroup is removed");
        assert_eq!(cgroups.describe(), "cgroup v2");
        let r = Resources { memory: Some(256 << 20), cpu: Some(200), pids: Some(64) };
        assert!(cgroups.unenforced(&r).is_empty());
        let cg = cgroups.prepare("web-1", &r).unwrap();
        let dir = parent.join("web-1");
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap();
        assert_eq!(read("memory.max"), (256u64 << 20).to_string());
        assert_eq!(read("cpu.max"), "20000 100000");
        assert_eq!(read("pids.max"), "64");
        cg.set_limits(&Resources::default()).unwrap();
        assert_eq!(
            (read("memory.max"), read("cpu.max"), read("pids.max")),
            ("max".into(), "max 100000".into(), "max".into())
        );
        std::fs::write(dir.join("memory.current"), "1234\n").unwrap();
        std::fs::write(dir.join("cpu.stat"), "usage_usec 500\nuser_usec 400\n").unwrap();
        std::fs::write(dir.join("memory.events"), "low 0\noom 2\noom_kill 1\n").unwrap();
        std::fs::write(dir.join("cgroup.procs"), "12\n7\n").unwrap();
        assert_eq!(cg.counters(), Counters { memory_bytes: Some(1234), cpu_usec: Some(500), pids: None });
        assert_eq!(cg.oom_kills(), 1);
        assert_eq!(cg.pids(), vec![7, 12]);
        assert_eq!(cg.procs_files(), vec![dir.join("cgroup.procs")]);
    }

    #[test]
    fn v1_limits_and_counters_are_per_hierarchy() {
        let tmp = tempfile::tempdir().unwrap();
        let parents: Vec<(Ctl, PathBuf)> =
            [Ctl::Memory, Ctl::Cpuacct].iter().map(|c| (*c, tmp.path().join(c.v1_name()).join("orch-x"))).collect();
        let cgroups = Cgroups::make(parents).unwrap();
        assert_eq!(cgroups.describe(), "cgroup v1 (memory, cpuacct)");
        let r = Resources { memory: Some(8 << 20), cpu: Some(500), pids: Some(10) };
        assert_eq!(cgroups.unenforced(&r), vec!["cpu", "pids"]);
        let cg = cgroups.prepare("web-1", &r).unwrap();
        let mem = tmp.path().join("memory/orch-x/web-1");
        assert_eq!(std::fs::read_to_string(mem.join("memory.limit_in_bytes")).unwrap(), (8u64 << 20).to_string());
        std::fs::write(mem.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        std::fs::write(tmp.path().join("cpuacct/orch-x/web-1/cpuacct.usage"), "2500000\n").unwrap();
        assert_eq!(cg.oom_kills(), 3);
        assert_eq!(cg.counters().cpu_usec, Some(2500));
        assert_eq!(cg.procs_files().len(), 2);
    }
}
