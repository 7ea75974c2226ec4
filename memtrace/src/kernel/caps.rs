//! Privileges: this process's effective capabilities and the one rule of what loading
//! memtrace's eBPF programs needs (root's CAP_SYS_ADMIN, or CAP_BPF with CAP_PERFMON); and
//! the daemon giving up, once its programs are attached, every capability it no longer needs
//! ([`Keep`], [`drop_to`]).
//!
//! After attaching, the daemon only reads maps through file descriptors it already holds
//! (no capability needed), reads procfs and sysfs, and reads `/proc/kallsyms` again when a
//! module loads. What it keeps ([`Keep::Needed`]):
//! - `CAP_SYSLOG`: kallsyms shows real addresses only to it (`kernel.kptr_restrict`), and
//!   call sites are named from them;
//! - `CAP_DAC_READ_SEARCH`, only when not running as uid 0: the limits collector reads
//!   root-only files (`/proc/pagetypeinfo`, `/proc/slabinfo`), which uid 0 reads as their
//!   owner without a capability;
//! - `CAP_BPF` (or `CAP_SYS_ADMIN` without it), only where the kernel refuses every bpf()
//!   command, map reads included, to a process without it while
//!   `kernel.unprivileged_bpf_disabled` is set: kernels before 5.19 did (5.10 here). This is
//!   found by trying, not from the version: before dropping, the effective set alone is
//!   lowered, a map made beforehand is read, and the set is restored.
//!
//! Everything else leaves the effective, permitted, inheritable and ambient sets (and the
//! bounding set where `CAP_SETPCAP` allows it, as root has), and `no_new_privs` is set, so no
//! later `execve` can regain it. Capabilities are per
//! thread: the daemon drops them while its main thread is its only thread, before the async
//! runtime starts its workers, which then inherit the reduced sets.

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

/// Which capabilities the daemon keeps once its programs are attached
/// (`--capabilities.keep`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// What the daemon still uses (the module docs): `needed`.
    Needed,
    /// Every capability it has: `all` (nothing is dropped).
    All,
    /// These, of those it has: `none`, or a comma-separated list such as
    /// `cap_syslog,cap_dac_read_search`.
    These(Vec<caps::Capability>),
}

impl std::str::FromStr for Keep {
    type Err = String;

    fn from_str(s: &str) -> Result<Keep, String> {
        match s.trim() {
            "needed" => return Ok(Keep::Needed),
            "all" => return Ok(Keep::All),
            "none" | "" => return Ok(Keep::These(Vec::new())),
            _ => {}
        }
        let mut list = Vec::new();
        for name in s.split(',').map(str::trim) {
            let upper = name.to_ascii_uppercase();
            let full = if upper.starts_with("CAP_") {
                upper
            } else {
                format!("CAP_{upper}")
            };
            let cap = full.parse::<caps::Capability>().map_err(|_| {
                format!(
                    "unknown capability {name:?}: use needed, all, none or names such as \
                     cap_syslog,cap_dac_read_search"
                )
            })?;
            if !list.contains(&cap) {
                list.push(cap);
            }
        }
        Ok(Keep::These(list))
    }
}

/// What [`drop_to`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dropped {
    /// The effective capabilities now, by name (`CAP_SYSLOG`).
    pub kept: Vec<String>,
    /// How many capabilities left the permitted set.
    pub dropped: usize,
    /// Named in `--capabilities.keep` but not held, so not kept.
    pub not_held: Vec<String>,
    /// Kept beyond [`needed`] because this kernel refuses every bpf() command, map reads
    /// included, to a process without it while `kernel.unprivileged_bpf_disabled` is set
    /// (kernels before 5.19 did; later ones only refuse creating maps and programs).
    pub kept_for_maps: Option<String>,
}

/// A failure to drop capabilities: the daemon stops rather than run with more than it said.
#[derive(Debug, thiserror::Error)]
pub enum DropError {
    #[error(
        "cannot drop capabilities: the process already runs {0} threads and capabilities are \
         per thread (a bug; report it, or run with --capabilities.keep all)"
    )]
    Threads(usize),
    #[error("cannot drop capabilities ({what}): {source}; run with --capabilities.keep all")]
    Sys {
        what: &'static str,
        source: caps::errors::CapsError,
    },
    #[error("cannot set no_new_privs: {0}; run with --capabilities.keep all")]
    NoNewPrivs(std::io::Error),
    #[error(
        "with only --capabilities.keep {0:?} this kernel refuses to read memtrace's maps \
         (kernel.unprivileged_bpf_disabled is set and the kernel predates 5.19): add cap_bpf"
    )]
    MapsNeedBpf(String),
}

/// The capabilities [`Keep::Needed`] keeps for a process running as `euid`.
pub fn needed(euid: u32) -> Vec<caps::Capability> {
    let mut v = vec![caps::Capability::CAP_SYSLOG];
    if euid != 0 {
        v.push(caps::Capability::CAP_DAC_READ_SEARCH);
    }
    v
}

/// Reduces this process to the capabilities `keep` names (of those it holds) in every set,
/// and sets `no_new_privs`. Must run while the calling thread is the process's only thread.
pub fn drop_to(keep: &Keep) -> Result<Dropped, DropError> {
    use caps::{CapSet, CapsHashSet};
    let sys = |what| move |source| DropError::Sys { what, source };
    let names = |set: &CapsHashSet| {
        let mut v: Vec<String> = set.iter().map(|c| c.to_string()).collect();
        v.sort();
        v
    };
    let permitted = caps::read(None, CapSet::Permitted).map_err(sys("reading"))?;
    let wanted: Vec<caps::Capability> = match keep {
        Keep::All => {
            let effective = caps::read(None, CapSet::Effective).map_err(sys("reading"))?;
            return Ok(Dropped {
                kept: names(&effective),
                dropped: 0,
                not_held: Vec::new(),
                kept_for_maps: None,
            });
        }
        Keep::Needed => needed(euid()),
        Keep::These(v) => v.clone(),
    };
    let threads = thread_count();
    if threads != 1 {
        return Err(DropError::Threads(threads));
    }
    let mut kept: CapsHashSet = wanted
        .iter()
        .copied()
        .filter(|c| permitted.contains(c))
        .collect();
    let not_held = match keep {
        Keep::These(_) => wanted
            .iter()
            .filter(|c| !permitted.contains(c))
            .map(|c| c.to_string())
            .collect(),
        _ => Vec::new(),
    };
    // Whether the maps can still be read with only `kept`: lower the effective set alone
    // (the permitted set can raise it again), try, and restore.
    let probe = probe_map();
    let effective = caps::read(None, CapSet::Effective).map_err(sys("reading"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(sys("effective set"))?;
    let maps_readable = probe.as_ref().is_none_or(lookup_allowed);
    caps::set(None, CapSet::Effective, &effective).map_err(sys("effective set"))?;
    drop(probe);
    let mut added = None;
    if !maps_readable {
        let bpf = [caps::Capability::CAP_BPF, caps::Capability::CAP_SYS_ADMIN]
            .into_iter()
            .find(|c| permitted.contains(c));
        match (keep, bpf) {
            (Keep::Needed, Some(c)) => {
                kept.insert(c);
                added = Some(c.to_string());
            }
            _ => {
                return Err(DropError::MapsNeedBpf(
                    names(&kept).join(",").to_lowercase(),
                ));
            }
        }
    }
    // The bounding set first: dropping from it needs CAP_SETPCAP, which goes next.
    if caps::has_cap(None, CapSet::Effective, caps::Capability::CAP_SETPCAP)
        .map_err(sys("reading"))?
    {
        let bounding = caps::read(None, CapSet::Bounding).map_err(sys("reading"))?;
        for c in bounding.difference(&kept) {
            caps::drop(None, CapSet::Bounding, *c).map_err(sys("bounding set"))?;
        }
    }
    // Kernels without ambient capabilities (before 4.3) have none to clear.
    if caps::runtime::ambient_set_supported().is_ok() {
        caps::clear(None, CapSet::Ambient).map_err(sys("ambient set"))?;
    }
    caps::set(None, CapSet::Inheritable, &CapsHashSet::new()).map_err(sys("inheritable set"))?;
    caps::set(None, CapSet::Effective, &kept).map_err(sys("effective set"))?;
    caps::set(None, CapSet::Permitted, &kept).map_err(sys("permitted set"))?;
    // SAFETY: prctl with PR_SET_NO_NEW_PRIVS takes plain integers and touches no memory.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(DropError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(Dropped {
        kept: names(&kept),
        dropped: permitted.difference(&kept).count(),
        not_held,
        kept_for_maps: added,
    })
}

/// A one-element array map, made while the capabilities are still held, for
/// [`lookup_allowed`]; `None` if it cannot be made.
fn probe_map() -> Option<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let mut attr = [0u32; 8];
    attr[0] = 2; // BPF_MAP_TYPE_ARRAY
    attr[1] = 4; // key size
    attr[2] = 4; // value size
    attr[3] = 1; // max entries
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    let fd = i32::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: a new descriptor that nothing else owns.
    Some(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) })
}

/// Whether this thread, with its effective capabilities now, may read the map `fd` (made
/// earlier): any answer but `EPERM` means bpf() lets it.
fn lookup_allowed(fd: &std::os::fd::OwnedFd) -> bool {
    use std::os::fd::AsRawFd as _;
    let key = 0u32;
    let mut value = 0u32;
    let attr: [u64; 4] = [
        fd.as_raw_fd() as u64,
        &key as *const u32 as u64,
        &mut value as *mut u32 as u64,
        0,
    ];
    // SAFETY: BPF_MAP_LOOKUP_ELEM (1) with an attr whose pointers are valid for the map's
    // 4-byte key and value.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            1,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EPERM)
}

/// This process's thread count, from /proc/self/status (1 if unreadable: then the sets of
/// the calling thread are what there is to drop).
fn thread_count() -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Threads:"))
                .and_then(|n| n.trim().parse().ok())
        })
        .unwrap_or(1)
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
    fn keep_parses_words_and_lists() {
        use caps::Capability::*;
        assert_eq!("needed".parse::<Keep>(), Ok(Keep::Needed));
        assert_eq!("all".parse::<Keep>(), Ok(Keep::All));
        assert_eq!("none".parse::<Keep>(), Ok(Keep::These(vec![])));
        assert_eq!(
            "cap_syslog, CAP_BPF,perfmon,cap_syslog".parse::<Keep>(),
            Ok(Keep::These(vec![CAP_SYSLOG, CAP_BPF, CAP_PERFMON]))
        );
        let e = "cap_syslog,cap_nope".parse::<Keep>().unwrap_err();
        assert!(e.starts_with("unknown capability \"cap_nope\""), "{e}");
        assert_eq!(needed(0), [CAP_SYSLOG]);
        assert_eq!(needed(1000), [CAP_SYSLOG, CAP_DAC_READ_SEARCH]);
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
