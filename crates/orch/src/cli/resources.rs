//! How `orch get` and `orch describe` show `resources:`: a memory kill in the status, and
//! usage against the limits. Pure text from the API's wire types.

use kit::orch_api::{Instance, Usage};

use crate::manifest::quantity::{format_cpu, format_memory};

/// The STATUS cell: the status, and why the last process died when orch knows
/// (`backoff (last exit OOMKilled)`).
pub fn status_cell(i: &Instance) -> String {
    match i.last_exit.as_ref().and_then(|e| e.reason) {
        Some(reason) => format!("{} (last exit {})", i.status, reason.as_str()),
        None => i.status.to_string(),
    }
}

/// `describe`'s lines on usage against the limits.
pub fn usage_lines(u: &Usage) -> Vec<String> {
    let of = |used: Option<String>, limit: Option<String>| {
        format!("{} / {}", used.unwrap_or_else(|| "-".into()), limit.unwrap_or_else(|| "no limit".into()))
    };
    vec![
        format!("Memory:     {}", of(u.memory_bytes.map(mib), u.memory_limit_bytes.map(format_memory))),
        format!("CPU:        {}", of(u.cpu_millis.map(|m| format!("{m}m")), u.cpu_limit_millis.map(format_cpu))),
        format!("Pids:       {}", of(u.pids.map(|p| p.to_string()), u.pids_limit.map(|p| p.to_string()))),
        format!("Limits by:  {}", u.enforced_by),
    ]
}

/// Bytes in MiB with one decimal, as memory use reads best.
fn mib(bytes: u64) -> String {
    format!("{:.1}Mi", bytes as f64 / f64::from(1 << 20))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_reads_against_its_limits() {
        let u = Usage {
            enforced_by: "cgroup v1 (memory, cpu, cpuacct, pids)".into(),
            memory_bytes: Some(3 << 19),
            memory_limit_bytes: Some(64 << 20),
            cpu_millis: Some(198),
            cpu_limit_millis: Some(200),
            cpu_usec: Some(5),
            pids: None,
            pids_limit: None,
        };
        assert_eq!(
            usage_lines(&u),
            [
                "Memory:     1.5Mi / 64Mi",
                "CPU:        198m / 200m",
                "Pids:       - / no limit",
                "Limits by:  cgroup v1 (memory, cpu, cpuacct, pids)"
            ]
        );
    }
}
