//! The load-time globals, which userspace sets by name before loading (each is described at its
//! name constant in `memtrace_common`, e.g. `GLOBAL_LAYOUTS` for `LAYOUTS`), the one way to
//! read them ([`global`]), and what the programs derive from them alone.

use aya_ebpf::helpers::bpf_get_current_pid_tgid;
use memtrace_common::Layouts;

#[unsafe(no_mangle)]
pub(crate) static LAYOUTS: Layouts = Layouts::ZERO;

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
pub(crate) static NOTABLE_MIN_ORDER: u32 = u32::MAX;

#[unsafe(no_mangle)]
static ATTRIBUTION: u32 = 0;

/// The running kernel's page size (from userspace's sysconf).
#[unsafe(no_mangle)]
static PAGE_SIZE: u64 = 0;

/// A mask on every table's slot index: all slots (`u32::MAX`), or the first `n` (`n - 1`):
/// tests make it small to drive keys into the hash maps.
#[unsafe(no_mangle)]
pub(crate) static TABLE_MASK: u32 = u32::MAX;

/// 1: every program returns at once (the cost of the hooks alone, for benchmarks).
#[unsafe(no_mangle)]
static HOOKS_ONLY: u32 = 0;

/// The value of a load-time global, or of a part of one (`global(&LAYOUTS.btf.kmalloc)`).
/// Read volatile: userspace rewrites the initialiser at load time, so the compiler must not
/// fold it.
#[inline(always)]
pub(crate) fn global<T: Copy>(g: &'static T) -> T {
    // SAFETY: a plain read of a global: `g` is a valid, aligned reference.
    unsafe { core::ptr::read_volatile(g) }
}

/// Whether to count this event: not in hooks-only mode, and of the filtered process or
/// thread if there is a filter.
#[inline(always)]
pub(crate) fn wanted() -> bool {
    if hooks_only() {
        return false;
    }
    if global(&FILTERED) == 0 {
        return true;
    }
    let id = bpf_get_current_pid_tgid();
    // Read only after the call: nothing is kept across it, so the programs need no
    // callee-saved registers for the filter (the verifier removes this branch when
    // FILTERED is 0, but not the registers the compiler chose).
    let (tgid, tid) = (global(&FILTER_TGID), global(&FILTER_TID));
    (tgid == 0 || (id >> 32) as u32 == tgid) && (tid == 0 || id as u32 == tid)
}

/// Whether the programs count nothing ([`HOOKS_ONLY`]).
#[inline(always)]
pub(crate) fn hooks_only() -> bool {
    global(&HOOKS_ONLY) != 0
}

#[inline(always)]
pub(crate) fn attribution() -> u32 {
    global(&ATTRIBUTION)
}

#[inline(always)]
pub(crate) fn min_bytes() -> u64 {
    let v = global(&NOTABLE_MIN_BYTES);
    if v == 0 { u64::MAX } else { v }
}

#[inline(always)]
pub(crate) fn page_bytes(order: u32) -> u64 {
    let page = global(&PAGE_SIZE);
    page << (order & 63)
}
