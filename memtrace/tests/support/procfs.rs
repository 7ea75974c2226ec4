//! What the kernel says of a process in `/proc/PID/status` (or a thread's
//! `/proc/PID/task/TID/status`): its capability sets and its memory.

/// The status text at `path` (`/proc/PID/status`, `/proc/PID/task/TID/status`).
pub fn status(path: impl AsRef<std::path::Path>) -> String {
    let path = path.as_ref();
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// The value of the `key:` line, trimmed.
pub fn field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
        .map(str::trim)
}

/// A capability set (`CapEff`, `CapPrm`, `CapBnd`, `CapAmb`, `CapInh`) as its mask.
#[allow(dead_code)] // the soak and the fault tests read memory only
pub fn cap_mask(status: &str, key: &str) -> Option<u64> {
    u64::from_str_radix(field(status, key)?, 16).ok()
}

/// A size in kB (`VmRSS`, `RssAnon`) in bytes.
#[allow(dead_code)] // the daemon and deploy tests read capabilities only
pub fn kib_bytes(status: &str, key: &str) -> Option<u64> {
    let v = field(status, key)?.strip_suffix("kB")?.trim();
    Some(v.parse::<u64>().ok()? * 1024)
}
