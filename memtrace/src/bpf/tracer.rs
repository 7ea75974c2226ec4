//! The loaded and attached programs with their maps: start-up (privileges, tracefs, layouts,
//! the attach plan of every probe), the overflow keys the programs count in when a map is
//! full, kernel stacks and the notable-event ring buffer.

use std::collections::BTreeMap;

use anyhow::{Context as _, anyhow};
use aya::{
    Ebpf,
    maps::{MapData, PerCpuHashMap, PerCpuValues},
    util::nr_cpus,
};
use memtrace_common::{
    ATTR_CGROUPS, Allocator, CACHE_OVERFLOW, CGROUP_OVERFLOW, CacheStats, CgroupKey, CommKey,
    GFP_OVERFLOW, GfpKey, LiveKey, MAP_CACHE_STATS, MAP_CALLSITES, MAP_CGROUPS, MAP_COMMS,
    MAP_EVENTS, MAP_FAILURES, MAP_LIVE, MAP_PAGE_ALLOCS, MAP_PROFILE_EVENTS, MAP_SIZE_STATS,
    MAP_STACKS, ORDER_SLOTS, PROBES, PageKey, ProbeSpec, SiteKey, SizeStats, Usage,
};

use super::{
    attach::{self, AttachPreference, ProbeStatus},
    bump_memlock_rlimit, layout, load_object,
};
use crate::kernel::{btf::Btf, tracefs};

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
    /// Heap profiling, if on.
    pub profile: Option<ProfileOptions>,
}

/// Heap profiling's options (see [`memtrace_common::SampleGaps`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProfileOptions {
    /// The mean of the bytes between samples.
    pub sample_bytes: u64,
    /// Capacity of the kernel's live-sample map.
    pub max_live: u32,
}

impl ProfileOptions {
    /// The mask of the live map's filter: 4 counters per live sample, at most 2^16 (256 KiB,
    /// which stays in the CPU's caches: every free reads a counter, and a larger array cost
    /// each free a cache miss). With n live samples a free finds its counter taken, and looks
    /// the live map up in vain, with probability about 1 - exp(-n / 2^16): 1.5 % at 1000.
    pub fn filter_mask(&self) -> u32 {
        (self.max_live.saturating_mul(4))
            .clamp(1 << 12, 1 << 16)
            .next_power_of_two()
            - 1
    }
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
            profile: None,
        }
    }
}

/// Loaded and attached programs with their maps.
pub struct Tracer {
    pub(super) ebpf: Ebpf,
    probes: Vec<ProbeStatus>,
    nr_cpus: usize,
    /// The kernel's migrate-type names, read from the BTF parsed at start (so nobody parses
    /// it again).
    migratetypes: BTreeMap<u32, String>,
    /// Why per-cgroup counting was asked for but is off.
    cgroups_unavailable: Option<String>,
    profile: Option<ProfileOptions>,
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
        crate::kernel::caps::require_tracing()?;
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

        let kernel = attach::Kernel {
            btf: aya_btf.as_ref(),
            layouts: &layouts,
            tracefs: match (&tracefs_dir, &tracefs_note) {
                (Some(dir), _) => attach::Tracefs::Mounted(dir),
                (None, note) => {
                    attach::Tracefs::Unavailable(note.as_deref().unwrap_or("tracefs not mounted"))
                }
            },
        };
        let mut probes = Vec::new();
        for spec in specs {
            // A tracepoint only some kernels have (e.g. kmalloc_node before 6.1) is simply
            // not this kernel's: no probe, no series.
            if spec.only_on.is_some() && !layouts.exists(spec.event) {
                continue;
            }
            probes.push(attach::attach_probe(
                &mut ebpf,
                spec,
                &kernel,
                opts.attach,
                opts.generic_btf,
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
        if opts.profile.is_some() {
            warn_page_key_mismatch(&probes);
        }
        let nr_cpus = nr_cpus().map_err(|(_, e)| anyhow!("cannot count possible CPUs: {e}"))?;
        let mut tracer = Tracer {
            ebpf,
            probes,
            nr_cpus,
            migratetypes,
            cgroups_unavailable,
            profile: opts.profile,
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

    /// Takes the heap profile's ring buffer (once); its reader feeds a
    /// [`crate::profile::live::Profiler`].
    pub fn take_profile_events(&mut self) -> anyhow::Result<aya::maps::RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(MAP_PROFILE_EVENTS)
            .context("the profile ring buffer was already taken")?;
        Ok(aya::maps::RingBuf::try_from(map)?)
    }

    /// The heap profiling options the programs were loaded with.
    pub fn profile(&self) -> Option<ProfileOptions> {
        self.profile
    }

    /// Removes live samples from the kernel's live map: those userspace aged out (see
    /// [`crate::profile::live::Profiler::tick`]), each with the time it was sampled, so that
    /// a newer sample at the same address stays. Their filter counters are left as they are:
    /// a program may change one at the same moment, and a count too high only costs a free
    /// one needless lookup. Returns how many were removed.
    pub fn forget_live(&mut self, samples: &[(LiveKey, u64)]) -> anyhow::Result<usize> {
        if self.profile.is_none() {
            return Ok(0);
        }
        let mut live: aya::maps::HashMap<&mut MapData, LiveKey, u64> =
            aya::maps::HashMap::try_from(self.ebpf.map_mut(MAP_LIVE).context("map LIVE missing")?)?;
        let mut removed = 0;
        for (k, ts) in samples {
            if live.get(k, 0).ok() == Some(*ts) && live.remove(k).is_ok() {
                removed += 1;
            }
        }
        Ok(removed)
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
}

/// Classic tracepoints name a page by its frame number, BTF and raw ones by its `struct page`
/// pointer: where the page allocation and a page free event attached differently, the heap
/// profile's page samples cannot be matched to those frees (they end when their page is
/// sampled again, or age out). Says so.
fn warn_page_key_mismatch(probes: &[ProbeStatus]) {
    let classic = |event: &str| {
        probes
            .iter()
            .find(|p| p.probe == event)
            .and_then(|p| p.mode)
            .map(|m| m == attach::AttachMode::Tracepoint)
    };
    let Some(alloc) = classic("kmem:mm_page_alloc") else {
        return;
    };
    for free in ["kmem:mm_page_free", "kmem:mm_page_free_batched"] {
        if classic(free).is_some_and(|f| f != alloc) {
            tracing::warn!(
                "heap profile: kmem:mm_page_alloc and {free} are attached differently (page frame \
                 numbers against struct page pointers): page samples freed there end only when \
                 sampled again or aged out"
            );
        }
    }
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

fn gfp_key(a: Allocator, order: u32, gfp: u64) -> GfpKey {
    GfpKey {
        allocator: a as u32,
        order,
        gfp,
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
