//! memtrace's eBPF programs.
//!
//! Each tracepoint has two programs with one body: `<event>_tp` for the classic tracepoint
//! (fields read from the trace record) and `<event>_btf` for the BTF tracepoint (fields read
//! from the argument array). Userspace attaches whichever the running kernel allows and hands
//! both field layouts, resolved from that kernel, in the load-time global `LAYOUTS`.
//!
//! Hot paths only touch per-CPU maps: no allocation, no loop, no lock.
#![no_std]
#![no_main]

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{btf_tracepoint, fentry, map, tracepoint},
    maps::{PerCpuArray, PerCpuHashMap},
    programs::{BtfTracePointContext, FEntryContext, TracePointContext},
};
use memtrace_common::{
    Allocator, COUNTERS_LEN, Counter, FieldLoc, GFP_KEYS_MAX, GFP_OVERFLOW, GfpKey, KfreeLayout,
    KmallocLayout, Layouts, SIZE_BUCKETS, SizeStats, size_bucket,
};

#[unsafe(no_mangle)]
static LAYOUTS: Layouts = Layouts::ZERO;

#[unsafe(no_mangle)]
static FILTER_TGID: u32 = 0;

#[unsafe(no_mangle)]
static FILTER_TID: u32 = 0;

#[map]
static SIZE_STATS: PerCpuHashMap<GfpKey, SizeStats> =
    PerCpuHashMap::with_max_entries(GFP_KEYS_MAX, 0);

#[map]
static FAILURES: PerCpuHashMap<GfpKey, u64> = PerCpuHashMap::with_max_entries(GFP_KEYS_MAX, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

/// Reads an unsigned field of 1, 2, 4 or 8 bytes at `loc` in the context; 0 if absent.
/// The layout is a read-only global, so the verifier sees `loc` as constants and keeps one
/// branch.
#[inline(always)]
fn field(ctx: *mut core::ffi::c_void, loc: FieldLoc) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields 0.
    unsafe {
        let p = (ctx as *const u8).add(loc.offset as usize);
        match loc.size {
            8 => bpf_probe_read_kernel(p as *const u64).unwrap_or(0),
            4 => bpf_probe_read_kernel(p as *const u32).map_or(0, u64::from),
            2 => bpf_probe_read_kernel(p as *const u16).map_or(0, u64::from),
            1 => bpf_probe_read_kernel(p).map_or(0, u64::from),
            _ => 0,
        }
    }
}

/// The layout of one event for classic (`tp`) or BTF (`btf`) tracepoints. Read volatile:
/// userspace rewrites the zero initialiser at load time, so the compiler must not fold it;
/// the verifier still sees the values as constants of a frozen read-only map.
macro_rules! layout {
    ($kind:ident, $event:ident) => {
        // SAFETY: a plain read of a global.
        unsafe { core::ptr::read_volatile(&LAYOUTS.$kind.$event) }
    };
}

#[inline(always)]
fn wanted() -> bool {
    // SAFETY: as above.
    let (tgid, tid) = unsafe {
        (
            core::ptr::read_volatile(&FILTER_TGID),
            core::ptr::read_volatile(&FILTER_TID),
        )
    };
    if tgid == 0 && tid == 0 {
        return true;
    }
    let id = bpf_get_current_pid_tgid();
    (tgid == 0 || (id >> 32) as u32 == tgid) && (tid == 0 || id as u32 == tid)
}

#[inline(always)]
fn bump(counter: Counter) {
    if let Some(p) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: a per-CPU slot; programs do not nest on one CPU.
        unsafe { *p += 1 };
    }
}

/// The per-CPU slot of `key` in `map`, created (zeroed) on first use. When the map is full,
/// the slot of `overflow`, which userspace pre-inserts, and the MapFull counter says so:
/// counting goes on, never silently lost.
#[inline(always)]
fn slot<K: Copy, V>(map: &PerCpuHashMap<K, V>, key: K, zero: &V, overflow: K) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    bump(Counter::MapFull);
    map.get_ptr_mut(overflow)
}

#[inline(always)]
fn gfp_key(allocator: Allocator, gfp: u64) -> GfpKey {
    GfpKey {
        allocator: allocator as u32,
        _pad: 0,
        gfp,
    }
}

#[inline(always)]
fn count_failure(allocator: Allocator, gfp: u64) {
    let key = gfp_key(allocator, gfp);
    let overflow = gfp_key(allocator, GFP_OVERFLOW);
    if let Some(p) = slot(&FAILURES, key, &0, overflow) {
        // SAFETY: per-CPU value.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
fn record_size(allocator: Allocator, gfp: u64, requested: u64, allocated: u64) {
    let key = gfp_key(allocator, gfp);
    let overflow = gfp_key(allocator, GFP_OVERFLOW);
    if let Some(p) = slot(&SIZE_STATS, key, &SizeStats::ZERO, overflow) {
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

#[inline(always)]
fn on_kmalloc(ctx: *mut core::ffi::c_void, l: &KmallocLayout) {
    if !wanted() {
        return;
    }
    let gfp = field(ctx, l.gfp_flags);
    if field(ctx, l.ptr) == 0 {
        count_failure(Allocator::Kmalloc, gfp);
        return;
    }
    record_size(
        Allocator::Kmalloc,
        gfp,
        field(ctx, l.bytes_req),
        field(ctx, l.bytes_alloc),
    );
}

#[inline(always)]
fn on_kfree(ctx: *mut core::ffi::c_void, l: &KfreeLayout) {
    if !wanted() {
        return;
    }
    // kfree(NULL) is legal and frees nothing.
    if field(ctx, l.ptr) != 0 {
        bump(Counter::KmallocFrees);
    }
}

#[tracepoint]
pub fn kmalloc_tp(ctx: TracePointContext) -> u32 {
    on_kmalloc(ctx.as_ptr(), &layout!(tp, kmalloc));
    0
}

#[btf_tracepoint(function = "kmalloc")]
pub fn kmalloc_btf(ctx: BtfTracePointContext) -> i32 {
    on_kmalloc(ctx.as_ptr(), &layout!(btf, kmalloc));
    0
}

#[tracepoint]
pub fn kfree_tp(ctx: TracePointContext) -> u32 {
    on_kfree(ctx.as_ptr(), &layout!(tp, kfree));
    0
}

#[btf_tracepoint(function = "kfree")]
pub fn kfree_btf(ctx: BtfTracePointContext) -> i32 {
    on_kfree(ctx.as_ptr(), &layout!(btf, kfree));
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
