//! How each probe is attached: the ways a kernel may offer ([`AttachMode`]), which of them a
//! user allows ([`AttachPreference`]), and [`plan`], the one ordered list of ways per probe
//! that the daemon walks until one attaches and `memtrace check` walks whole (loading, not
//! attaching) to report every way.

use std::{fmt, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    programs::{BtfTracePoint, FEntry, FExit, RawTracePoint, TracePoint},
};
use memtrace_common::{Layouts, ProbeSpec};
use serde::Serialize;

use super::{EBPF_OBJECT, layout, redact_addresses};
use crate::sync::one_line;

/// How a probe is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum AttachMode {
    /// BTF tracepoint (tp_btf).
    Btf,
    /// Raw tracepoint (raw_tp): the BTF tracepoint's arguments without BTF-typed pointers,
    /// where the verifier refuses the BTF program.
    Raw,
    /// Classic tracepoint (needs tracefs).
    Tracepoint,
    /// An fexit program on the kernel function a tracepoint this kernel lacks would report
    /// from (vmalloc before Linux 6.2).
    Fexit,
}

impl AttachMode {
    /// The order memtrace tries the ways in: BTF tracepoint first (cheapest, needs no
    /// tracefs), then raw tracepoint, then the classic tracepoint (needs tracefs), then fexit
    /// for a tracepoint the kernel lacks. [`plan`] and `memtrace check` follow it.
    pub const ORDER: [AttachMode; 4] = [
        AttachMode::Btf,
        AttachMode::Raw,
        AttachMode::Tracepoint,
        AttachMode::Fexit,
    ];
}

impl fmt::Display for AttachMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AttachMode::Btf => "tp_btf",
            AttachMode::Raw => "raw_tp",
            AttachMode::Tracepoint => "tracepoint",
            AttachMode::Fexit => "fexit",
        })
    }
}

/// Which attach modes to try.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum AttachPreference {
    /// tp_btf where the kernel allows it, then raw_tp, then the classic tracepoint, then
    /// fexit for a tracepoint the kernel lacks.
    #[default]
    Auto,
    /// Only tp_btf (and fexit where the tracepoint is missing).
    Btf,
    /// Only raw tracepoints.
    Raw,
    /// Only classic tracepoints.
    Tracepoint,
}

impl AttachPreference {
    /// Whether this preference allows attaching as `mode`.
    pub fn allows(self, mode: AttachMode) -> bool {
        match self {
            AttachPreference::Auto => true,
            AttachPreference::Btf => matches!(mode, AttachMode::Btf | AttachMode::Fexit),
            AttachPreference::Raw => mode == AttachMode::Raw,
            AttachPreference::Tracepoint => mode == AttachMode::Tracepoint,
        }
    }
}

/// How one probe fared.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeStatus {
    /// `category:event`
    pub probe: String,
    /// How it is attached, or `None` when it is not.
    pub mode: Option<AttachMode>,
    /// Why it is not attached, or why the preferred mode was not used.
    pub note: Option<String>,
    /// The eBPF program attached (for a hot event, `<event>_btf_fixed` where the kernel's
    /// layout is the one it was compiled with; see [`memtrace_common::FixedBtf`]).
    pub program: Option<&'static str>,
}

impl ProbeStatus {
    pub fn attached(&self) -> bool {
        self.mode.is_some()
    }
}

/// Where tracefs stands when a plan is made.
#[derive(Debug, Clone, Copy)]
pub enum Tracefs<'a> {
    /// Mounted here: classic tracepoints attach, and their formats were read.
    Mounted(&'a Path),
    /// Not mounted, and why (memtrace could not mount it).
    Unavailable(&'a str),
    /// Not mounted; memtrace mounts it when it starts (`memtrace check` changes nothing).
    WouldMount,
}

/// What the plan of a probe is made from: the running kernel's BTF (aya's, for loading), the
/// layouts resolved from it, and tracefs.
#[derive(Clone, Copy)]
pub struct Kernel<'a> {
    pub btf: Option<&'a aya::Btf>,
    pub layouts: &'a layout::Resolved,
    pub tracefs: Tracefs<'a>,
}

/// One way to attach a probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    pub mode: AttachMode,
    /// The programs to load, in order (tp_btf: the fixed-layout program, then the generic
    /// one), or why this way cannot be used on this kernel, known before loading anything.
    pub programs: Result<Vec<&'static str>, String>,
    /// The kernel function of an fexit way.
    pub function: Option<&'static str>,
    /// Whether memtrace uses this way when the earlier ones fail: not a way memtrace has no
    /// program for, nor fexit where the tracepoint exists (fexit only stands in for a missing
    /// tracepoint). `memtrace check` still reports it.
    pub wanted: bool,
}

/// Every way memtrace has to attach `spec` on this kernel, in the order it tries them:
/// tp_btf, raw_tp, the classic tracepoint, then fexit for a tracepoint the kernel lacks.
/// `generic` asks for the generic BTF program even where a fixed-layout one fits.
pub fn plan(spec: &ProbeSpec, k: &Kernel<'_>, generic: bool) -> Vec<Step> {
    let l = k.layouts;
    let btf_missing = l.btf_missing(spec.event).map(String::from);
    AttachMode::ORDER
        .into_iter()
        .filter_map(|mode| {
            let (programs, wanted) = match mode {
                AttachMode::Btf => match (k.btf, &btf_missing) {
                    (None, _) => (Err("kernel BTF unavailable".to_string()), true),
                    (_, Some(m)) => (Err(m.clone()), true),
                    (Some(_), None) => {
                        let first = btf_program(spec, &l.layouts, generic);
                        let then_generic = (first != spec.btf_program).then_some(spec.btf_program);
                        (
                            Ok(std::iter::once(first).chain(then_generic).collect()),
                            true,
                        )
                    }
                },
                AttachMode::Raw => match (spec.raw_program, &btf_missing) {
                    (None, _) => (
                        Err("memtrace has no raw_tp program for it".to_string()),
                        false,
                    ),
                    (_, Some(m)) => (Err(m.clone()), true),
                    (Some(p), None) => (Ok(vec![p]), true),
                },
                AttachMode::Tracepoint => match (k.tracefs, l.tp_missing(spec.event)) {
                    (Tracefs::Unavailable(why), _) => (Err(why.to_string()), true),
                    (Tracefs::Mounted(_), Some(m)) => (Err(m.to_string()), true),
                    (Tracefs::WouldMount, _) if !l.exists(spec.event) => {
                        (Err("this kernel has no such tracepoint".to_string()), true)
                    }
                    _ => (Ok(vec![spec.tp_program]), true),
                },
                // fexit only stands in for a tracepoint this kernel lacks.
                AttachMode::Fexit => {
                    let (program, _) = spec.fexit?;
                    let programs = match (k.btf, l.fexit_missing(spec.event)) {
                        (None, _) => Err("kernel BTF unavailable".to_string()),
                        (_, Some(m)) => Err(m.to_string()),
                        (Some(_), None) => Ok(vec![program]),
                    };
                    (programs, !l.exists(spec.event))
                }
            };
            Some(Step {
                mode,
                programs,
                function: spec
                    .fexit
                    .filter(|_| mode == AttachMode::Fexit)
                    .map(|(_, f)| f),
                wanted,
            })
        })
        .collect()
}

impl Step {
    /// Loads (and with `attach`, attaches) this way's programs, the first the kernel accepts:
    /// the program that loaded, or each refusal (tp_btf: `program: reason`; fexit: `fexit on
    /// function: reason`).
    pub fn load(
        &self,
        ebpf: &mut Ebpf,
        spec: &ProbeSpec,
        btf: Option<&aya::Btf>,
        attach: bool,
    ) -> Result<&'static str, Vec<String>> {
        let programs = self.programs.as_ref().map_err(|why| vec![why.clone()])?;
        let mut refused = Vec::new();
        for &program in programs {
            let loaded = match (self.mode, btf) {
                (AttachMode::Btf, Some(btf)) => attach_btf(ebpf, spec, program, btf, attach)
                    .map_err(|e| format!("{program}: {e}")),
                (AttachMode::Raw, _) => attach_raw(ebpf, spec, program, attach),
                (AttachMode::Tracepoint, _) => attach_tp(ebpf, spec, attach),
                (AttachMode::Fexit, Some(btf)) => {
                    let function = self.function.unwrap_or(spec.event);
                    attach_fexit(ebpf, program, function, btf, attach)
                        .map_err(|e| format!("fexit on {function}: {e}"))
                }
                (_, None) => Err("kernel BTF unavailable".to_string()),
            };
            match loaded {
                Ok(()) => return Ok(program),
                Err(e) => refused.push(e),
            }
        }
        Err(refused)
    }

    /// The daemon's notes for this way's refusals (as [`ProbeStatus::note`] shows them).
    fn notes(&self, refused: Vec<String>) -> impl Iterator<Item = String> + '_ {
        refused.into_iter().map(move |r| match self.mode {
            AttachMode::Btf => format!("tp_btf ({r})"),
            AttachMode::Fexit if r.starts_with("fexit on ") => r,
            mode => format!("{mode}: {r}"),
        })
    }
}

/// Attaches `spec` the first way of its [`plan`] that `pref` allows and the kernel accepts.
/// The status says how, and why the earlier ways were not used; a probe no way attaches is
/// reported, not an error.
pub fn attach_probe(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    k: &Kernel<'_>,
    pref: AttachPreference,
    generic: bool,
) -> ProbeStatus {
    let probe = format!("{}:{}", spec.category, spec.event);
    let mut notes = Vec::new();
    for step in plan(spec, k, generic) {
        if !step.wanted || !pref.allows(step.mode) {
            continue;
        }
        if let Err(why) = &step.programs {
            notes.push(format!("{}: {why}", step.mode));
            continue;
        }
        match step.load(ebpf, spec, k.btf, true) {
            Ok(program) => {
                return ProbeStatus {
                    probe,
                    mode: Some(step.mode),
                    note: (!notes.is_empty()).then(|| notes.join("; ")),
                    program: Some(program),
                };
            }
            Err(refused) => notes.extend(step.notes(refused)),
        }
    }
    ProbeStatus {
        probe,
        mode: None,
        note: Some(notes.join("; ")),
        program: None,
    }
}

/// The BTF program to load for `spec`: its fixed-layout program where the kernel's layout of
/// the event (in `layouts`) is the one that program was compiled with and `generic` is not
/// asked for, else the generic program, which reads the layout at run time.
fn btf_program(spec: &ProbeSpec, layouts: &Layouts, generic: bool) -> &'static str {
    match spec.fixed_program {
        Some(fixed) if !generic && spec.fixed_matches(&layouts.btf) => fixed,
        _ => spec.btf_program,
    }
}

/// The program `name` of the object as the program type `T`.
fn program_as<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .ok_or_else(|| format!("program {name} missing from the object"))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| one_line(&e))
}

/// The one-line reason a program's load failed; the verifier's log, which is long, goes to
/// the debug log (without kernel addresses) for whoever debugs a refused program.
fn load_refused(program: &str, e: &aya::programs::ProgramError) -> String {
    tracing::debug!(
        program,
        "load refused: {}",
        redact_addresses(&format!("{e:?}"))
    );
    one_line(e)
}

fn attach_btf(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    program: &str,
    btf: &aya::Btf,
    attach: bool,
) -> Result<(), String> {
    let prog: &mut BtfTracePoint = program_as(ebpf, program)?;
    prog.load(spec.event, btf)
        .map_err(|e| load_refused(program, &e))?;
    if attach {
        prog.attach().map_err(|e| one_line(&e))?;
    }
    Ok(())
}

fn attach_raw(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    program: &str,
    attach: bool,
) -> Result<(), String> {
    let prog: &mut RawTracePoint = program_as(ebpf, program)?;
    prog.load().map_err(|e| load_refused(program, &e))?;
    if attach {
        prog.attach(spec.event).map_err(|e| one_line(&e))?;
    }
    Ok(())
}

fn attach_fexit(
    ebpf: &mut Ebpf,
    program: &str,
    function: &str,
    btf: &aya::Btf,
    attach: bool,
) -> Result<(), String> {
    let prog: &mut FExit = program_as(ebpf, program)?;
    prog.load(function, btf)
        .map_err(|e| load_refused(program, &e))?;
    if attach {
        prog.attach().map_err(|e| one_line(&e))?;
    }
    Ok(())
}

fn attach_tp(ebpf: &mut Ebpf, spec: &ProbeSpec, attach: bool) -> Result<(), String> {
    let prog: &mut TracePoint = program_as(ebpf, spec.tp_program)?;
    prog.load().map_err(|e| load_refused(spec.tp_program, &e))?;
    if attach {
        prog.attach(spec.category, spec.event)
            .map_err(|e| one_line(&e))?;
    }
    Ok(())
}

/// The tiny program [`probe_fentry`] loads.
pub const FENTRY_PROBE: &str = "fentry_probe";

/// Whether this kernel lets fentry programs load (optional probes may use them).
/// Loads a tiny fentry program from a fresh copy of the object; nothing is attached.
pub fn probe_fentry(btf: &aya::Btf) -> Result<(), String> {
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| one_line(&e))?;
    let prog: &mut FEntry = program_as(&mut ebpf, FENTRY_PROBE)?;
    prog.load("kfree", btf).map_err(|e| one_line(&e))
}
