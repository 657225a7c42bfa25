//! The checks' pure rules: port ranges that clash, dependency order and its cycles, names,
//! paths, and finding a command's program.

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::run::Component;

/// Overlapping port ranges and clashes with the control port, reported through `report`
/// with the index of the later service.
pub(super) fn port_problems(
    ranges: &[(String, u32, Option<u16>)],
    control_port: u16,
    mut report: impl FnMut(usize, String, String),
) {
    let span = |(_, n, p): &(String, u32, Option<u16>)| -> Option<(u32, u32)> {
        let p = u32::from((*p)?);
        (*n > 0).then(|| (p, p + n - 1))
    };
    let show = |(a, b): (u32, u32)| if a == b { format!("port {a}") } else { format!("ports {a}-{b}") };
    for (i, r) in ranges.iter().enumerate() {
        let Some((lo, hi)) = span(r) else { continue };
        if control_port != 0 && (lo..=hi).contains(&u32::from(control_port)) {
            report(
                i,
                format!("{} of {:?} include orch's control port {control_port}", show((lo, hi)), r.0),
                "move the service, or set spec.controlPort to another port".to_owned(),
            );
        }
        for other in &ranges[..i] {
            let Some((olo, ohi)) = span(other) else { continue };
            if lo <= ohi && olo <= hi {
                report(
                    i,
                    format!("{} of {:?} overlap {} of {:?}", show((lo, hi)), r.0, show((olo, ohi)), other.0),
                    "give each service its own port range (instance n listens on port + n - 1)".to_owned(),
                );
            }
        }
    }
}

/// Dependency order (indices), stable in file order; `Err(cycle)` names a cycle's members.
pub(super) fn topo_order(graph: &[(&str, &[String])]) -> Result<Vec<usize>, Vec<usize>> {
    let index: HashMap<&str, usize> = graph.iter().enumerate().map(|(i, (n, _))| (*n, i)).collect();
    let deps: Vec<Vec<usize>> =
        graph.iter().map(|(_, d)| d.iter().filter_map(|d| index.get(d.as_str()).copied()).collect()).collect();
    // 0 = unvisited, 1 = on the stack, 2 = done.
    let mut state = vec![0u8; graph.len()];
    let mut order = Vec::with_capacity(graph.len());
    fn visit(
        i: usize,
        deps: &[Vec<usize>],
        state: &mut [u8],
        stack: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), Vec<usize>> {
        match state[i] {
            2 => return Ok(()),
            1 => {
                let start = stack.iter().position(|&s| s == i).unwrap_or(0);
                return Err(stack[start..].to_vec());
            }
            _ => {}
        }
        state[i] = 1;
        stack.push(i);
        for &d in &deps[i] {
            visit(d, deps, state, stack, order)?;
        }
        stack.pop();
        state[i] = 2;
        order.push(i);
        Ok(())
    }
    for i in 0..graph.len() {
        visit(i, &deps, &mut state, &mut Vec::new(), &mut order)?;
    }
    Ok(order)
}

/// `path` without `.` and `..` components (lexically: the directories may not exist yet).
pub(super) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for part in path.components() {
        match part {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

pub(super) fn valid_name(name: &str, max: usize) -> bool {
    !name.is_empty()
        && name.len() <= max
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub(super) fn component_names() -> String {
    Component::ALL.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

/// `program` as an absolute path: a path (relative to `base`) or a name found on `PATH`.
pub(super) fn find_program(program: &str, base: &Path) -> Result<PathBuf, String> {
    let executable = |p: &Path| p.is_file() && p.metadata().is_ok_and(|m| m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        let path = normalize(&base.join(program));
        return if executable(&path) {
            Ok(path)
        } else if path.exists() {
            Err(format!("command {program:?} is not an executable file"))
        } else {
            Err(format!("command {program:?} does not exist ({})", path.display()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
        .ok_or_else(|| format!("command {program:?} not found on PATH"))
}
