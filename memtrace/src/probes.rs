//! Loading memtrace's eBPF object and attaching its probes, each the best way this kernel
//! allows: BTF tracepoint first (cheaper, needs no tracefs), classic tracepoint as fallback.
//! A probe the kernel lacks is reported, not fatal.

use std::{collections::BTreeMap, fmt};

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap, PerCpuValues},
    programs::{BtfTracePoint, FEntry, FExit, RawTracePoint, TracePoint},
    util::nr_cpus,
};
use memtrace_common::{
    ATTR_CGROUPS, Allocator, CACHE_OVERFLOW, CGROUP_OVERFLOW, COUNTERS_LEN, CacheName, CacheStats,
    CgroupKey, CommKey, GFP_OVERFLOW, GLOBAL_ATTRIBUTION, GLOBAL_FILTER_TGID, GLOBAL_FILTER_TID,
    GLOBAL_LAYOUTS, GLOBAL_NOTABLE_MIN_BYTES, GLOBAL_NOTABLE_MIN_ORDER, GLOBAL_PAGE_SIZE, GfpKey,
    Layouts, MAP_CACHE_NAMES, MAP_CACHE_STATS, MAP_CALLSITES, MAP_CGROUPS, MAP_COMMS, MAP_COUNTERS,
    MAP_EVENTS, MAP_FAILURES, MAP_PAGE_ALLOCS, MAP_SIZE_STATS, MAP_STACKS, ORDER_SLOTS, PROBES,
    PageKey, ProbeSpec, SiteKey, SizeStats, Usage,
};
use memtrace_common::{
    AllocatorTables, CACHE_SLOTS, MAP_CACHE_TABLE, MAP_PAGE_TABLE, MAP_TABLES, PAGE_SLOTS, Slot,
    cache_table_fields, comm_bytes, page_table_fields, size_table_gfp,
};
use serde::Serialize;

use crate::{btf::Btf, layout, tracefs};

/// The eBPF object, built by build.rs and embedded in the binary.
pub static EBPF_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/memtrace"));

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

/// The kernel's `bpf_prog_info` of a loaded program (`BPF_OBJ_GET_INFO_BY_FD`): aya's
/// `ProgramInfo` does not expose every field.
fn prog_info(
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<aya_obj::generated::bpf_prog_info> {
    use std::os::fd::AsRawFd as _;
    /// The `info` member of `union bpf_attr` for this command.
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain integers, for which all-zero is valid.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd.as_raw_fd() as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: (&raw mut info) as u64,
    };
    // SAFETY: the attribute and the info buffer are valid for the sizes given; the kernel
    // writes at most info_len bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            aya_obj::generated::bpf_cmd::BPF_OBJ_GET_INFO_BY_FD as libc::c_long,
            &raw mut attr,
            std::mem::size_of::<InfoAttr>() as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(info)
}

/// Options for [`Tracer::start`].
#[derive(Debug, Clone)]
pub struct TracerOptions {
    /// Count only this process's events (0: all).
    pub filter_tgid: u32,
    /// Count only this thread's events (0: all). Used by tests for exact counts.
    pub filter_tid: u32,
    /// kmalloc and vmalloc allocations of at least this many bytes become notable events
    /// (0: none).
    pub notable_min_bytes: u64,
    /// Page allocations of at least this order become notable events (`u32::MAX`: none).
    pub notable_min_order: u32,
    /// Which attribution is on: [`memtrace_common::ATTR_CALLSITES`], `ATTR_COMMS`,
    /// `ATTR_STACKS`, `ATTR_CGROUPS` (dropped, with a note, where the kernel's BTF lacks
    /// what it needs: see [`Tracer::cgroups_unavailable`]).
    pub attribution: u32,
    /// Attach every probe but count nothing (benchmarks' floor).
    pub hooks_only: bool,
    /// Capacity of the call-site map (distinct allocator × call site pairs).
    pub callsites_max: u32,
    /// Capacity of the task-name map (distinct allocator × comm pairs).
    pub comms_max: u32,
    /// Capacity of the memory-cgroup map (distinct allocator × cgroup pairs), with
    /// `ATTR_CGROUPS` on.
    pub cgroups_max: u32,
    pub attach: AttachPreference,
    /// Slots of each per-CPU table the programs use before the hash maps (see
    /// [`memtrace_common::Slot`]): 0 for all, else this rounded up to a power of two.
    /// Only tests lower it, to drive keys into the hash maps.
    pub table_slots: u32,
    /// Load the generic BTF programs even where a fixed-layout one fits this kernel (see
    /// [`memtrace_common::FixedBtf`]). Only tests set it, to exercise the generic ones.
    pub generic_btf: bool,
}

impl Default for TracerOptions {
    fn default() -> Self {
        TracerOptions {
            filter_tgid: 0,
            filter_tid: 0,
            attach: AttachPreference::Auto,
            notable_min_bytes: 0,
            notable_min_order: u32::MAX,
            attribution: memtrace_common::ATTR_CALLSITES | memtrace_common::ATTR_COMMS,
            hooks_only: false,
            callsites_max: memtrace_common::CALLSITES_MAX,
            comms_max: memtrace_common::COMMS_MAX,
            cgroups_max: memtrace_common::CGROUPS_MAX,
            table_slots: 0,
            generic_btf: false,
        }
    }
}

/// Loaded and attached programs with their maps.
pub struct Tracer {
    ebpf: Ebpf,
    probes: Vec<ProbeStatus>,
    nr_cpus: usize,
    /// The kernel's migrate-type names, read from the BTF parsed at start (so nobody parses
    /// it again).
    migratetypes: BTreeMap<u32, String>,
    /// Why per-cgroup counting was asked for but is off.
    cgroups_unavailable: Option<String>,
}

/// `text` with every number that could be a kernel address replaced by `<address>`: hex
/// literals of 12 or more digits, decimal numbers of 15 or more digits, and negative decimals
/// of 10 or more (older verifiers print a known 64-bit value, such as a kernel text address
/// from a load-time global, as a signed 32-bit immediate). The verifier's
/// log prints map pointers as such numbers; memtrace never shows a kernel address (KASLR).
pub fn redact_addresses(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b[i] == b'0' && b.get(i + 1).is_some_and(|c| *c == b'x' || *c == b'X');
        if hex {
            let digits = b[i + 2..]
                .iter()
                .take_while(|c| c.is_ascii_hexdigit())
                .count();
            if digits >= 12 {
                out.push_str("<address>");
                i += 2 + digits;
                continue;
            }
        } else if b[i].is_ascii_digit() && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            let negative = i > 0 && b[i - 1] == b'-';
            if digits >= 15 || (negative && digits >= 10) {
                out.push_str("<address>");
                i += digits;
                continue;
            }
        }
        // Copy one whole character (the text is UTF-8).
        let len = text[i..].chars().next().map_or(1, char::len_utf8);
        out.push_str(&text[i..i + len]);
        i += len;
    }
    out
}

/// A short, one-line description of an error chain (aya's load errors embed the whole
/// verifier log; the first line of each cause is what a person needs).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        let first = s.lines().next().unwrap_or("").trim();
        let first = first.split(". Verifier output").next().unwrap_or(first);
        if !first.is_empty() && !parts.iter().any(|p: &String| p.contains(first)) {
            parts.push(first.to_string());
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// Aggregates read from the kernel maps, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (allocator, raw gfp) → sizes
    pub sizes: BTreeMap<(Allocator, u64), SizeStats>,
    /// (allocator, page order or 0, raw gfp) → failed allocations
    pub failures: BTreeMap<(Allocator, u32, u64), u64>,
    /// (order, migratetype, raw gfp) → successful page allocations; the overflow slot of an
    /// order has migratetype `u32::MAX` and gfp [`GFP_OVERFLOW`].
    pub pages: BTreeMap<(u32, u32, u64), u64>,
    /// slab cache name → allocations (caches sharing a name are summed; `other` holds what
    /// did not fit in the map)
    pub caches: BTreeMap<String, CacheStats>,
    /// [`memtrace_common::Counter`], page-free, extfrag and compaction slots
    pub counters: Vec<u64>,
    /// [`memtrace_common::Maximum`] slots, the maximum over CPUs
    pub maxima: Vec<u64>,
    /// (allocator, call-site kernel address; 0 = overflow) → usage. Addresses stay inside
    /// memtrace: they are symbolized before anything is shown.
    pub callsites: BTreeMap<(Allocator, u64), Usage>,
    /// (allocator, task name; "" = overflow) → usage
    pub comms: BTreeMap<(Allocator, String), Usage>,
    /// (allocator, memory cgroup id: the cgroup directory's inode number;
    /// [`CGROUP_OVERFLOW`] = overflow) → usage. Empty unless `ATTR_CGROUPS` is on.
    pub cgroups: BTreeMap<(Allocator, u64), Usage>,
    /// Program runs the kernel skipped because the program was already running on that CPU
    /// (see [`Tracer::recursion_misses`]).
    pub recursion_misses: u64,
}

impl Snapshot {
    /// All sizes of one allocator, over every gfp value.
    pub fn total(&self, allocator: Allocator) -> SizeStats {
        let mut t = SizeStats::ZERO;
        for ((a, _), s) in &self.sizes {
            if *a == allocator {
                t.add(s);
            }
        }
        t
    }

    pub fn failures_of(&self, allocator: Allocator) -> u64 {
        self.failures
            .iter()
            .filter(|((a, _, _), _)| *a == allocator)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn counter(&self, c: memtrace_common::Counter) -> u64 {
        self.counter_at(c as u32)
    }

    pub fn counter_at(&self, index: u32) -> u64 {
        self.counters.get(index as usize).copied().unwrap_or(0)
    }

    /// Pages freed of `order`.
    pub fn page_frees(&self, order: u32) -> u64 {
        self.counter_at(memtrace_common::PAGE_FREES_BASE + order)
    }

    /// Direct compactions for allocations of `order`.
    pub fn compaction_stalls(&self, order: u32) -> u64 {
        self.counter_at(memtrace_common::COMPACTION_STALLS_BASE + order)
    }

    fn maximum(&self, m: memtrace_common::Maximum) -> u64 {
        self.maxima.get(m as usize).copied().unwrap_or(0)
    }

    /// The largest successful kmalloc seen, in bytes allocated (0: none).
    pub fn largest_kmalloc(&self) -> u64 {
        self.maximum(memtrace_common::Maximum::KmallocBytes)
    }

    /// The largest vmalloc area seen, in bytes (0: none).
    pub fn largest_vmalloc(&self) -> u64 {
        self.maximum(memtrace_common::Maximum::VmallocBytes)
    }

    /// The highest order of a successful page allocation seen.
    pub fn largest_page_order(&self) -> Option<u32> {
        self.maximum(memtrace_common::Maximum::PageOrderPlusOne)
            .checked_sub(1)
            .map(|o| o as u32)
    }

    /// Extfrag fallbacks to a block of `fallback_order`.
    pub fn extfrag(&self, fallback_order: u32) -> u64 {
        self.counter_at(memtrace_common::EXTFRAG_BASE + fallback_order)
    }
}

fn check_privileges() -> anyhow::Result<()> {
    let caps = crate::check::effective_caps().unwrap_or(0);
    let has = |bit: u32| caps & (1u64 << bit) != 0;
    if has(crate::check::CAP_SYS_ADMIN)
        || (has(crate::check::CAP_BPF) && has(crate::check::CAP_PERFMON))
    {
        Ok(())
    } else {
        Err(anyhow!(
            "memtrace needs root (or CAP_BPF and CAP_PERFMON) to load eBPF programs: run it with sudo"
        ))
    }
}

impl Tracer {
    /// Loads the object and attaches every probe this kernel offers.
    /// Fails only when nothing can work (no privileges, object refused, no probe attached).
    pub fn start(opts: &TracerOptions) -> anyhow::Result<Tracer> {
        Self::start_with(opts, PROBES)
    }

    /// Like [`Tracer::start`] for a chosen set of probes. A probe this kernel lacks is
    /// reported in [`Tracer::probes`] as not attached, with the reason; it is not an error.
    pub fn start_with(opts: &TracerOptions, specs: &[ProbeSpec]) -> anyhow::Result<Tracer> {
        check_privileges()?;
        bump_memlock_rlimit();

        let btf = Btf::from_sys().ok();
        // Classic tracepoints need tracefs; mount it only if a probe needs it.
        let want_btf = opts.attach != AttachPreference::Tracepoint && btf.is_some();
        let mut tracefs_dir = tracefs::mounted();
        let mut tracefs_note = None;
        // Also where the BTF does not name a tracepoint's arguments (before 5.11): then its
        // layout comes from tracefs only. (A tracepoint only older kernels have is not needed.)
        let needs_tracefs = !want_btf
            || PROBES.iter().filter(|p| p.only_on.is_none()).any(|p| {
                btf.as_ref()
                    .and_then(|b| b.tracepoint_args(p.event))
                    .is_none_or(|args| args.iter().any(|a| a.name.is_empty()))
            });
        if tracefs_dir.is_none() && needs_tracefs {
            match tracefs::ensure_mounted() {
                Ok((dir, _)) => tracefs_dir = Some(dir),
                Err(e) => tracefs_note = Some(e.to_string()),
            }
        }

        let layouts = layout::resolve(btf.as_ref(), tracefs_dir.as_deref());
        let migratetypes = btf
            .as_ref()
            .map(crate::kernel::migratetype_names)
            .unwrap_or_default();
        // aya parses the same BTF again to attach: only once ours is gone, which keeps the
        // daemon's start-up peak of memory down by one parsed copy (several MiB).
        drop(btf);
        let aya_btf = aya::Btf::from_sys_fs().ok();
        let mut opts = opts.clone();
        let mut cgroups_unavailable = None;
        if opts.attribution & ATTR_CGROUPS != 0 {
            if let Some(why) = layouts.memcg_missing() {
                opts.attribution &= !ATTR_CGROUPS;
                cgroups_unavailable = Some(why.to_string());
            }
        }
        let opts = &opts;
        let mut ebpf = load_object(&layouts.layouts, opts)?;

        let mut probes = Vec::new();
        for spec in specs {
            // A tracepoint only some kernels have (e.g. kmalloc_node before 6.1) is simply
            // not this kernel's: no probe, no series.
            if spec.only_on.is_some() && !layouts.exists(spec.event) {
                continue;
            }
            probes.push(attach_one(
                &mut ebpf,
                spec,
                opts,
                aya_btf.as_ref(),
                &layouts,
                tracefs_dir.as_deref(),
                tracefs_note.as_deref(),
            ));
        }
        if !probes.iter().any(ProbeStatus::attached) {
            let why: Vec<String> = probes
                .iter()
                .map(|p| format!("{}: {}", p.probe, p.note.as_deref().unwrap_or("?")))
                .collect();
            return Err(anyhow!("no probe could be attached ({})", why.join("; ")));
        }

        drop(aya_btf);
        let nr_cpus = nr_cpus().map_err(|(_, e)| anyhow!("cannot count possible CPUs: {e}"))?;
        let mut tracer = Tracer {
            ebpf,
            probes,
            nr_cpus,
            migratetypes,
            cgroups_unavailable,
        };
        tracer.insert_overflow_keys()?;
        Ok(tracer)
    }

    pub fn probes(&self) -> &[ProbeStatus] {
        &self.probes
    }

    /// Runs of memtrace's programs the kernel skipped, summed over the programs: a program
    /// is not run again on a CPU where it is already running (an interrupt that allocates
    /// while the same program is running on that CPU), so those events were not counted.
    /// The kernel keeps this count (`recursion_misses`) whether or not BPF statistics are on.
    pub fn recursion_misses(&self) -> anyhow::Result<u64> {
        let mut total = 0;
        for (name, prog) in self.ebpf.programs() {
            let Ok(fd) = prog.fd() else {
                continue; // not loaded (a probe this kernel lacks)
            };
            let info = prog_info(std::os::fd::AsFd::as_fd(fd))
                .with_context(|| format!("reading the statistics of program {name}"))?;
            total += info.recursion_misses;
        }
        Ok(total)
    }

    /// Why per-memory-cgroup counting is off although `ATTR_CGROUPS` was asked for (this
    /// kernel's BTF lacks a member of the chain from the task to its memory cgroup).
    pub fn cgroups_unavailable(&self) -> Option<&str> {
        self.cgroups_unavailable.as_deref()
    }

    /// The running kernel's `enum migratetype` names by value (empty without BTF).
    pub fn migratetypes(&self) -> &BTreeMap<u32, String> {
        &self.migratetypes
    }

    /// The kernel stack `id` of a notable event (innermost frame first). Identical stacks
    /// share an id, so it stays in the map; `None` if it is unknown.
    pub fn stack(&self, id: i32) -> anyhow::Result<Option<Vec<u64>>> {
        if id < 0 {
            return Ok(None);
        }
        let stacks: aya::maps::StackTraceMap<&MapData> = aya::maps::StackTraceMap::try_from(
            self.ebpf.map(MAP_STACKS).context("map STACKS missing")?,
        )?;
        let frames = match stacks.get(&(id as u32), 0) {
            Ok(st) => st
                .frames()
                .iter()
                .map(|f| f.ip)
                .filter(|&ip| ip != 0)
                .collect(),
            Err(aya::maps::MapError::KeyNotFound) => return Ok(None),
            Err(e) => return Err(e).context("reading STACKS"),
        };
        Ok(Some(frames))
    }

    /// Takes the ring buffer of notable events (once); its reader drains it.
    pub fn take_events(&mut self) -> anyhow::Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(MAP_EVENTS)
            .context("the events ring buffer was already taken")?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }

    /// Pre-inserts the overflow slots the programs count in when a map is full.
    fn insert_overflow_keys(&mut self) -> anyhow::Result<()> {
        let n = self.nr_cpus;
        let e = &mut self.ebpf;
        let gfp = |a, order| gfp_key(a, order, GFP_OVERFLOW);
        pre_insert(
            e,
            MAP_SIZE_STATS,
            Allocator::ALL.map(|a| gfp(a, 0)),
            SizeStats::ZERO,
            n,
        )?;
        let failures = Allocator::ALL.into_iter().flat_map(|a| {
            let orders = if a == Allocator::Page { ORDER_SLOTS } else { 1 };
            (0..orders).map(move |o| gfp(a, o))
        });
        pre_insert(e, MAP_FAILURES, failures, 0u64, n)?;
        let pages = (0..ORDER_SLOTS).map(|order| PageKey {
            order,
            migratetype: u32::MAX,
            gfp: GFP_OVERFLOW,
        });
        pre_insert(e, MAP_PAGE_ALLOCS, pages, 0u64, n)?;
        let sites = Allocator::ALL.map(|a| SiteKey {
            allocator: a as u32,
            _pad: 0,
            call_site: 0,
        });
        pre_insert(e, MAP_CALLSITES, sites, Usage::default(), n)?;
        let comms = Allocator::ALL.map(|a| CommKey {
            allocator: a as u32,
            _pad: 0,
            comm: [0; 2],
        });
        pre_insert(e, MAP_COMMS, comms, Usage::default(), n)?;
        let cgroups = Allocator::ALL.map(|a| CgroupKey {
            allocator: a as u32,
            _pad: 0,
            cgroup: CGROUP_OVERFLOW,
        });
        pre_insert(e, MAP_CGROUPS, cgroups, Usage::default(), n)?;
        pre_insert(e, MAP_CACHE_STATS, [CACHE_OVERFLOW], CacheStats::ZERO, n)
    }

    /// Reads every aggregate map and sums CPUs. Map read errors are returned, never swallowed.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let e = &self.ebpf;
        let tables = read_allocator_tables(e)?;
        let sum = |t: &mut u64, v: &u64| *t = t.wrapping_add(*v);
        for (key, total) in
            read_summed::<GfpKey, SizeStats>(e, MAP_SIZE_STATS, SizeStats::ZERO, SizeStats::add)?
        {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), total.count() > 0) {
                snap.sizes
                    .entry((a, key.gfp))
                    .or_insert(SizeStats::ZERO)
                    .add(&total);
            }
        }
        for ((entry, [key]), total) in tables.sizes {
            if let (Some(a), true) = (Allocator::from_u32(entry), total.count() > 0) {
                let gfp = size_table_gfp(key);
                snap.sizes
                    .entry((a, gfp))
                    .or_insert(SizeStats::ZERO)
                    .add(&total);
            }
        }
        for (key, n) in read_summed::<GfpKey, u64>(e, MAP_FAILURES, 0, sum)? {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), n > 0) {
                snap.failures.insert((a, key.order, key.gfp), n);
            }
        }
        for (key, n) in read_summed::<PageKey, u64>(e, MAP_PAGE_ALLOCS, 0, sum)? {
            if n > 0 {
                *snap
                    .pages
                    .entry((key.order, key.migratetype, key.gfp))
                    .or_default() += n;
            }
        }
        for (_, [key], n) in read_table::<1, _, PAGE_SLOTS>(e, MAP_PAGE_TABLE, 0u64, sum)? {
            if n > 0 {
                *snap.pages.entry(page_table_fields(key)).or_default() += n;
            }
        }
        let names: BpfHashMap<&MapData, u64, CacheName> = BpfHashMap::try_from(
            self.ebpf
                .map(MAP_CACHE_NAMES)
                .context("map CACHE_NAMES missing")?,
        )?;
        let mut caches: BTreeMap<u64, CacheStats> = BTreeMap::new();
        for (id, total) in
            read_summed::<u64, CacheStats>(e, MAP_CACHE_STATS, CacheStats::ZERO, CacheStats::add)?
        {
            caches.entry(id).or_insert(CacheStats::ZERO).add(&total);
        }
        // A cache-table slot holds allocations of one cache, GFP value and object size: the
        // cache's totals, and kmem_cache's size histogram for that GFP value.
        for (_, key, total) in
            read_table::<2, _, CACHE_SLOTS>(e, MAP_CACHE_TABLE, CacheStats::ZERO, CacheStats::add)?
        {
            let (id, gfp, object) = cache_table_fields(key);
            caches.entry(id).or_insert(CacheStats::ZERO).add(&total);
            if total.allocations > 0 {
                let mut sizes = SizeStats::ZERO;
                sizes.buckets[memtrace_common::size_bucket(object)] = total.allocations;
                sizes.requested_bytes = total.requested_bytes;
                sizes.allocated_bytes = total.allocated_bytes;
                snap.sizes
                    .entry((Allocator::KmemCache, gfp))
                    .or_insert(SizeStats::ZERO)
                    .add(&sizes);
            }
        }
        for (id, total) in caches {
            if total.allocations == 0 {
                continue;
            }
            let name = if id == CACHE_OVERFLOW {
                "other".to_string()
            } else {
                match names.get(&id, 0) {
                    Ok(n) => cache_name(&n),
                    // Counted before its name landed (a race on first sight): unnamed.
                    Err(aya::maps::MapError::KeyNotFound) => "unknown".to_string(),
                    Err(e) => return Err(e).context("reading CACHE_NAMES"),
                }
            };
            snap.caches
                .entry(name)
                .or_insert(CacheStats::ZERO)
                .add(&total);
        }
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_COUNTERS)
                .context("map COUNTERS missing")?,
        )?;
        for i in 0..COUNTERS_LEN {
            let v = counters.get(&i, 0).context("reading COUNTERS")?;
            snap.counters.push(v.iter().sum());
        }
        snap.maxima = memtrace_common::Maximum::ALL
            .iter()
            .map(|m| {
                tables
                    .maxima
                    .get(m.allocator() as usize)
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        for (key, u) in
            read_summed::<SiteKey, Usage>(&self.ebpf, MAP_CALLSITES, Usage::default(), Usage::add)?
        {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), u.allocations > 0) {
                snap.callsites
                    .entry((a, key.call_site))
                    .or_default()
                    .add(&u);
            }
        }
        for ((entry, [site]), u) in tables.sites {
            if let (Some(a), true) = (Allocator::from_u32(entry), u.allocations > 0) {
                snap.callsites.entry((a, site)).or_default().add(&u);
            }
        }
        let comms = read_summed::<CommKey, Usage>(e, MAP_COMMS, Usage::default(), Usage::add)?
            .into_iter()
            .map(|(k, u)| (k.allocator, comm_bytes(k.comm), u));
        let table = (tables.comms.into_iter()).map(|((e, w), u)| (e, comm_bytes(w), u));
        for (allocator, comm, u) in comms.chain(table) {
            if let (Some(a), true) = (Allocator::from_u32(allocator), u.allocations > 0) {
                let comm = crate::events::nul_terminated(&comm);
                snap.comms.entry((a, comm)).or_default().add(&u);
            }
        }
        for (key, u) in
            read_summed::<CgroupKey, Usage>(&self.ebpf, MAP_CGROUPS, Usage::default(), Usage::add)?
        {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), u.allocations > 0) {
                snap.cgroups.entry((a, key.cgroup)).or_default().add(&u);
            }
        }
        snap.recursion_misses = self.recursion_misses()?;
        Ok(snap)
    }
}

/// Loads (creates maps, relocates) the embedded object with its load-time globals.
pub(crate) fn load_object(layouts: &Layouts, opts: &TracerOptions) -> anyhow::Result<Ebpf> {
    EbpfLoader::new()
        .override_global(GLOBAL_LAYOUTS, layouts, true)
        .override_global(GLOBAL_FILTER_TGID, &opts.filter_tgid, true)
        .override_global(GLOBAL_FILTER_TID, &opts.filter_tid, true)
        .override_global(
            memtrace_common::GLOBAL_FILTERED,
            &u32::from(opts.filter_tgid != 0 || opts.filter_tid != 0),
            true,
        )
        .override_global(GLOBAL_NOTABLE_MIN_BYTES, &opts.notable_min_bytes, true)
        .override_global(GLOBAL_NOTABLE_MIN_ORDER, &opts.notable_min_order, true)
        .override_global(GLOBAL_ATTRIBUTION, &opts.attribution, true)
        .override_global(GLOBAL_PAGE_SIZE, &page_size(), true)
        .override_global(
            memtrace_common::GLOBAL_TABLE_MASK,
            &match opts.table_slots {
                0 => u32::MAX,
                n => n.next_power_of_two() - 1,
            },
            true,
        )
        .override_global(
            memtrace_common::GLOBAL_HOOKS_ONLY,
            &u32::from(opts.hooks_only),
            true,
        )
        .map_max_entries(MAP_CALLSITES, opts.callsites_max)
        .map_max_entries(MAP_COMMS, opts.comms_max)
        // Off, the map holds only its overflow slots: no per-CPU memory for nothing.
        .map_max_entries(
            MAP_CGROUPS,
            if opts.attribution & ATTR_CGROUPS != 0 {
                opts.cgroups_max
            } else {
                Allocator::ALL.len() as u32
            },
        )
        .load(EBPF_OBJECT)
        .map_err(|e| {
            anyhow!(
                "the kernel refused memtrace's eBPF object: {}",
                one_line(&e)
            )
        })
}

/// Inserts `keys` with a zero value on every CPU into the per-CPU hash `map`.
fn pre_insert<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    map: &str,
    keys: impl IntoIterator<Item = K>,
    zero: V,
    nr_cpus: usize,
) -> anyhow::Result<()> {
    let mut m: PerCpuHashMap<&mut MapData, K, V> = PerCpuHashMap::try_from(
        ebpf.map_mut(map)
            .with_context(|| format!("map {map} missing"))?,
    )?;
    for key in keys {
        let v = PerCpuValues::try_from(vec![zero; nr_cpus])?;
        m.insert(key, v, 0)
            .with_context(|| format!("pre-insert the overflow key of {map}"))?;
    }
    Ok(())
}

/// The used slots of [`MAP_TABLES`], by (allocator entry, key), summed over CPUs.
#[derive(Default)]
struct TableTotals {
    sizes: BTreeMap<(u32, [u64; 1]), SizeStats>,
    sites: BTreeMap<(u32, [u64; 1]), Usage>,
    comms: BTreeMap<(u32, [u64; 2]), Usage>,
    /// Per allocator entry, the maximum over CPUs of [`AllocatorTables::maximum`].
    maxima: Vec<u64>,
}

/// Adds the used slots of one table (see [`memtrace_common::Slot`]) of `entry` into `out`.
fn fold_slots<const W: usize, V: Copy>(
    out: &mut BTreeMap<(u32, [u64; W]), V>,
    entry: u32,
    slots: &[Slot<W, V>],
    zero: V,
    add: impl Fn(&mut V, &V),
) {
    for slot in slots.iter().filter(|s| s.key != [0; W]) {
        add(out.entry((entry, slot.key)).or_insert(zero), &slot.value);
    }
}

/// Every allocator's per-CPU tables in [`MAP_TABLES`], summed over CPUs.
fn read_allocator_tables(ebpf: &Ebpf) -> anyhow::Result<TableTotals> {
    let m: PerCpuArray<&MapData, AllocatorTables> = PerCpuArray::try_from(
        ebpf.map(MAP_TABLES)
            .with_context(|| format!("map {MAP_TABLES} missing"))?,
    )?;
    let mut out = TableTotals::default();
    for entry in 0..m.len() {
        let per_cpu = m
            .get(&entry, 0)
            .with_context(|| format!("reading {MAP_TABLES}"))?;
        out.maxima
            .push(per_cpu.iter().map(|t| t.maximum).max().unwrap_or(0));
        for t in per_cpu.iter() {
            fold_slots(
                &mut out.sizes,
                entry,
                &t.sizes,
                SizeStats::ZERO,
                SizeStats::add,
            );
            let zero = Usage::default();
            fold_slots(&mut out.sites, entry, &t.sites, zero, Usage::add);
            fold_slots(&mut out.comms, entry, &t.comms, zero, Usage::add);
        }
    }
    Ok(out)
}

/// Every used slot of every entry of the per-CPU table array `map` (see
/// [`memtrace_common::Slot`]) as (entry, key, value), the same key's slots over CPUs folded
/// with `add`.
fn read_table<const W: usize, V: aya::Pod, const N: usize>(
    ebpf: &Ebpf,
    map: &str,
    zero: V,
    add: impl Fn(&mut V, &V),
) -> anyhow::Result<Vec<(u32, [u64; W], V)>> {
    let m: PerCpuArray<&MapData, [Slot<W, V>; N]> = PerCpuArray::try_from(
        ebpf.map(map)
            .with_context(|| format!("map {map} missing"))?,
    )?;
    let mut out: BTreeMap<(u32, [u64; W]), V> = BTreeMap::new();
    for entry in 0..m.len() {
        let per_cpu = m.get(&entry, 0).with_context(|| format!("reading {map}"))?;
        for table in per_cpu.iter() {
            fold_slots(&mut out, entry, table, zero, &add);
        }
    }
    Ok(out.into_iter().map(|((e, k), v)| (e, k, v)).collect())
}

/// Every entry of the per-CPU hash `map`, its CPUs folded with `add`.
fn read_summed<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    map: &str,
    zero: V,
    add: impl Fn(&mut V, &V),
) -> anyhow::Result<Vec<(K, V)>> {
    let m: PerCpuHashMap<&MapData, K, V> = PerCpuHashMap::try_from(
        ebpf.map(map)
            .with_context(|| format!("map {map} missing"))?,
    )?;
    let mut out = Vec::new();
    for item in m.iter() {
        let (key, per_cpu) = item.with_context(|| format!("reading {map}"))?;
        let mut total = zero;
        for v in per_cpu.iter() {
            add(&mut total, v);
        }
        out.push((key, total));
    }
    Ok(out)
}

fn gfp_key(a: Allocator, order: u32, gfp: u64) -> GfpKey {
    GfpKey {
        allocator: a as u32,
        order,
        gfp,
    }
}

/// A cache name from its NUL-padded bytes.
fn cache_name(n: &CacheName) -> String {
    let s = crate::events::nul_terminated(&n.name);
    if s.is_empty() { "unknown".into() } else { s }
}

/// The status of a probe attached as `mode` running `program`; `notes` say why earlier
/// choices were not used.
fn attached(
    probe: String,
    mode: AttachMode,
    program: &'static str,
    notes: &[String],
) -> ProbeStatus {
    ProbeStatus {
        probe,
        mode: Some(mode),
        note: (!notes.is_empty()).then(|| notes.join("; ")),
        program: Some(program),
    }
}

fn attach_one(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    opts: &TracerOptions,
    aya_btf: Option<&aya::Btf>,
    layouts: &layout::Resolved,
    tracefs_dir: Option<&std::path::Path>,
    tracefs_note: Option<&str>,
) -> ProbeStatus {
    let probe = format!("{}:{}", spec.category, spec.event);
    let pref = opts.attach;
    let mut notes = Vec::new();
    if pref.allows(AttachMode::Btf) {
        match (aya_btf, layouts.btf_missing(spec.event)) {
            (None, _) => notes.push("tp_btf: kernel BTF unavailable".to_string()),
            (Some(_), Some(missing)) => notes.push(format!("tp_btf: {missing}")),
            (Some(btf), None) => {
                let (program, refused) =
                    attach_btf_best(ebpf, spec, &layouts.layouts, opts.generic_btf, btf, true);
                notes.extend(refused.into_iter().map(|why| format!("tp_btf ({why})")));
                if let Some(program) = program {
                    return attached(probe, AttachMode::Btf, program, &notes);
                }
            }
        }
    }
    if pref.allows(AttachMode::Raw) {
        if let Some(program) = spec.raw_program {
            match layouts.btf_missing(spec.event) {
                Some(missing) => notes.push(format!("raw_tp: {missing}")),
                None => match attach_raw(ebpf, spec, program, true) {
                    Ok(()) => return attached(probe, AttachMode::Raw, program, &notes),
                    Err(e) => notes.push(format!("raw_tp: {e}")),
                },
            }
        }
    }
    if pref.allows(AttachMode::Tracepoint) {
        match (tracefs_dir, layouts.tp_missing(spec.event)) {
            (None, _) => notes.push(format!(
                "tracepoint: {}",
                tracefs_note.unwrap_or("tracefs not mounted")
            )),
            (Some(_), Some(missing)) => notes.push(format!("tracepoint: {missing}")),
            (Some(_), None) => match attach_tp(ebpf, spec, true) {
                Ok(()) => {
                    return attached(probe, AttachMode::Tracepoint, spec.tp_program, &notes);
                }
                Err(e) => notes.push(format!("tracepoint: {e}")),
            },
        }
    }
    // fexit only stands in for a tracepoint this kernel lacks.
    if pref.allows(AttachMode::Fexit) && !layouts.exists(spec.event) {
        if let Some((program, function)) = spec.fexit {
            match (aya_btf, layouts.fexit_missing(spec.event)) {
                (None, _) => notes.push("fexit: kernel BTF unavailable".to_string()),
                (_, Some(missing)) => notes.push(format!("fexit: {missing}")),
                (Some(btf), None) => match attach_fexit(ebpf, program, function, btf, true) {
                    Ok(()) => return attached(probe, AttachMode::Fexit, program, &notes),
                    Err(e) => notes.push(format!("fexit on {function}: {e}")),
                },
            }
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
pub(crate) fn btf_program(spec: &ProbeSpec, layouts: &Layouts, generic: bool) -> &'static str {
    match spec.fixed_program {
        Some(fixed) if !generic && spec.fixed_matches(&layouts.btf) => fixed,
        _ => spec.btf_program,
    }
}

/// Loads (and with `attach`, attaches) `spec`'s BTF program: the one [`btf_program`] picks,
/// then the generic one if the kernel refuses it. The program that loaded, if any, and
/// `program: reason` for each refusal.
pub(crate) fn attach_btf_best(
    ebpf: &mut Ebpf,
    spec: &ProbeSpec,
    layouts: &Layouts,
    generic: bool,
    btf: &aya::Btf,
    attach: bool,
) -> (Option<&'static str>, Vec<String>) {
    let first = btf_program(spec, layouts, generic);
    let mut refused = Vec::new();
    let then_generic = (first != spec.btf_program).then_some(spec.btf_program);
    for program in std::iter::once(first).chain(then_generic) {
        match attach_btf(ebpf, spec, program, btf, attach) {
            Ok(()) => return (Some(program), refused),
            Err(e) => refused.push(format!("{program}: {e}")),
        }
    }
    (None, refused)
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

pub(crate) fn attach_btf(
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

pub(crate) fn attach_raw(
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

pub(crate) fn attach_fexit(
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

pub(crate) fn attach_tp(ebpf: &mut Ebpf, spec: &ProbeSpec, attach: bool) -> Result<(), String> {
    let prog: &mut TracePoint = program_as(ebpf, spec.tp_program)?;
    prog.load().map_err(|e| one_line(&e))?;
    if attach {
        prog.attach(spec.category, spec.event)
            .map_err(|e| one_line(&e))?;
    }
    Ok(())
}

/// Whether this kernel lets fentry programs load (optional probes may use them).
/// Loads a tiny fentry program from a fresh copy of the object; nothing is attached.
pub fn probe_fentry(btf: &aya::Btf) -> Result<(), String> {
    let mut ebpf = EbpfLoader::new()
        .load(EBPF_OBJECT)
        .map_err(|e| one_line(&e))?;
    let prog: &mut FEntry = program_as(&mut ebpf, "fentry_probe")?;
    prog.load("kfree", btf).map_err(|e| one_line(&e))
}

/// The page size, from sysconf (the kernel's own).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

/// Raises RLIMIT_MEMLOCK for kernels that still charge BPF maps against it (before 5.11).
fn bump_memlock_rlimit() {
    let rlim = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit struct.
    let rc = unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &rlim) };
    if rc != 0 {
        tracing::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_hides_kernel_addresses_only() {
        let log = "2064: (18) r1 = 0xffff8881042a0a00 ; R1=map_ptr(map=CACHE_TABLE,ks=4,vs=16384)\n\
                   r2 = 18446612686224058880 r3 = 0x9e37 off=0x1f size 4096 ké\n\
                   (b7) r4 = -2103332152 ; umax=4294967295 off=-24";
        let got = redact_addresses(log);
        assert!(!got.contains("ffff8881"), "{got}");
        assert!(!got.contains("18446612686224058880"), "{got}");
        assert!(got.contains("r1 = <address> ;"), "{got}");
        assert!(
            got.contains("r2 = <address> r3 = 0x9e37 off=0x1f size 4096 ké"),
            "{got}"
        );
        assert!(got.contains("map=CACHE_TABLE,ks=4,vs=16384"), "{got}");
        assert!(!got.contains("2103332152"), "{got}");
        assert!(got.contains("umax=4294967295 off=-24"), "{got}");
    }
}
