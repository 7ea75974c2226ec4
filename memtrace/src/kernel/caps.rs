//! Privileges: this process's effective capabilities and the one rule of what loading
//! memtrace's eBPF programs needs (root's CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON).

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What to do without the privileges, in one sentence.
pub const NEEDS_PRIVILEGES: &str = "needs root, or CAP_BPF and CAP_PERFMON: run with sudo";

/// An effective capability set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    /// This process's, from /proc/self/status (none when it cannot be read).
    pub fn current() -> Caps {
        Caps(
            std::fs::read_to_string("/proc/self/status")
                .ok()
                .and_then(|s| parse_cap_eff(&s))
                .unwrap_or(0),
        )
    }

    pub fn has(self, bit: u32) -> bool {
        self.0 & (1u64 << bit) != 0
    }

    /// Whether these capabilities may load and attach memtrace's programs.
    pub fn can_trace(self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }

    /// The names of the capabilities among those tracing needs that are present.
    pub fn tracing_names(self) -> Vec<&'static str> {
        [
            (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
            (CAP_BPF, "CAP_BPF"),
            (CAP_PERFMON, "CAP_PERFMON"),
        ]
        .into_iter()
        .filter(|(b, _)| self.has(*b))
        .map(|(_, n)| n)
        .collect()
    }
}

/// Fails with a one-line error saying what to do when this process may not trace.
pub fn require_tracing() -> anyhow::Result<()> {
    if Caps::current().can_trace() {
        Ok(())
    } else {
        Err(anyhow::anyhow!("loading eBPF programs {NEEDS_PRIVILEGES}"))
    }
}

/// This process's effective user id.
pub fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = Caps(parse_cap_eff(s).unwrap());
        assert!(caps.has(CAP_BPF) && caps.can_trace());
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(parse_cap_eff("nothing"), None);
    }

    #[test]
    fn tracing_needs_sys_admin_or_bpf_and_perfmon() {
        assert!(Caps(1 << CAP_SYS_ADMIN).can_trace());
        assert!(Caps((1 << CAP_BPF) | (1 << CAP_PERFMON)).can_trace());
        assert!(!Caps(1 << CAP_BPF).can_trace());
        assert!(!Caps(1 << CAP_PERFMON).can_trace());
        assert_eq!(Caps(1 << CAP_BPF).tracing_names(), ["CAP_BPF"]);
    }
}
