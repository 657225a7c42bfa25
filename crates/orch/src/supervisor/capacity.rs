//! What the machine allows a cluster: orch holds a few file descriptors per instance (its
//! socket, the pipes of its output, its log, its probes' connections), so the instances of a
//! manifest must fit in orch's open files limit (`RLIMIT_NOFILE`, raised to its hard limit
//! first), and the instances on automatic ports in the kernel's ephemeral port range. Checked
//! before any socket is bound, so a cluster too big for the machine changes nothing.

/// File descriptors orch holds per instance, with room to spare.
pub const FDS_PER_INSTANCE: u64 = 8;
/// File descriptors orch holds besides its instances' (its API, events, state, the runtime).
pub const FDS_BASE: u64 = 256;

/// The machine's limits that bound a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// orch's `RLIMIT_NOFILE` (soft, after raising it to the hard limit).
    pub open_files: u64,
    /// Ports in `/proc/sys/net/ipv4/ip_local_port_range`.
    pub automatic_ports: u64,
}

impl Limits {
    /// This machine's (orch's soft open files limit is raised to its hard limit).
    pub fn of_machine() -> Self {
        let open_files = kit::listen::raise_fd_limit().unwrap_or(1024);
        let automatic_ports = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|text| {
                let mut bounds = text.split_whitespace().map(|n| n.parse::<u64>().ok());
                let (low, high) = (bounds.next()??, bounds.next()??);
                Some(high.saturating_sub(low) + 1)
            })
            .unwrap_or(28_232);
        Limits { open_files, automatic_ports }
    }
}

/// Whether `instances` (of which `automatic` on automatic ports) fit in `limits`: the problem
/// and its fix when they do not.
pub fn check(instances: u64, automatic: u64, limits: Limits) -> Result<(), (String, String)> {
    let fds = FDS_BASE + instances * FDS_PER_INSTANCE;
    if fds > limits.open_files {
        let most = limits.open_files.saturating_sub(FDS_BASE) / FDS_PER_INSTANCE;
        return Err((
            format!(
                "{instances} instances need about {fds} open files in orch ({FDS_PER_INSTANCE} each), beyond its limit \
                 of {} (RLIMIT_NOFILE); at most {most} instances fit",
                limits.open_files
            ),
            "lower replicas, or raise the open files limit (ulimit -n, LimitNOFILE=) and start orch again".into(),
        ));
    }
    // Half the range: the rest is for the connections every process makes.
    let ports = limits.automatic_ports / 2;
    if automatic > ports {
        return Err((
            format!(
                "{automatic} instances on automatic ports, beyond half the kernel's ephemeral port range ({} ports, \
                 net.ipv4.ip_local_port_range); at most {ports} fit",
                limits.automatic_ports
            ),
            "lower replicas, or give the services fixed ports (port:)".into(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_fits_the_open_files_and_the_ports_or_says_what_does_not() {
        let roomy = Limits { open_files: 20_000, automatic_ports: 28_232 };
        assert_eq!(check(1_000, 1_000, roomy), Ok(()));
        assert_eq!(check(2_000, 0, roomy), Ok(()));
        let (message, fix) = check(1_000, 1_000, Limits { open_files: 1_024, ..roomy }).unwrap_err();
        assert_eq!(
            message,
            "1000 instances need about 8256 open files in orch (8 each), beyond its limit of 1024 (RLIMIT_NOFILE); at \
             most 96 instances fit"
        );
        assert!(fix.contains("ulimit -n"), "{fix}");
        let (message, fix) = check(1_000, 1_000, Limits { automatic_ports: 1_000, ..roomy }).unwrap_err();
        assert_eq!(
            message,
            "1000 instances on automatic ports, beyond half the kernel's ephemeral port range (1000 ports, \
             net.ipv4.ip_local_port_range); at most 500 fit"
        );
        assert!(fix.contains("fixed ports"), "{fix}");
        // Fixed ports use no ephemeral port.
        assert_eq!(check(1_000, 0, Limits { automatic_ports: 1_000, ..roomy }), Ok(()));
    }
}
