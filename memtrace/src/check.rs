//! `memtrace check`: a preflight of everything memtrace needs from this kernel, per probe.
//! It changes nothing on the machine (it does not mount tracefs and attaches nothing).

use std::io::Write;

use memtrace_common::PROBES;
use serde::Serialize;

use crate::{
    btf::{self, Btf},
    layout,
    probes::{self, AttachMode},
    tracefs,
};

pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// The effective capability set of this process, from /proc/self/status.
pub fn effective_caps() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    parse_cap_eff(&status)
}

fn parse_cap_eff(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("CapEff:"))?;
    u64::from_str_radix(line.trim_start_matches("CapEff:").trim(), 16).ok()
}

/// One line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct Item {
    pub ok: bool,
    pub detail: String,
}

/// What this kernel offers for one probe.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeCheck {
    pub probe: String,
    /// The tracepoint exists in this kernel (per tracefs, or per BTF when tracefs is absent).
    pub tracepoint_present: bool,
    /// Loading the tp_btf program: `None` if it worked, the reason otherwise.
    pub tp_btf: Option<String>,
    /// Loading the classic tracepoint program: `None` if it worked, the reason otherwise.
    pub tracepoint: Option<String>,
    /// What `memtrace daemon` would use, if anything.
    pub will_use: Option<AttachMode>,
    /// The eBPF program it would run (`<event>_btf_fixed` where this kernel's layout of a hot
    /// event is the one that program was compiled with).
    pub program: Option<&'static str>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub privileges: Item,
    pub btf: Item,
    pub tracefs: Item,
    pub fentry: Item,
    pub probes: Vec<ProbeCheck>,
    /// Whether memtrace can run here; when not, `reason` says why.
    pub can_run: bool,
    pub reason: Option<String>,
}

pub fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

pub fn run() -> Report {
    let caps = effective_caps().unwrap_or(0);
    let has = |b: u32| caps & (1 << b) != 0;
    let privileged = has(CAP_SYS_ADMIN) || (has(CAP_BPF) && has(CAP_PERFMON));
    let privileges = Item {
        ok: privileged,
        detail: if privileged {
            let mut v = vec![];
            for (b, n) in [
                (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
                (CAP_BPF, "CAP_BPF"),
                (CAP_PERFMON, "CAP_PERFMON"),
            ] {
                if has(b) {
                    v.push(n);
                }
            }
            format!("euid {} with {}", unsafe_euid(), v.join(", "))
        } else {
            "needs root, or CAP_BPF and CAP_PERFMON: run with sudo".into()
        },
    };

    let btf = Btf::from_sys();
    let btf_item = match &btf {
        Ok(_) => Item {
            ok: true,
            detail: btf::VMLINUX.into(),
        },
        Err(e) => Item {
            ok: false,
            detail: format!("{e}: tp_btf probes unavailable, classic tracepoints only"),
        },
    };
    let btf = btf.ok();
    let aya_btf = aya::Btf::from_sys_fs().ok();

    let tracefs_dir = tracefs::mounted();
    let tracefs_item = match &tracefs_dir {
        Some(d) => Item {
            ok: true,
            detail: format!("mounted at {}", d.display()),
        },
        None => Item {
            ok: false,
            detail: format!(
                "not mounted; memtrace mounts it at {} when a probe needs a classic tracepoint",
                tracefs::TRACEFS
            ),
        },
    };

    let fentry = match (&aya_btf, privileged) {
        (_, false) => Item {
            ok: false,
            detail: "not tested without privileges".into(),
        },
        (None, _) => Item {
            ok: false,
            detail: "needs kernel BTF".into(),
        },
        (Some(b), true) => match probes::probe_fentry(b) {
            Ok(()) => Item {
                ok: true,
                detail: "allowed".into(),
            },
            Err(e) => Item {
                ok: false,
                detail: format!("refused ({e}); optional fentry probes stay off"),
            },
        },
    };

    let resolved = layout::resolve(btf.as_ref(), tracefs_dir.as_deref());
    let mut ebpf = if privileged {
        Some(probes::load_object(
            &resolved.layouts,
            &probes::TracerOptions::default(),
        ))
    } else {
        None
    };
    let mut checks = Vec::new();
    for spec in PROBES {
        let present = match &tracefs_dir {
            Some(d) => tracefs::event_exists(d, spec.category, spec.event),
            None => btf.as_ref().is_some_and(|b| b.has_tracepoint(spec.event)),
        };
        let mut btf_choice = probes::btf_program(spec, &resolved.layouts, false);
        let (tp_btf, tracepoint) = match &mut ebpf {
            None => (
                Some("not tested without privileges".to_string()),
                Some("not tested without privileges".to_string()),
            ),
            Some(Err(e)) => (Some(e.to_string()), Some(e.to_string())),
            Some(Ok(ebpf)) => {
                let b = match (&aya_btf, resolved.btf_missing(spec.event)) {
                    (None, _) => Some("kernel BTF unavailable".to_string()),
                    (_, Some(m)) => Some(m.to_string()),
                    (Some(aya_btf), None) => {
                        // The same choice, and the same fallback, as the daemon's.
                        let (program, refused) = probes::attach_btf_best(
                            ebpf,
                            spec,
                            &resolved.layouts,
                            false,
                            aya_btf,
                            false,
                        );
                        match program {
                            Some(p) => {
                                btf_choice = p;
                                None
                            }
                            None => Some(refused.join("; ")),
                        }
                    }
                };
                let t = match (tracefs_dir.is_some(), resolved.tp_missing(spec.event)) {
                    (true, Some(m)) => Some(m.to_string()),
                    _ => probes::attach_tp(ebpf, spec, false).err().map(|e| {
                        if tracefs_dir.is_none() {
                            format!("{e} (and tracefs must be mounted to attach)")
                        } else {
                            e
                        }
                    }),
                };
                (b, t)
            }
        };
        let will_use = if tp_btf.is_none() {
            Some(AttachMode::Btf)
        } else if tracepoint.is_none() && present {
            Some(AttachMode::Tracepoint)
        } else {
            None
        };
        checks.push(ProbeCheck {
            probe: format!("{}:{}", spec.category, spec.event),
            tracepoint_present: present,
            tp_btf,
            tracepoint,
            will_use,
            program: match will_use {
                Some(AttachMode::Btf) => Some(btf_choice),
                Some(AttachMode::Tracepoint) => Some(spec.tp_program),
                None => None,
            },
        });
    }

    let reason = if !privileged {
        Some(privileges.detail.clone())
    } else if let Some(Err(e)) = &ebpf {
        Some(e.to_string())
    } else if !checks.iter().any(|c| c.will_use.is_some()) {
        Some("no probe can be attached on this kernel".into())
    } else {
        None
    };
    Report {
        kernel: kernel_release(),
        privileges,
        btf: btf_item,
        tracefs: tracefs_item,
        fentry,
        probes: checks,
        can_run: reason.is_none(),
        reason,
    }
}

fn unsafe_euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

pub fn print_human(r: &Report, out: &mut dyn Write) -> std::io::Result<()> {
    let mark = |ok: bool| if ok { "ok  " } else { "FAIL" };
    writeln!(out, "memtrace check on Linux {}", r.kernel)?;
    writeln!(
        out,
        "  {} privileges  {}",
        mark(r.privileges.ok),
        r.privileges.detail
    )?;
    writeln!(out, "  {} btf         {}", mark(r.btf.ok), r.btf.detail)?;
    writeln!(
        out,
        "  {} tracefs     {}",
        if r.tracefs.ok { "ok  " } else { "note" },
        r.tracefs.detail
    )?;
    writeln!(
        out,
        "  {} fentry      {}",
        if r.fentry.ok { "ok  " } else { "note" },
        r.fentry.detail
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  {:<46} {:<8} {:<7} {:<11} uses",
        "probe", "present", "tp_btf", "tracepoint"
    )?;
    let status = |s: &Option<String>| if s.is_none() { "ok" } else { "no" };
    for p in &r.probes {
        writeln!(
            out,
            "  {:<46} {:<8} {:<7} {:<11} {}",
            p.probe,
            if p.tracepoint_present { "yes" } else { "no" },
            status(&p.tp_btf),
            status(&p.tracepoint),
            match (p.will_use, p.program) {
                (None, _) => "-- (missing)".to_string(),
                (Some(m), Some(prog)) => format!("{m} ({prog})"),
                (Some(m), None) => m.to_string(),
            }
        )?;
        for (what, why) in [("tp_btf", &p.tp_btf), ("tracepoint", &p.tracepoint)] {
            if let Some(why) = why {
                if p.will_use.is_none() || what == "tp_btf" {
                    writeln!(out, "      {what}: {why}")?;
                }
            }
        }
    }
    writeln!(out)?;
    match &r.reason {
        None => writeln!(out, "memtrace can run here.")?,
        Some(why) => writeln!(out, "memtrace cannot run here: {why}")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_capeff() {
        let s = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001ffffffffff\n";
        let caps = parse_cap_eff(s).unwrap();
        assert!(caps & (1 << CAP_BPF) != 0);
        assert_eq!(parse_cap_eff("CapEff:\t0000000000000000\n"), Some(0));
        assert_eq!(parse_cap_eff("nothing"), None);
    }
}
