//! memtrace's eBPF programs.
//!
//! Each tracepoint has two programs with one body: `<event>_tp` for the classic tracepoint
//! (fields read from the trace record) and `<event>_btf` for the BTF tracepoint (fields read
//! from the argument array). Userspace attaches whichever the running kernel allows and hands
//! both field layouts, resolved from that kernel, in the load-time global `LAYOUTS`. The hot
//! events have a third, `<event>_btf_fixed`: the BTF body compiled with the layout of current
//! kernels as constants (`FixedBtf`), which userspace loads only where the resolved layout
//! equals it.
//!
//! Hot paths only touch per-CPU maps: no allocation, no unbounded loop, no lock. Aggregates
//! live first in per-CPU tables (see `memtrace_common::Slot`), then in per-CPU hash maps.
#![no_std]
#![no_main]

use core::ffi::c_void;

use aya_ebpf::{
    EbpfContext,
    bindings::{BPF_F_REUSE_STACKID, BPF_NOEXIST},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_task_btf, bpf_get_smp_processor_id, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes,
    },
    macros::{btf_tracepoint, fentry, fexit, map, raw_tracepoint, tracepoint},
    maps::{HashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, RawTracePointContext, TracePointContext,
        tracing::StackIdContext,
    },
};
use memtrace_common::{
    ALLOCATORS, AllocatorTables, CacheTable, FixedBtf, PageTable, Slot, TABLE_PROBES,
    cache_table_key, page_table_key, size_table_key, table_hash,
};
use memtrace_common::{
    ATTR_CALLSITES, ATTR_CGROUPS, ATTR_COMMS, ATTR_STACKS, Allocator, CACHE_NAME_LEN,
    CACHE_OVERFLOW, CACHE_UNREADABLE, CACHES_MAX, CALLSITES_MAX, CGROUP_OVERFLOW,
    CGROUP_UNREADABLE, CGROUPS_MAX, COMMS_MAX, COMPACTION_STALLS_BASE, COUNTERS_LEN, CacheName,
    CacheStats, CgroupKey, CommKey, Counter, EVENT_FAILED, EVENT_LARGE, EVENTS_RING_BYTES,
    EXTFRAG_BASE, ExtfragLayout, FieldLoc, FreeLayout, GFP_KEYS_MAX, GFP_OVERFLOW, GFP_UNKNOWN,
    GfpKey, KmallocLayout, KmemCacheAllocLayout, Layouts, NotableEvent, PAGE_FREES_BASE,
    PAGE_KEYS_MAX, PageAllocLayout, PageFreeLayout, PageKey, PercpuAllocLayout, PurgeLayout,
    RECORD_BYTES, SIZE_BUCKETS, STACKS_MAX, SiteKey, SizeStats, Usage, VmapAreaLayout,
    cache_name_id, order_slot, size_bucket, span,
};

#[unsafe(no_mangle)]
static LAYOUTS: Layouts = Layouts::ZERO;

/// How a program is attached, which decides how it reads its event. A constant in each
/// program, so each keeps only its own way.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Classic tracepoint: fields are copied from the trace record.
    Tp,
    /// BTF tracepoint (or fexit): the argument array, pointers BTF-typed (plain loads
    /// through them are checked by the verifier).
    Btf,
    /// Raw tracepoint: the same argument array, every value a plain number (kernel memory is
    /// read with `bpf_probe_read_kernel`).
    Raw,
}

impl Kind {
    /// Whether the context is the tracepoint's argument array (not a record).
    #[inline(always)]
    fn args(self) -> bool {
        self != Kind::Tp
    }

    /// Whether pointer arguments are BTF-typed.
    #[inline(always)]
    fn typed(self) -> bool {
        self == Kind::Btf
    }
}

#[unsafe(no_mangle)]
static FILTER_TGID: u32 = 0;

#[unsafe(no_mangle)]
static FILTER_TID: u32 = 0;

/// 1 when FILTER_TGID or FILTER_TID is set.
#[unsafe(no_mangle)]
static FILTERED: u32 = 0;

#[unsafe(no_mangle)]
static NOTABLE_MIN_BYTES: u64 = 0;

#[unsafe(no_mangle)]
static NOTABLE_MIN_ORDER: u32 = u32::MAX;

#[unsafe(no_mangle)]
static ATTRIBUTION: u32 = 0;

/// The running kernel's page size (from userspace's sysconf).
#[unsafe(no_mangle)]
static PAGE_SIZE: u64 = 0;

#[inline(always)]
fn page_bytes(order: u32) -> u64 {
    // SAFETY: a plain read of a global.
    let page = unsafe { core::ptr::read_volatile(&PAGE_SIZE) };
    page << (order & 63)
}

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static CALLSITES: PerCpuHashMap<SiteKey, Usage> = PerCpuHashMap::with_max_entries(CALLSITES_MAX, 0);

#[map]
static COMMS: PerCpuHashMap<CommKey, Usage> = PerCpuHashMap::with_max_entries(COMMS_MAX, 0);

#[map]
static CGROUPS: PerCpuHashMap<CgroupKey, Usage> = PerCpuHashMap::with_max_entries(CGROUPS_MAX, 0);

#[map]
static TABLES: PerCpuArray<AllocatorTables> = PerCpuArray::with_max_entries(ALLOCATORS, 0);

/// This CPU's tables of `allocator` (one inlined array lookup for all three).
#[inline(always)]
fn tables(allocator: Allocator) -> Option<*mut AllocatorTables> {
    TABLES.get_ptr_mut(allocator as u32)
}

#[map]
static CACHE_TABLE: PerCpuArray<CacheTable> = PerCpuArray::with_max_entries(1, 0);

#[map]
static PAGE_TABLE: PerCpuArray<PageTable> = PerCpuArray::with_max_entries(1, 0);

/// A mask on every table's slot index: all slots (`u32::MAX`), or the first `n` (`n - 1`):
/// tests make it small to drive keys into the hash maps.
#[unsafe(no_mangle)]
static TABLE_MASK: u32 = u32::MAX;

/// The value of `key` in `table` (this CPU's; see [`Slot`]), its slot claimed if the key is
/// new here (then `true`). `None` when none of the key's [`TABLE_PROBES`] slots is its own or
/// free, or the key is all-zero, or there is no table: count in the hash map.
#[inline(always)]
fn table_value<const W: usize, V, const N: usize>(
    table: Option<*mut [Slot<W, V>; N]>,
    key: [u64; W],
) -> Option<(*mut V, bool)> {
    let mut zero = true;
    for w in key {
        zero &= w == 0;
    }
    if zero {
        return None;
    }
    // SAFETY: a plain read of a global.
    let mask = (N - 1) & unsafe { core::ptr::read_volatile(&TABLE_MASK) } as usize;
    let t = table? as *mut Slot<W, V>;
    let h = table_hash(&key);
    for i in 0..TABLE_PROBES {
        // SAFETY: the index is masked below N, the table's length (a power of two), so the
        // slot lies inside the map value; it is this CPU's, and only this program writes
        // this entry (the kernel does not run a program twice at once on a CPU; see Slot).
        unsafe {
            let s = t.add((h + i) & mask);
            let (mut same, mut free) = (true, true);
            for (w, want) in key.iter().enumerate() {
                let k = (*s).key[w];
                same &= k == *want;
                free &= k == 0;
            }
            if same {
                return Some((&raw mut (*s).value, false));
            }
            if free {
                (*s).key = key;
                return Some((&raw mut (*s).value, true));
            }
        }
    }
    None
}

/// The address a BTF-typed pointer holds, as a plain number, passed through the scratch
/// word of this CPU's tables `t` ([`AllocatorTables::scratch`]; only the program that owns
/// them uses it). The verifier forbids arithmetic on such pointers (a table hash multiplies
/// its key); a word stored into a map value and loaded back is a plain number (storing a
/// pointer there needs CAP_PERFMON, which loading tracing programs needs anyway). 0 without
/// tables.
#[inline(always)]
fn address_of(p: *const u8, t: Option<*mut AllocatorTables>) -> u64 {
    match t {
        // SAFETY: this CPU's scratch word; volatile, so that the compiler keeps the round trip.
        Some(t) => unsafe {
            let w = &raw mut (*t).scratch;
            core::ptr::write_volatile(w, p as u64);
            core::ptr::read_volatile(w)
        },
        None => 0,
    }
}

#[map]
static STACKS: StackTrace = StackTrace::with_max_entries(STACKS_MAX, 0);

#[inline(always)]
fn attribution() -> u32 {
    // SAFETY: a plain read of a global.
    unsafe { core::ptr::read_volatile(&ATTRIBUTION) }
}

/// Counts one allocation of `bytes` in `key`'s per-CPU [`Usage`] of `map` (or its overflow).
#[inline(always)]
fn count_usage<K: Copy>(map: &PerCpuHashMap<K, Usage>, key: K, overflow: K, bytes: u64) {
    if let Some(p) = slot::<_, Usage>(map, key, overflow) {
        // SAFETY: per-CPU value.
        unsafe {
            (*p).allocations += 1;
            (*p).bytes += bytes;
        }
    }
}

/// The current task's memory cgroup id (its cgroupfs directory's inode number), read through
/// the BTF offsets in `LAYOUTS.memcg`: task → css_set → memory css → cgroup → kernfs node →
/// id. [`CGROUP_UNREADABLE`] if a link cannot be read. Only paid with [`ATTR_CGROUPS`] on.
///
/// A BTF tracepoint (`btf`) gets a BTF-typed task from `bpf_get_current_task_btf` and follows
/// the links with plain loads, which the verifier checks against the kernel's BTF and turns
/// into fault-safe loads: no helper call per link. A classic tracepoint may not have typed
/// pointers and reads each link with `bpf_probe_read_kernel` (five helper calls). `btf` is a
/// constant in each program, so each keeps only its own way.
#[inline(always)]
fn memcg_id(btf: bool) -> u64 {
    // SAFETY: a plain read of a global.
    let off = unsafe { core::ptr::read_volatile(&LAYOUTS.memcg) };
    let links = [
        off.task_cgroups,
        off.css_set_memory,
        off.css_cgroup,
        off.cgroup_kn,
    ];
    // SAFETY: a plain read of a global.
    let task_btf = unsafe { core::ptr::read_volatile(&LAYOUTS.task.task_btf) } != 0;
    let id = if btf && task_btf {
        // SAFETY: the helper takes no arguments.
        let mut p = unsafe { bpf_get_current_task_btf() } as *const u8;
        for o in links {
            // SAFETY: `p` is a BTF-typed kernel pointer and `o` the offset of one of its
            // members from the same BTF: the verifier checks the load and makes a fault
            // yield 0.
            let next =
                unsafe { core::ptr::read_volatile(p.wrapping_add(o as usize) as *const u64) };
            if next == 0 {
                return CGROUP_UNREADABLE;
            }
            p = next as *const u8;
        }
        // SAFETY: as above, the kernfs node's id member.
        unsafe {
            core::ptr::read_volatile(p.wrapping_add(off.kernfs_node_id as usize) as *const u64)
        }
    } else {
        // SAFETY: the helper takes no arguments.
        let mut p = unsafe { bpf_get_current_task() } as *const u8;
        for o in links {
            // SAFETY: bpf_probe_read_kernel checks the address; a failed read ends the chain.
            match unsafe { bpf_probe_read_kernel(p.wrapping_add(o as usize) as *const u64) } {
                Ok(next) if next != 0 => p = next as *const u8,
                _ => return CGROUP_UNREADABLE,
            }
        }
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(p.wrapping_add(off.kernfs_node_id as usize) as *const u64) }
            .unwrap_or(CGROUP_UNREADABLE)
    };
    if id == CGROUP_OVERFLOW {
        CGROUP_UNREADABLE
    } else {
        id
    }
}

/// Counts a successful allocation of `bytes` for its call site (when the tracepoint has one),
/// for the current task's name and for its memory cgroup, as far as attribution is on.
/// `btf`: the program is a BTF tracepoint.
#[inline(always)]
fn attribute(
    allocator: Allocator,
    t: Option<*mut AllocatorTables>,
    call_site: u64,
    bytes: u64,
    btf: bool,
) {
    let on = attribution();
    if on & ATTR_CALLSITES != 0 && call_site != 0 {
        // SAFETY: the address of a field of this CPU's tables; nothing is read here.
        let sites = t.map(|t| unsafe { &raw mut (*t).sites });
        if let Some((p, _)) = table_value(sites, [call_site]) {
            add_usage(p, bytes);
            return attribute_rest(allocator, t, bytes, btf, on);
        }
        let key = SiteKey {
            allocator: allocator as u32,
            _pad: 0,
            call_site,
        };
        let overflow = SiteKey {
            call_site: 0,
            ..key
        };
        count_usage(&CALLSITES, key, overflow, bytes);
    }
    attribute_rest(allocator, t, bytes, btf, on);
}

/// Adds one allocation of `bytes` to a [`Usage`].
#[inline(always)]
fn add_usage(p: *mut Usage, bytes: u64) {
    // SAFETY: a per-CPU value only this program writes.
    unsafe {
        (*p).allocations += 1;
        (*p).bytes += bytes;
    }
}

/// The current task's name as two words (its 16 bytes, NUL-padded). A BTF program loads
/// them from `task_struct.comm` (offset from BTF; the verifier checks the loads): no helper
/// copy. Otherwise `bpf_get_current_comm` copies it.
#[inline(always)]
fn current_comm(btf: bool) -> [u64; 2] {
    // SAFETY: a plain read of a global.
    let off = unsafe { core::ptr::read_volatile(&LAYOUTS.task.comm) } as usize;
    if btf && off != 0 {
        // SAFETY: the helper takes no arguments; `off` is `task_struct.comm`'s offset in
        // this kernel's BTF, a 16-byte member: the verifier checks both loads against it.
        unsafe {
            let task = bpf_get_current_task_btf() as *const u8;
            return [
                core::ptr::read_volatile(task.wrapping_add(off) as *const u64),
                core::ptr::read_volatile(task.wrapping_add(off + 8) as *const u64),
            ];
        }
    }
    // The helper writes the name straight into two words: a byte array read as words would
    // make the compiler split the words of the load path above into bytes too.
    let mut words = [0u64; 2];
    // SAFETY: the helper writes at most 16 bytes into the 16-byte buffer (zeroed on failure).
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(words.as_mut_ptr().cast(), 16);
    }
    words
}

/// The task-name and memory-cgroup parts of [`attribute`].
#[inline(always)]
fn attribute_rest(
    allocator: Allocator,
    t: Option<*mut AllocatorTables>,
    bytes: u64,
    btf: bool,
    on: u32,
) {
    if on & ATTR_COMMS != 0 {
        let words = current_comm(btf);
        // SAFETY: the address of a field of this CPU's tables; nothing is read here.
        let comms = t.map(|t| unsafe { &raw mut (*t).comms });
        if let Some((p, _)) = table_value(comms, words) {
            add_usage(p, bytes);
        } else {
            let key = CommKey {
                allocator: allocator as u32,
                _pad: 0,
                comm: words,
            };
            let overflow = CommKey {
                comm: [0; 2],
                ..key
            };
            count_usage(&COMMS, key, overflow, bytes);
        }
    }
    if on & ATTR_CGROUPS != 0 {
        let key = CgroupKey {
            allocator: allocator as u32,
            _pad: 0,
            cgroup: memcg_id(btf),
        };
        let overflow = CgroupKey {
            cgroup: CGROUP_OVERFLOW,
            ..key
        };
        count_usage(&CGROUPS, key, overflow, bytes);
    }
}

#[map]
static SIZE_STATS: PerCpuHashMap<GfpKey, SizeStats> =
    PerCpuHashMap::with_max_entries(GFP_KEYS_MAX, 0);

#[map]
static FAILURES: PerCpuHashMap<GfpKey, u64> = PerCpuHashMap::with_max_entries(GFP_KEYS_MAX, 0);

#[map]
static PAGE_ALLOCS: PerCpuHashMap<PageKey, u64> = PerCpuHashMap::with_max_entries(PAGE_KEYS_MAX, 0);

#[map]
static CACHE_STATS: PerCpuHashMap<u64, CacheStats> = PerCpuHashMap::with_max_entries(CACHES_MAX, 0);

#[map]
static CACHE_NAMES: HashMap<u64, CacheName> = HashMap::with_max_entries(CACHES_MAX, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Raises this CPU's maximum of an allocator ([`AllocatorTables::maximum`]) to `v`.
#[inline(always)]
fn raise(t: Option<*mut AllocatorTables>, v: u64) {
    if let Some(t) = t {
        // SAFETY: this CPU's tables, which only this program writes.
        unsafe {
            if (*t).maximum < v {
                (*t).maximum = v;
            }
        }
    }
}

/// Reads an unsigned value of 1, 2, 4 or 8 bytes at `base + loc.offset`; 0 if absent or
/// unreadable. The layout is a read-only global, so the verifier sees `loc` as constants.
#[inline(always)]
fn read(base: *const u8, loc: FieldLoc) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields 0.
    unsafe {
        let p = base.add(loc.offset as usize);
        match loc.size {
            8 => bpf_probe_read_kernel(p as *const u64).unwrap_or(0),
            4 => bpf_probe_read_kernel(p as *const u32).map_or(0, u64::from),
            2 => bpf_probe_read_kernel(p as *const u16).map_or(0, u64::from),
            1 => bpf_probe_read_kernel(p).map_or(0, u64::from),
            _ => 0,
        }
    }
}

/// Reads an unsigned member at `base + loc.offset` of a kernel struct the program was given a
/// pointer to: [`deref`] where the pointer is BTF-typed, else [`read`].
#[inline(always)]
fn member(base: *const u8, loc: FieldLoc, k: Kind) -> u64 {
    if k.typed() {
        deref(base, loc)
    } else {
        read(base, loc)
    }
}

/// Reads an unsigned field of 4 or 8 bytes at `base + loc.offset`, where `base` is a typed
/// kernel pointer a BTF tracepoint was given: a direct load, which the verifier checks
/// against the kernel's BTF and guards against faults (no helper call). 0 if absent.
#[inline(always)]
fn deref(base: *const u8, loc: FieldLoc) -> u64 {
    // SAFETY: `base` is a BTF-typed pointer and `loc` a member of its type, resolved from the
    // running kernel's BTF; the verifier rejects any other access, and the kernel turns a
    // fault into a zero.
    unsafe {
        let p = base.add(loc.offset as usize);
        match loc.size {
            8 => core::ptr::read_volatile(p as *const u64),
            4 => u64::from(core::ptr::read_volatile(p as *const u32)),
            _ => 0,
        }
    }
}

/// One field of an event (see [`Record`]).
#[inline(always)]
fn field(ctx: *mut c_void, loc: FieldLoc, k: Kind) -> u64 {
    Record::load(ctx, loc.end(), k).get(loc)
}

/// Words of a [`Record`]'s copy of a classic tracepoint's record.
const RECORD_WORDS: usize = RECORD_BYTES / 8;

/// An event's fields.
///
/// A BTF tracepoint's context is its argument array, which the program may read only at
/// constant offsets: each field is one load, picked by [`btf_arg`] from the layout (a
/// read-only global the verifier knows), so nothing is copied. A classic tracepoint's record
/// is copied once with one helper call (whole words, at most [`RECORD_BYTES`]), and fields
/// are read from the copy.
struct Record {
    ctx: *mut c_void,
    copy: Option<[u64; RECORD_WORDS]>,
}

impl Record {
    /// The fields of `ctx`; `len` is the span of the fields the program needs. `k` is a
    /// constant in every program, so each keeps only its own way.
    #[inline(always)]
    fn load(ctx: *mut c_void, len: u16, k: Kind) -> Record {
        if k.args() {
            return Record { ctx, copy: None };
        }
        let mut buf = [0u64; RECORD_WORDS];
        let n = if (len as usize) > RECORD_BYTES {
            RECORD_BYTES
        } else {
            len as usize
        };
        // SAFETY: the helper checks the source address and writes at most n <= RECORD_BYTES
        // bytes into the buffer; on failure the buffer stays zero.
        unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                buf.as_mut_ptr().cast(),
                n as u32,
                ctx as *const c_void,
            );
        }
        Record {
            ctx,
            copy: Some(buf),
        }
    }

    /// An unsigned field of 1, 2, 4 or 8 bytes; 0 if absent.
    #[inline(always)]
    fn get(&self, loc: FieldLoc) -> u64 {
        let Some(buf) = &self.copy else {
            return btf_arg(self.ctx, loc);
        };
        let off = loc.offset as usize;
        if off + 8 > RECORD_BYTES {
            return 0;
        }
        if loc.size == 8 && off.is_multiple_of(8) {
            return buf[off / 8];
        }
        // SAFETY: in bounds (checked above); unaligned reads of plain integers.
        unsafe {
            let p = buf.as_ptr().cast::<u8>().add(off);
            match loc.size {
                8 => core::ptr::read_unaligned(p as *const u64),
                4 => u64::from(core::ptr::read_unaligned(p as *const u32)),
                2 => u64::from(core::ptr::read_unaligned(p as *const u16)),
                1 => u64::from(*p),
                _ => 0,
            }
        }
    }
}

/// Argument `loc` of a BTF tracepoint (`loc.offset` is 8 × its index), as an unsigned value
/// of `loc.size` bytes; 0 if absent. Every argument is its own constant-offset context load
/// behind its own comparison with the layout, which is a read-only global: the verifier
/// knows the value, keeps the one load it selects and removes the other branches. (The
/// context may not be read at a computed offset; the loads are volatile so that the
/// compiler cannot merge them into one.)
#[inline(always)]
fn btf_arg(ctx: *mut c_void, loc: FieldLoc) -> u64 {
    let args = ctx as *const u64;
    if loc.size == 0 || !loc.offset.is_multiple_of(8) {
        return 0;
    }
    macro_rules! arg {
        ($($i:literal)*) => {
            match loc.offset / 8 {
                $(
                    // SAFETY: argument $i exists: the layout was resolved from this
                    // kernel's prototype of the tracepoint.
                    $i => unsafe { core::ptr::read_volatile(args.add($i)) },
                )*
                _ => 0,
            }
        };
    }
    let v = arg!(0 1 2 3 4 5 6 7 8 9 10 11);
    match loc.size {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => v & 0xffff,
        1 => v & 0xff,
        _ => 0,
    }
}

/// The layout of one event for classic (`tp`) or BTF (`btf`) tracepoints. Read volatile:
/// userspace rewrites the zero initialiser at load time, so the compiler must not fold it.
macro_rules! layout {
    ($kind:ident, $event:ident) => {
        // SAFETY: a plain read of a global.
        unsafe { core::ptr::read_volatile(&LAYOUTS.$kind.$event) }
    };
    ($whole:ident) => {
        // SAFETY: a plain read of a global.
        unsafe { core::ptr::read_volatile(&LAYOUTS.$whole) }
    };
}

/// 1: every program returns at once (the cost of the hooks alone, for benchmarks).
#[unsafe(no_mangle)]
static HOOKS_ONLY: u32 = 0;

#[inline(always)]
fn wanted() -> bool {
    // SAFETY: a plain read of a global.
    if unsafe { core::ptr::read_volatile(&HOOKS_ONLY) } != 0 {
        return false;
    }
    // SAFETY: a plain read of a global.
    if unsafe { core::ptr::read_volatile(&FILTERED) } == 0 {
        return true;
    }
    let id = bpf_get_current_pid_tgid();
    // Read only after the call: nothing is kept across it, so the programs need no
    // callee-saved registers for the filter (the verifier removes this branch when
    // FILTERED is 0, but not the registers the compiler chose).
    // SAFETY: plain reads of globals.
    let (tgid, tid) = unsafe {
        (
            core::ptr::read_volatile(&FILTER_TGID),
            core::ptr::read_volatile(&FILTER_TID),
        )
    };
    (tgid == 0 || (id >> 32) as u32 == tgid) && (tid == 0 || id as u32 == tid)
}

#[inline(always)]
fn add_counter(index: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs do not nest on one CPU.
        unsafe { *p += n };
    }
}

#[inline(always)]
fn bump(counter: Counter) {
    add_counter(counter as u32, 1);
}

/// Words of [`MEMTRACE_ZERO`]: at least the largest map value.
const ZERO_WORDS: usize = 32;

/// The all-zero value new map entries start from (see [`slot`]). Exported and mutable, so
/// that the compiler can neither fold it nor place it in .rodata; nothing writes it.
#[unsafe(no_mangle)]
static mut MEMTRACE_ZERO: [u64; ZERO_WORDS] = [0; ZERO_WORDS];

/// The per-CPU slot of `key` in `map`, created (zeroed) on first use. When the map is full,
/// the slot of `overflow`, which userspace pre-inserts, and the MapFull counter says so:
/// counting goes on, never silently lost.
///
/// `V` must be plain integers (all-zero is a valid value).
#[inline(always)]
fn slot<K: Copy, V>(map: &PerCpuHashMap<K, V>, key: K, overflow: K) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    // The zero value must not be a constant: a reference to one (`&0`) is a promoted
    // read-only constant, which LLVM may merge with a zero-initialised load-time global in
    // .rodata, which userspace then overwrites at load time (seen here: new entries started at
    // NOTABLE_MIN_BYTES). It is not a stack local either (a SizeStats is 184 bytes of the
    // 512-byte stack): it is writable, exported memory that nothing writes.
    const { assert!(core::mem::size_of::<V>() <= core::mem::size_of::<[u64; ZERO_WORDS]>()) };
    // SAFETY: ZERO is all-zero and large enough (asserted above); V is plain integers, for
    // which all-zero is valid; nothing ever writes ZERO.
    let zero = unsafe { &*(&raw const MEMTRACE_ZERO).cast::<V>() };
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    bump(Counter::MapFull);
    map.get_ptr_mut(overflow)
}

#[inline(always)]
fn gfp_key(allocator: Allocator, order: u32, gfp: u64) -> GfpKey {
    GfpKey {
        allocator: allocator as u32,
        order,
        gfp,
    }
}

#[inline(always)]
fn count_failure(allocator: Allocator, order: u32, gfp: u64) {
    let key = gfp_key(allocator, order, gfp);
    let overflow = gfp_key(allocator, order, GFP_OVERFLOW);
    if let Some(p) = slot(&FAILURES, key, overflow) {
        // SAFETY: per-CPU value.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn record_size(
    allocator: Allocator,
    t: Option<*mut AllocatorTables>,
    gfp: u64,
    requested: u64,
    allocated: u64,
) {
    // SAFETY: the address of a field of this CPU's tables; nothing is read here.
    let sizes = t.map(|t| unsafe { &raw mut (*t).sizes });
    let p = match table_value(sizes, [size_table_key(gfp)]) {
        Some((p, _)) => Some(p),
        None => {
            let key = gfp_key(allocator, 0, gfp);
            let overflow = gfp_key(allocator, 0, GFP_OVERFLOW);
            slot::<_, SizeStats>(&SIZE_STATS, key, overflow)
        }
    };
    if let Some(p) = p {
        let bucket = size_bucket(allocated);
        // SAFETY: per-CPU value; the bounds check satisfies the verifier.
        unsafe {
            if bucket < SIZE_BUCKETS {
                (*p).buckets[bucket] += 1;
            }
            (*p).requested_bytes += requested;
            (*p).allocated_bytes += allocated;
        }
    }
}

/// The allocation facts a notable event carries.
#[derive(Clone, Copy)]
struct Notable {
    allocator: Allocator,
    call_site: u64,
    bytes_req: u64,
    bytes_alloc: u64,
    gfp: u64,
    order: u32,
    flags: u32,
}

/// Sends a notable event; when the ring buffer is full it is counted as lost instead.
#[inline(always)]
fn emit(ctx: *mut c_void, n: Notable) {
    let stack_id = if attribution() & ATTR_STACKS != 0 {
        // The context pointer is the program's own, whichever kind it is.
        // Identical stacks share an id; on a hash collision the newer stack wins (the map
        // stays bounded and userspace never has to delete).
        match TracePointContext::new(ctx).get_stackid(&STACKS, BPF_F_REUSE_STACKID as u64) {
            Ok(id) => id as i32,
            Err(_) => -1,
        }
    } else {
        -1
    };
    let Some(mut entry) = EVENTS.reserve::<NotableEvent>(0) else {
        bump(Counter::RingbufFull);
        return;
    };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the helpers take no pointers we own.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    entry.write(NotableEvent {
        ts_ns,
        call_site: n.call_site,
        bytes_req: n.bytes_req,
        bytes_alloc: n.bytes_alloc,
        gfp: n.gfp,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        cpu,
        allocator: n.allocator as u32,
        order: n.order,
        flags: n.flags,
        stack_id,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}

#[inline(always)]
fn min_bytes() -> u64 {
    // SAFETY: a plain read of a global.
    let v = unsafe { core::ptr::read_volatile(&NOTABLE_MIN_BYTES) };
    if v == 0 { u64::MAX } else { v }
}

#[inline(always)]
fn on_kmalloc(ctx: *mut c_void, l: &KmallocLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = Record::load(
        ctx,
        span(&[l.call_site, l.ptr, l.bytes_req, l.bytes_alloc, l.gfp_flags]),
        k,
    );
    let gfp = r.get(l.gfp_flags);
    let bytes_req = r.get(l.bytes_req);
    let bytes_alloc = r.get(l.bytes_alloc);
    let mut n = Notable {
        allocator: Allocator::Kmalloc,
        call_site: r.get(l.call_site),
        bytes_req,
        bytes_alloc,
        gfp,
        order: 0,
        flags: 0,
    };
    if r.get(l.ptr) == 0 {
        count_failure(Allocator::Kmalloc, 0, gfp);
        n.flags = EVENT_FAILED;
        emit(ctx, n);
        return;
    }
    let t = tables(Allocator::Kmalloc);
    record_size(Allocator::Kmalloc, t, gfp, bytes_req, bytes_alloc);
    attribute(Allocator::Kmalloc, t, n.call_site, bytes_alloc, k.typed());
    raise(t, bytes_alloc);
    if bytes_alloc >= min_bytes() {
        n.flags = EVENT_LARGE;
        emit(ctx, n);
    }
}

#[inline(always)]
fn on_free(ctx: *mut c_void, l: &FreeLayout, counter: Counter, k: Kind) {
    // Freeing NULL is legal and frees nothing.
    if wanted() && Record::load(ctx, span(&[l.ptr]), k).get(l.ptr) != 0 {
        bump(counter);
    }
}

/// Reads a NUL-terminated kernel string into `buf` (zero-padded, possibly truncated).
#[inline(always)]
fn read_name(src: *const u8, buf: &mut [u8; CACHE_NAME_LEN]) {
    // SAFETY: the helper bounds the read by the buffer and checks the address.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, buf) };
}

/// Records the name of cache `id` in [`CACHE_NAMES`] if it has none: `known` (a classic
/// tracepoint's), or read from `cache` (a BTF tracepoint's `struct kmem_cache *`).
#[inline(always)]
fn record_cache_name(id: u64, cache: *const u8, known: Option<CacheName>) {
    let name = match known {
        Some(n) => n,
        None => {
            let mut n = CacheName {
                name: [0; CACHE_NAME_LEN],
            };
            if !cache.is_null() {
                // SAFETY: a plain read of a global.
                let off = unsafe { core::ptr::read_volatile(&LAYOUTS.kmem_cache) };
                let name_ptr = read(cache, off.name) as *const u8;
                read_name(name_ptr, &mut n.name);
            }
            n
        }
    };
    let _ = CACHE_NAMES.insert(id, name, BPF_NOEXIST as u64);
}

/// The slab cache of the object at `addr`, from its page (see [`SlabOffsets`]); null if it
/// cannot be read. Four helper reads: the two bases, the page's head, its cache.
#[inline(always)]
fn cache_of_object(addr: u64) -> *const u8 {
    // SAFETY: a plain read of a global.
    let so = unsafe { core::ptr::read_volatile(&LAYOUTS.slab) };
    if !so.is_known() {
        return core::ptr::null();
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a failed read yields null.
    unsafe {
        let (Ok(direct), Ok(pages)) = (
            bpf_probe_read_kernel(so.page_offset_base as *const u64),
            bpf_probe_read_kernel(so.vmemmap_base as *const u64),
        ) else {
            return core::ptr::null();
        };
        if addr < direct {
            return core::ptr::null();
        }
        let pfn = (addr - direct) >> (so.page_shift & 63);
        let page = pages.wrapping_add(pfn.wrapping_mul(u64::from(so.struct_page_size)));
        let head =
            bpf_probe_read_kernel((page + u64::from(so.compound_head)) as *const u64).unwrap_or(0);
        let page = if head & 1 != 0 { head - 1 } else { page };
        bpf_probe_read_kernel((page + u64::from(so.slab_cache)) as *const u64).unwrap_or(0)
            as *const u8
    }
}

#[inline(always)]
fn on_kmem_cache_alloc(ctx: *mut c_void, l: &KmemCacheAllocLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = Record::load(
        ctx,
        span(&[
            l.call_site,
            l.ptr,
            l.s,
            l.name,
            l.bytes_req,
            l.bytes_alloc,
            l.gfp_flags,
        ]),
        k,
    );
    let gfp = r.get(l.gfp_flags);
    let call_site = r.get(l.call_site);
    if r.get(l.ptr) == 0 {
        count_failure(Allocator::KmemCache, 0, gfp);
        emit(
            ctx,
            Notable {
                allocator: Allocator::KmemCache,
                call_site,
                bytes_req: r.get(l.bytes_req),
                bytes_alloc: r.get(l.bytes_alloc),
                gfp,
                order: 0,
                flags: EVENT_FAILED,
            },
        );
        return;
    }
    // A classic tracepoint reads the name on every event (it is the id); a BTF one only
    // when it claims a new table slot or meets a cache the map does not hold yet, so it
    // needs no name buffer on the hot path.
    let t = tables(Allocator::KmemCache);
    let (id, requested, allocated, cache, classic_name) = if l.s.is_present() {
        // BTF or raw tracepoint: the cache itself, its address as id.
        let s = r.get(l.s) as *const u8;
        // SAFETY: a plain read of a global.
        let off = unsafe { core::ptr::read_volatile(&LAYOUTS.kmem_cache) };
        let id = if k.typed() {
            address_of(s, t)
        } else {
            s as u64
        };
        (
            id,
            member(s, off.object_size, k),
            member(s, off.size, k),
            s,
            None,
        )
    } else if !l.name.is_present() {
        // Neither the cache nor its name (before 6.2): the cache the object lies in.
        let s = cache_of_object(r.get(l.ptr));
        let id = if s.is_null() {
            CACHE_UNREADABLE
        } else {
            s as u64
        };
        (id, r.get(l.bytes_req), r.get(l.bytes_alloc), s, None)
    } else {
        // Classic tracepoint: the record holds the name as a __data_loc string.
        let loc = r.get(l.name);
        let src = (ctx as *const u8).wrapping_add((loc & 0xffff) as usize);
        let mut name = CacheName {
            name: [0; CACHE_NAME_LEN],
        };
        read_name(src, &mut name.name);
        (
            cache_name_id(&name.name),
            r.get(l.bytes_req),
            r.get(l.bytes_alloc),
            core::ptr::null(),
            Some(name),
        )
    };
    attribute(Allocator::KmemCache, t, call_site, allocated, k.typed());

    // A slot of the cache table also stands for the size histogram (see `CacheTable`);
    // without one, the allocation counts in the cache map and the size table. Only BTF
    // programs use the table: with it, the classic and raw programs are refused by older
    // verifiers (6.1's loses the table pointer's null check across the branches above).
    let in_table = match cache_table_key(id, gfp, allocated) {
        Some(key) if k.typed() => table_value(CACHE_TABLE.get_ptr_mut(0), key),
        _ => None,
    };
    let p = match in_table {
        // Seen before on this CPU: its name was offered to CACHE_NAMES then (a cache whose
        // name did not fit there is reported as `unknown`).
        Some((p, false)) => Some(p),
        // New on this CPU: its name is recorded once for all CPUs.
        Some((p, true)) => {
            record_cache_name(id, cache, classic_name);
            Some(p)
        }
        None => {
            record_size(Allocator::KmemCache, t, gfp, requested, allocated);
            match CACHE_STATS.get_ptr_mut(id) {
                Some(p) => Some(p),
                None => {
                    record_cache_name(id, cache, classic_name);
                    slot::<_, CacheStats>(&CACHE_STATS, id, CACHE_OVERFLOW)
                }
            }
        }
    };
    if let Some(p) = p {
        // SAFETY: per-CPU value.
        unsafe {
            (*p).allocations += 1;
            (*p).requested_bytes += requested;
            (*p).allocated_bytes += allocated;
        }
    }
}

#[inline(always)]
fn on_mm_page_alloc(ctx: *mut c_void, l: &PageAllocLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = Record::load(
        ctx,
        span(&[l.pfn, l.page, l.order, l.gfp_flags, l.migratetype]),
        k,
    );
    let order = order_slot(r.get(l.order));
    let gfp = r.get(l.gfp_flags);
    let failed = if l.pfn.is_present() {
        r.get(l.pfn) == u64::MAX
    } else {
        r.get(l.page) == 0
    };
    let notable = Notable {
        allocator: Allocator::Page,
        call_site: 0,
        bytes_req: page_bytes(order),
        bytes_alloc: page_bytes(order),
        gfp,
        order,
        flags: 0,
    };
    if failed {
        count_failure(Allocator::Page, order, gfp);
        emit(
            ctx,
            Notable {
                flags: EVENT_FAILED,
                ..notable
            },
        );
        return;
    }
    // SAFETY: a plain read of a global.
    if order >= unsafe { core::ptr::read_volatile(&NOTABLE_MIN_ORDER) } {
        emit(
            ctx,
            Notable {
                flags: EVENT_LARGE,
                ..notable
            },
        );
    }
    let t = tables(Allocator::Page);
    raise(t, order as u64 + 1);
    attribute(Allocator::Page, t, 0, page_bytes(order), k.typed());
    let migratetype = r.get(l.migratetype) as u32;
    if let Some((p, _)) = table_value(
        PAGE_TABLE.get_ptr_mut(0),
        [page_table_key(order, migratetype, gfp)],
    ) {
        // SAFETY: per-CPU value only this program writes.
        unsafe { *p += 1 };
        return;
    }
    let key = PageKey {
        order,
        migratetype,
        gfp,
    };
    let overflow = PageKey {
        order,
        migratetype: u32::MAX,
        gfp: GFP_OVERFLOW,
    };
    if let Some(p) = slot(&PAGE_ALLOCS, key, overflow) {
        // SAFETY: per-CPU value.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn on_mm_page_free(ctx: *mut c_void, l: &PageFreeLayout, k: Kind) {
    if wanted() {
        add_counter(PAGE_FREES_BASE + order_slot(field(ctx, l.order, k)), 1);
    }
}

#[inline(always)]
fn on_extfrag(ctx: *mut c_void, l: &ExtfragLayout, k: Kind) {
    if wanted() {
        add_counter(
            EXTFRAG_BASE + order_slot(field(ctx, l.fallback_order, k)),
            1,
        );
    }
}

#[inline(always)]
fn on_alloc_vmap_area(ctx: *mut c_void, l: &VmapAreaLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = Record::load(ctx, span(&[l.size, l.failed, l.ret]), k);
    let size = r.get(l.size);
    // The tracepoint's `failed`, or (fexit) an error pointer or NULL returned.
    let failed = if l.ret.is_present() {
        let ret = r.get(l.ret);
        ret == 0 || ret > (-4096i64) as u64
    } else {
        r.get(l.failed) != 0
    };
    let mut n = Notable {
        allocator: Allocator::Vmalloc,
        call_site: 0,
        bytes_req: size,
        bytes_alloc: size,
        gfp: GFP_UNKNOWN,
        order: 0,
        flags: 0,
    };
    if failed {
        count_failure(Allocator::Vmalloc, 0, GFP_UNKNOWN);
        n.flags = EVENT_FAILED;
        emit(ctx, n);
        return;
    }
    let t = tables(Allocator::Vmalloc);
    record_size(Allocator::Vmalloc, t, GFP_UNKNOWN, size, size);
    attribute(Allocator::Vmalloc, t, 0, size, k.typed());
    raise(t, size);
    if size >= min_bytes() {
        n.flags = EVENT_LARGE;
        emit(ctx, n);
    }
}

#[inline(always)]
fn on_purge(ctx: *mut c_void, l: &PurgeLayout, k: Kind) {
    if wanted() {
        bump(Counter::VmallocPurges);
        add_counter(Counter::VmallocPurgedAreas as u32, field(ctx, l.npurged, k));
    }
}

#[inline(always)]
fn on_percpu_alloc(ctx: *mut c_void, l: &PercpuAllocLayout, k: Kind) {
    if wanted() {
        let r = Record::load(
            ctx,
            span(&[l.call_site, l.size, l.bytes_alloc, l.gfp_flags]),
            k,
        );
        // Before 5.14 the event has neither the bytes allocated nor the GFP flags (nor the
        // call site, which then reads as 0: no call-site attribution).
        let size = r.get(l.size);
        let bytes_alloc = if l.bytes_alloc.is_present() {
            r.get(l.bytes_alloc)
        } else {
            size
        };
        let gfp = if l.gfp_flags.is_present() {
            r.get(l.gfp_flags)
        } else {
            GFP_UNKNOWN
        };
        let t = tables(Allocator::Percpu);
        record_size(Allocator::Percpu, t, gfp, size, bytes_alloc);
        attribute(
            Allocator::Percpu,
            t,
            r.get(l.call_site),
            bytes_alloc,
            k.typed(),
        );
    }
}

/// Defines the classic, the BTF and the raw tracepoint program of one event around one body.
macro_rules! probe {
    ($event:ident, $name:literal, $tp:ident, $btf:ident, $raw:ident,
     |$ctx:ident, $l:ident, $k:ident| $body:expr) => {
        #[tracepoint]
        pub fn $tp(ctx: TracePointContext) -> u32 {
            let $ctx = ctx.as_ptr();
            let $l = layout!(tp, $event);
            let $k = Kind::Tp;
            $body;
            0
        }

        #[btf_tracepoint(function = $name)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            let $ctx = ctx.as_ptr();
            let $l = layout!(btf, $event);
            let $k = Kind::Btf;
            $body;
            0
        }

        // A raw tracepoint's arguments are the BTF tracepoint's: the same layout.
        #[raw_tracepoint(tracepoint = $name)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            let $ctx = ctx.as_ptr();
            let $l = layout!(btf, $event);
            let $k = Kind::Raw;
            $body;
            0
        }
    };
    // A hot event also gets `$fixed`: the BTF body compiled with the constant layout
    // `$layout` (see `FixedBtf`), which userspace loads where the kernel's layout equals it.
    ($event:ident, $name:literal, $tp:ident, $btf:ident, $raw:ident, $fixed:ident = $layout:expr,
     |$ctx:ident, $l:ident, $k:ident| $body:expr) => {
        probe!($event, $name, $tp, $btf, $raw, |$ctx, $l, $k| $body);

        #[btf_tracepoint(function = $name)]
        pub fn $fixed(ctx: BtfTracePointContext) -> i32 {
            let $ctx = ctx.as_ptr();
            let $l = $layout;
            let $k = Kind::Btf;
            $body;
            0
        }
    };
}

probe!(
    kmalloc,
    "kmalloc",
    kmalloc_tp,
    kmalloc_btf,
    kmalloc_raw,
    kmalloc_btf_fixed = FixedBtf::KMALLOC,
    |c, l, k| on_kmalloc(c, &l, k)
);
probe!(
    kfree,
    "kfree",
    kfree_tp,
    kfree_btf,
    kfree_raw,
    kfree_btf_fixed = FixedBtf::FREE,
    |c, l, k| on_free(c, &l, Counter::KmallocFrees, k)
);
probe!(
    kmem_cache_alloc,
    "kmem_cache_alloc",
    kmem_cache_alloc_tp,
    kmem_cache_alloc_btf,
    kmem_cache_alloc_raw,
    kmem_cache_alloc_btf_fixed = FixedBtf::KMEM_CACHE_ALLOC,
    |c, l, k| on_kmem_cache_alloc(c, &l, k)
);
probe!(
    kmalloc_node,
    "kmalloc_node",
    kmalloc_node_tp,
    kmalloc_node_btf,
    kmalloc_node_raw,
    |c, l, k| on_kmalloc(c, &l, k)
);
probe!(
    kmem_cache_alloc_node,
    "kmem_cache_alloc_node",
    kmem_cache_alloc_node_tp,
    kmem_cache_alloc_node_btf,
    kmem_cache_alloc_node_raw,
    |c, l, k| on_kmem_cache_alloc(c, &l, k)
);
probe!(
    kmem_cache_free,
    "kmem_cache_free",
    kmem_cache_free_tp,
    kmem_cache_free_btf,
    kmem_cache_free_raw,
    kmem_cache_free_btf_fixed = FixedBtf::FREE,
    |c, l, k| on_free(c, &l, Counter::KmemCacheFrees, k)
);
probe!(
    mm_page_alloc,
    "mm_page_alloc",
    mm_page_alloc_tp,
    mm_page_alloc_btf,
    mm_page_alloc_raw,
    mm_page_alloc_btf_fixed = FixedBtf::MM_PAGE_ALLOC,
    |c, l, k| on_mm_page_alloc(c, &l, k)
);
probe!(
    mm_page_free,
    "mm_page_free",
    mm_page_free_tp,
    mm_page_free_btf,
    mm_page_free_raw,
    mm_page_free_btf_fixed = FixedBtf::MM_PAGE_FREE,
    |c, l, k| on_mm_page_free(c, &l, k)
);
probe!(
    mm_page_alloc_extfrag,
    "mm_page_alloc_extfrag",
    mm_page_alloc_extfrag_tp,
    mm_page_alloc_extfrag_btf,
    mm_page_alloc_extfrag_raw,
    |c, l, k| on_extfrag(c, &l, k)
);
probe!(
    alloc_vmap_area,
    "alloc_vmap_area",
    alloc_vmap_area_tp,
    alloc_vmap_area_btf,
    alloc_vmap_area_raw,
    |c, l, k| on_alloc_vmap_area(c, &l, k)
);
/// `alloc_vmap_area()` returns, on kernels without the vmalloc tracepoints (before 6.2):
/// the same allocations the `vmalloc:alloc_vmap_area` tracepoint reports, from the function's
/// arguments and return value.
#[fexit(function = "alloc_vmap_area")]
pub fn alloc_vmap_area_fexit(ctx: FExitContext) -> i32 {
    on_alloc_vmap_area(ctx.as_ptr(), &layout!(vmap_fexit), Kind::Btf);
    0
}

probe!(
    purge_vmap_area_lazy,
    "purge_vmap_area_lazy",
    purge_vmap_area_lazy_tp,
    purge_vmap_area_lazy_btf,
    purge_vmap_area_lazy_raw,
    |c, l, k| on_purge(c, &l, k)
);
probe!(
    percpu_alloc_percpu,
    "percpu_alloc_percpu",
    percpu_alloc_percpu_tp,
    percpu_alloc_percpu_btf,
    percpu_alloc_percpu_raw,
    |c, l, k| on_percpu_alloc(c, &l, k)
);

probe!(
    mm_compaction_try_to_compact_pages,
    "mm_compaction_try_to_compact_pages",
    mm_compaction_try_to_compact_pages_tp,
    mm_compaction_try_to_compact_pages_btf,
    mm_compaction_try_to_compact_pages_raw,
    |c, l, k| {
        if wanted() {
            add_counter(COMPACTION_STALLS_BASE + order_slot(field(c, l.order, k)), 1);
        }
    }
);

/// `oom:mark_victim`: the OOM killer chose a victim. No field is needed.
#[tracepoint]
pub fn mark_victim_tp(_ctx: TracePointContext) -> u32 {
    if wanted() {
        bump(Counter::OomKills);
    }
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(_ctx: BtfTracePointContext) -> i32 {
    if wanted() {
        bump(Counter::OomKills);
    }
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim_raw(_ctx: RawTracePointContext) -> i32 {
    if wanted() {
        bump(Counter::OomKills);
    }
    0
}

/// `mm_page_free_batched` frees one order-0 page and has no field memtrace needs.
#[tracepoint]
pub fn mm_page_free_batched_tp(_ctx: TracePointContext) -> u32 {
    if wanted() {
        add_counter(PAGE_FREES_BASE, 1);
    }
    0
}

#[btf_tracepoint(function = "mm_page_free_batched")]
pub fn mm_page_free_batched_btf(_ctx: BtfTracePointContext) -> i32 {
    if wanted() {
        add_counter(PAGE_FREES_BASE, 1);
    }
    0
}

#[raw_tracepoint(tracepoint = "mm_page_free_batched")]
pub fn mm_page_free_batched_raw(_ctx: RawTracePointContext) -> i32 {
    if wanted() {
        add_counter(PAGE_FREES_BASE, 1);
    }
    0
}

/// `percpu_alloc_percpu_fail` carries no GFP flags.
#[inline(always)]
fn on_percpu_fail(ctx: *mut c_void) {
    if wanted() {
        count_failure(Allocator::Percpu, 0, GFP_UNKNOWN);
        emit(
            ctx,
            Notable {
                allocator: Allocator::Percpu,
                call_site: 0,
                bytes_req: 0,
                bytes_alloc: 0,
                gfp: GFP_UNKNOWN,
                order: 0,
                flags: EVENT_FAILED,
            },
        );
    }
}

#[tracepoint]
pub fn percpu_alloc_percpu_fail_tp(ctx: TracePointContext) -> u32 {
    on_percpu_fail(ctx.as_ptr());
    0
}

#[btf_tracepoint(function = "percpu_alloc_percpu_fail")]
pub fn percpu_alloc_percpu_fail_btf(ctx: BtfTracePointContext) -> i32 {
    on_percpu_fail(ctx.as_ptr());
    0
}

#[raw_tracepoint(tracepoint = "percpu_alloc_percpu_fail")]
pub fn percpu_alloc_percpu_fail_raw(ctx: RawTracePointContext) -> i32 {
    on_percpu_fail(ctx.as_ptr());
    0
}

/// Loaded (never attached) by `memtrace check` to learn whether this kernel allows fentry.
#[fentry(function = "kfree")]
pub fn fentry_probe(_ctx: FEntryContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
