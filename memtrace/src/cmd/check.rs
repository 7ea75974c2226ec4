//! `memtrace check`: a preflight of everything memtrace needs from this kernel, per probe.
//! It changes nothing on the machine (it does not mount tracefs and attaches nothing).

use std::io::Write;

use memtrace_common::PROBES;
use serde::Serialize;

use crate::{
    bpf::{self, AttachMode, attach, layout},
    kernel::{
        self,
        btf::{self, Btf},
        caps::{self, Caps},
        tracefs,
    },
};

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
    /// Loading the raw tracepoint program: `None` if it worked, the reason otherwise.
    pub raw_tp: Option<String>,
    /// Loading the classic tracepoint program: `None` if it worked, the reason otherwise.
    pub tracepoint: Option<String>,
    /// Loading the fexit stand-in for a tracepoint this kernel lacks: `None` if it worked
    /// (or the probe has none, see `has_fexit`), the reason otherwise.
    pub fexit: Option<String>,
    pub has_fexit: bool,
    /// The tracepoint exists only on some kernels, not on this one: nothing is missing.
    pub not_in_this_kernel: Option<&'static str>,
    /// What the attached program cannot count on this kernel, if anything.
    pub degraded: Option<String>,
    /// What `memtrace daemon` would use, if anything.
    pub will_use: Option<AttachMode>,
    /// The eBPF program it would run (`<event>_btf_fixed` where this kernel's layout of a hot
    /// event is the one that program was compiled with).
    pub program: Option<&'static str>,
    /// Loading that way's program with heap profiling on (`--profile.enabled true`: the
    /// profile's code is then live, and verified): `None` if it worked (or was not tried), the
    /// reason otherwise.
    pub heap_profile: Option<String>,
}

impl ProbeCheck {
    /// Why `mode` does not work for this probe, if it does not.
    pub fn refused(&self, mode: AttachMode) -> Option<&str> {
        match mode {
            AttachMode::Btf => &self.tp_btf,
            AttachMode::Raw => &self.raw_tp,
            AttachMode::Tracepoint => &self.tracepoint,
            AttachMode::Fexit => &self.fexit,
        }
        .as_deref()
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub kernel: String,
    pub privileges: Item,
    pub btf: Item,
    pub tracefs: Item,
    pub fentry: Item,
    /// Whether every program the daemon would use also loads with heap profiling on.
    pub heap_profile: Item,
    pub probes: Vec<ProbeCheck>,
    /// What will be missing or reduced on this kernel, one sentence each (empty: nothing).
    pub missing: Vec<String>,
    /// Whether memtrace can run here; when not, `reason` says why.
    pub can_run: bool,
    pub reason: Option<String>,
}

pub fn run() -> Report {
    let caps = Caps::current();
    let privileged = caps.can_trace();
    let privileges = Item {
        ok: privileged,
        detail: if privileged {
            format!(
                "euid {} with {}",
                caps::euid(),
                caps.tracing_names().join(", ")
            )
        } else {
            caps::NEEDS_PRIVILEGES.into()
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
        (Some(b), true) => match attach::probe_fentry(b) {
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
        Some(bpf::load_object(
            &resolved.layouts,
            &bpf::TracerOptions::default(),
        ))
    } else {
        None
    };
    let kernel = attach::Kernel {
        btf: aya_btf.as_ref(),
        layouts: &resolved,
        tracefs: match &tracefs_dir {
            Some(d) => attach::Tracefs::Mounted(d),
            None => attach::Tracefs::WouldMount,
        },
    };
    // Whether the ways are really loaded (not refused before trying, for lack of privileges
    // or of the object).
    let tried = matches!(ebpf, Some(Ok(_)));
    let mut checks = Vec::new();
    for spec in PROBES {
        let present = match &tracefs_dir {
            Some(d) => tracefs::event_exists(d, spec.category, spec.event),
            None => btf.as_ref().is_some_and(|b| b.has_tracepoint(spec.event)),
        } || resolved.exists(spec.event);
        // The daemon's plan, every way of it loaded (nothing attached).
        let loaded: Vec<(attach::Step, Result<&'static str, String>)> =
            attach::plan(spec, &kernel, false)
                .into_iter()
                .map(|st| {
                    let result = match &mut ebpf {
                        None => Err("not tested without privileges".to_string()),
                        Some(Err(e)) => Err(e.to_string()),
                        Some(Ok(ebpf)) => st
                            .load(ebpf, spec, aya_btf.as_ref(), false)
                            .map_err(|refused| refused.join("; ")),
                    };
                    let result = result.map_err(|e| match (st.mode, &st.programs) {
                        (AttachMode::Tracepoint, Ok(_)) if tried && tracefs_dir.is_none() => {
                            format!("{e} (and tracefs must be mounted to attach)")
                        }
                        _ => e,
                    });
                    (st, result)
                })
                .collect();
        let why = |mode| {
            loaded
                .iter()
                .find(|(st, _)| st.mode == mode)
                .and_then(|(_, result)| result.clone().err())
        };
        let (tp_btf, raw_tp, tracepoint) = (
            why(AttachMode::Btf),
            why(AttachMode::Raw),
            why(AttachMode::Tracepoint),
        );
        let fexit = why(AttachMode::Fexit);
        // What the daemon would use: the first wanted way that loaded.
        let chosen = loaded.iter().find_map(|(st, result)| match result {
            Ok(program) if st.wanted => Some((st.mode, *program)),
            _ => None,
        });
        let will_use = chosen.map(|(mode, _)| mode);
        checks.push(ProbeCheck {
            probe: format!("{}:{}", spec.category, spec.event),
            tracepoint_present: present,
            tp_btf,
            raw_tp,
            tracepoint,
            has_fexit: spec.fexit.is_some(),
            fexit,
            not_in_this_kernel: spec.only_on.filter(|_| !present),
            degraded: will_use
                .and_then(|_| resolved.degraded(spec.event))
                .map(String::from),
            will_use,
            program: chosen.map(|(_, program)| program),
            heap_profile: None,
        });
    }
    let heap_profile = check_profile(&resolved, &kernel, &mut checks, tried);
    let missing = checks.iter().filter_map(missing_sentence).collect();

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
        kernel: kernel::release(),
        privileges,
        btf: btf_item,
        tracefs: tracefs_item,
        fentry,
        heap_profile,
        probes: checks,
        missing,
        can_run: reason.is_none(),
        reason,
    }
}

/// Loads, in a second object with heap profiling on, the program of each probe's chosen way
/// (with profiling off the verifier drops the profile's code: a program that loads without
/// it may be refused with it) and records each refusal in the probe's `heap_profile`.
fn check_profile(
    resolved: &layout::Resolved,
    kernel: &attach::Kernel<'_>,
    checks: &mut [ProbeCheck],
    tried: bool,
) -> Item {
    if !tried {
        return Item {
            ok: false,
            detail: "not tested".into(),
        };
    }
    let opts = bpf::TracerOptions {
        // The smallest live map: its size does not change what the verifier sees.
        profile: Some(crate::bpf::ProfileOptions {
            max_live: 1024,
            ..crate::profile::ProfileArgs::DEFAULTS.tracer_options()
        }),
        ..Default::default()
    };
    let mut ebpf = match bpf::load_object(&resolved.layouts, &opts) {
        Ok(e) => e,
        Err(e) => {
            return Item {
                ok: false,
                detail: format!("with --profile.enabled true: {e}"),
            };
        }
    };
    let mut refused = Vec::new();
    for (spec, c) in PROBES.iter().zip(checks.iter_mut()) {
        let Some(mode) = c.will_use else {
            continue;
        };
        let Some(step) = attach::plan(spec, kernel, false)
            .into_iter()
            .find(|st| st.mode == mode && st.wanted)
        else {
            continue;
        };
        match step.load(&mut ebpf, spec, kernel.btf, false) {
            Ok(program) if Some(program) == c.program => {}
            Ok(program) => {
                c.heap_profile = Some(format!(
                    "{} is refused; the daemon runs {program}",
                    c.program.unwrap_or("?")
                ));
                refused.push(c.probe.clone());
            }
            Err(why) => {
                c.heap_profile = Some(why.join("; "));
                refused.push(c.probe.clone());
            }
        }
    }
    let vmalloc = checks
        .iter()
        .any(|c| c.probe == "vmalloc:free_vmap_area_noflush" && c.will_use.is_some());
    let unsampled = if vmalloc {
        String::new()
    } else {
        "; vmalloc is not sampled (no vmalloc:free_vmap_area_noflush tracepoint, 6.2+)".into()
    };
    if refused.is_empty() {
        Item {
            ok: true,
            detail: format!("every program loads with --profile.enabled true{unsampled}"),
        }
    } else {
        Item {
            ok: false,
            detail: format!(
                "with --profile.enabled true these probes run another program, another way, or none: {}{unsampled}",
                refused.join(", ")
            ),
        }
    }
}

/// What a user will not see because of probe `p`, in one sentence; `None` when nothing.
fn missing_sentence(p: &ProbeCheck) -> Option<String> {
    if p.not_in_this_kernel.is_some() {
        return None;
    }
    if let (Some(_), Some(why)) = (p.will_use, &p.degraded) {
        return Some(format!("{}: {why}", p.probe));
    }
    if p.will_use.is_some() {
        return None;
    }
    use crate::export::names as n;
    let what = match p.probe.split_once(':').map_or("", |(_, e)| e) {
        "kmalloc" => "kmalloc sizes, failures and call sites".to_string(),
        "kfree" => format!(
            "kmalloc frees ({}{{allocator=\"kmalloc\"}})",
            n::FREES_TOTAL
        ),
        "kmem_cache_alloc" => format!(
            "slab-cache series ({}, {}, {}, kmem_cache sizes)",
            n::KMEM_CACHE_ALLOCATIONS_TOTAL,
            n::KMEM_CACHE_ALLOCATED_BYTES_TOTAL,
            n::KMEM_CACHE_REQUESTED_BYTES_TOTAL
        ),
        "kmem_cache_free" => {
            format!(
                "slab frees ({}{{allocator=\"kmem_cache\"}})",
                n::FREES_TOTAL
            )
        }
        "mm_page_alloc" => "page allocation series".to_string(),
        "mm_page_free" | "mm_page_free_batched" => "page frees".to_string(),
        "mm_page_alloc_extfrag" => format!("fragmenting fallbacks ({})", n::PAGE_FALLBACKS_TOTAL),
        "alloc_vmap_area" => format!(
            "vmalloc series ({}, {})",
            n::VMALLOC_SIZE_BYTES,
            n::VMALLOC_LARGEST_SEEN_BYTES
        ),
        "purge_vmap_area_lazy" => format!(
            "vmalloc purges ({}, {})",
            n::VMALLOC_PURGES_TOTAL,
            n::VMALLOC_PURGED_AREAS_TOTAL
        ),
        "free_vmap_area_noflush" => format!(
            "the heap profile's vmalloc frees (vmalloc samples stay in {} until they age out)",
            n::LIVE_BYTES
        ),
        "percpu_free_percpu" => format!(
            "the heap profile's percpu frees (percpu samples stay in {} until they age out)",
            n::LIVE_BYTES
        ),
        "percpu_alloc_percpu" => "percpu allocation series".to_string(),
        "percpu_alloc_percpu_fail" => "percpu failures".to_string(),
        "mm_compaction_try_to_compact_pages" => {
            format!("compaction stalls ({})", n::COMPACTION_STALLS_TOTAL)
        }
        "mark_victim" => format!("OOM kills ({})", n::OOM_KILLS_TOTAL),
        _ => "its series".to_string(),
    };
    let why = match (&p.fexit, p.tracepoint_present) {
        (Some(fexit), false) if p.has_fexit => {
            format!("this kernel has no such tracepoint, and its fexit stand-in: {fexit}")
        }
        (_, false) => "this kernel has no such tracepoint".to_string(),
        _ => AttachMode::ORDER
            .into_iter()
            .filter(|m| *m != AttachMode::Fexit)
            .filter_map(|m| p.refused(m).map(|why| format!("{m}: {why}")))
            .collect::<Vec<_>>()
            .join("; "),
    };
    Some(format!("{}: no {what} ({why})", p.probe))
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
    writeln!(
        out,
        "  {} profile     {}",
        if r.heap_profile.ok { "ok  " } else { "note" },
        r.heap_profile.detail
    )?;
    writeln!(out)?;
    writeln!(
        out,
        "  {:<46} {:<8} {:<7} {:<7} {:<11} {:<6} uses",
        "probe", "present", "tp_btf", "raw_tp", "tracepoint", "fexit"
    )?;
    let status = |s: &Option<String>| if s.is_none() { "ok" } else { "no" };
    for p in &r.probes {
        if let Some(only) = p.not_in_this_kernel {
            writeln!(
                out,
                "  {:<46} {:<8} {:<7} {:<7} {:<11} {:<6} -- (not in this kernel: {only})",
                p.probe, "no", "-", "-", "-", "-"
            )?;
            continue;
        }
        writeln!(
            out,
            "  {:<46} {:<8} {:<7} {:<7} {:<11} {:<6} {}",
            p.probe,
            if p.tracepoint_present { "yes" } else { "no" },
            status(&p.tp_btf),
            status(&p.raw_tp),
            status(&p.tracepoint),
            if p.has_fexit { status(&p.fexit) } else { "-" },
            match (p.will_use, p.program) {
                (None, _) => "-- (missing)".to_string(),
                (Some(m), Some(prog)) => format!("{m} ({prog})"),
                (Some(m), None) => m.to_string(),
            }
        )?;
        // Why each way tried before the one used (or every way, when none works) failed.
        for mode in AttachMode::ORDER {
            if Some(mode) == p.will_use {
                break;
            }
            if mode == AttachMode::Fexit && !p.has_fexit {
                continue;
            }
            if let Some(why) = p.refused(mode) {
                writeln!(out, "      {mode}: {why}")?;
            }
        }
        if let Some(d) = &p.degraded {
            writeln!(out, "      degraded: {d}")?;
        }
        if let Some(why) = &p.heap_profile {
            writeln!(out, "      with --profile.enabled true: {why}")?;
        }
    }
    if !r.missing.is_empty() {
        writeln!(out)?;
        writeln!(out, "On this kernel memtrace will lack:")?;
        for m in &r.missing {
            writeln!(out, "  - {m}")?;
        }
    }
    writeln!(out)?;
    match &r.reason {
        None if r.missing.is_empty() => writeln!(out, "memtrace can run here.")?,
        None => writeln!(out, "memtrace can run here, without what is listed above.")?,
        Some(why) => writeln!(out, "memtrace cannot run here: {why}")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(name: &str, will_use: Option<AttachMode>) -> ProbeCheck {
        ProbeCheck {
            probe: name.into(),
            tracepoint_present: true,
            tp_btf: Some("refused".into()),
            raw_tp: None,
            tracepoint: Some("lacks field(s) name".into()),
            fexit: None,
            has_fexit: false,
            not_in_this_kernel: None,
            degraded: None,
            will_use,
            program: will_use.map(|_| "x_raw"),
            heap_profile: None,
        }
    }

    /// What a kernel lacks is said plainly: a probe with no way to attach names its series;
    /// one only older kernels have is not missing; a degraded one says what it lacks.
    #[test]
    fn missing_series_are_named() {
        let mut none = probe("kmem:kmem_cache_alloc", None);
        none.raw_tp = Some("refused".into());
        let why = missing_sentence(&none).expect("missing");
        assert!(
            why.contains("slab-cache series") && why.contains("lacks field(s) name"),
            "{why}"
        );
        let mut absent = probe("vmalloc:purge_vmap_area_lazy", None);
        absent.tracepoint_present = false;
        let why = missing_sentence(&absent).expect("missing");
        assert!(why.contains("no such tracepoint"), "{why}");
        let mut old = probe("kmem:kmalloc_node", None);
        old.not_in_this_kernel = Some("kernels before 6.1");
        assert_eq!(missing_sentence(&old), None);
        assert_eq!(
            missing_sentence(&probe("kmem:kmalloc", Some(AttachMode::Raw))),
            None
        );
        let mut degraded = probe("percpu:percpu_alloc_percpu", Some(AttachMode::Tracepoint));
        degraded.degraded = Some("the event lacks gfp_flags".into());
        let why = missing_sentence(&degraded).expect("degraded");
        assert!(why.contains("lacks gfp_flags"), "{why}");
    }
}
