//! Heap profiles (see `memtrace_common::SampleGaps` for the design): the sampling countdown
//! on the allocation paths, the live-sample map and its filter on the free paths, and the
//! profile ring buffer's events.
//!
//! With profiling off ([`PROFILE_MASK`] 0, a read-only global) every function here returns
//! at its first line, which the verifier sees as constant: the branch and its code are gone
//! from the loaded program.

use core::{
    ffi::c_void,
    intrinsics::{AtomicOrdering, atomic_xadd},
};

use aya_ebpf::{
    bindings::{BPF_ANY, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_prandom_u32, bpf_get_stack,
        bpf_ktime_get_ns,
    },
};
use memtrace_common::{
    Allocator, AllocatorTables, Counter, GAP_SLOTS, LiveKey, PROFILE_ALLOC, PROFILE_FRAMES,
    PROFILE_FREE, PROFILE_MISSED_FREE, PROFILE_RING_BYTES, ProfileFree, ProfileSample, SampleGaps,
    live_slot, sample_step,
};

use crate::{
    globals::global,
    maps::{LIVE, LIVE_FILTER, PROFILE_EVENTS},
    tables::bump,
};

#[unsafe(no_mangle)]
static PROFILE_GAPS: SampleGaps = SampleGaps::ZERO;

#[unsafe(no_mangle)]
static PROFILE_MASK: u32 = 0;

/// Whether profiling is on (a constant to the verifier).
#[inline(always)]
pub(crate) fn enabled() -> bool {
    global(&PROFILE_MASK) != 0
}

/// This key's counter in the live-sample filter, if profiling is on.
#[inline(always)]
fn filter_slot(key: &LiveKey) -> Option<*mut u32> {
    let mask = global(&PROFILE_MASK);
    if mask == 0 {
        return None;
    }
    LIVE_FILTER.get_ptr_mut(live_slot(key, mask))
}

/// An allocation of `bytes` at `key`, counted in this CPU's tables `t`: sampled when this
/// CPU's countdown runs out. Only then is the filter touched (an unsampled allocation would
/// pay a cache miss on a random counter): a live sample left at the same address (its free
/// was missed) ends then, and otherwise at the address's next free.
#[inline(always)]
pub(crate) fn on_alloc(
    ctx: *mut c_void,
    t: Option<*mut AllocatorTables>,
    allocator: Allocator,
    key: LiveKey,
    bytes: u64,
    call_site: u64,
) {
    if !enabled() {
        return;
    }
    let Some(t) = t else {
        return;
    };
    // SAFETY: this CPU's tables, which only this program writes.
    let sampled = unsafe {
        sample_step(&mut (*t).countdown, bytes, || {
            let i = bpf_get_prandom_u32() as usize & (GAP_SLOTS - 1);
            global(&PROFILE_GAPS.gaps[i])
        })
    };
    if !sampled {
        return;
    }
    let Some(filter) = filter_slot(&key) else {
        return;
    };
    // SAFETY: a counter of the filter array (shared: read once, updated atomically).
    if unsafe { core::ptr::read_volatile(filter) } != 0 {
        end(key, PROFILE_MISSED_FREE, filter);
    }
    {
        let a = Allocation {
            allocator: allocator as u32,
            key,
            bytes,
            call_site,
        };
        sample(ctx, &a, filter);
    }
}

/// A free of `key`: ends its live sample if it has one. Nearly every free stops at the
/// filter's zero counter.
#[inline(always)]
pub(crate) fn on_free(key: LiveKey) {
    let Some(filter) = filter_slot(&key) else {
        return;
    };
    // SAFETY: as in `on_alloc`.
    if unsafe { core::ptr::read_volatile(filter) } != 0 {
        end(key, PROFILE_FREE, filter);
    }
}

/// Sends a sample with its kernel stack and enters it in the live map. The event is reserved
/// first and submitted only once the sample is live: a sample the map cannot hold is never
/// reported (and counted as lost). Its free cannot come before: the pointer is not yet
/// returned to its caller.
/// A sampled allocation. (`sample` and `end` are inlined: as BPF functions their frames
/// added to the classic `kmem_cache_alloc` program's exceed the 512-byte stack on 5.10.)
struct Allocation {
    allocator: u32,
    key: LiveKey,
    bytes: u64,
    call_site: u64,
}

#[inline(always)]
fn sample(ctx: *mut c_void, a: &Allocation, filter: *mut u32) {
    let Some(mut entry) = PROFILE_EVENTS.reserve::<ProfileSample>(0) else {
        bump(Counter::ProfileRingFull);
        return;
    };
    let p = entry.as_mut_ptr();
    // SAFETY: the helpers take no pointers we own but the reserved record's, which is ours
    // until submitted or discarded; `frames` is inside it.
    let ts_ns = unsafe {
        let ts_ns = bpf_ktime_get_ns();
        (*p).kind = PROFILE_ALLOC;
        (*p).allocator = a.allocator;
        (*p).ts_ns = ts_ns;
        (*p).key = a.key;
        (*p).bytes = a.bytes;
        (*p).call_site = a.call_site;
        (*p).tgid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*p).comm = bpf_get_current_comm().unwrap_or([0; 16]);
        (*p).stack_bytes = bpf_get_stack(
            ctx,
            (&raw mut (*p).frames).cast::<c_void>(),
            (PROFILE_FRAMES * 8) as u32,
            0,
        ) as i32;
        ts_ns
    };
    if LIVE.insert(a.key, ts_ns, BPF_ANY as u64).is_err() {
        entry.discard(0);
        bump(Counter::ProfileLiveFull);
        return;
    }
    add(filter, 1);
    entry.submit(submit_flags());
}

/// The flags of a profile record's submission: no wakeup of the reader (it drains the ring
/// on a timer) unless the ring is a quarter full. A wakeup per sample costs the allocating
/// task an irq_work and the reader a context switch, several microseconds.
#[inline(always)]
fn submit_flags() -> u64 {
    if PROFILE_EVENTS.query(BPF_RB_AVAIL_DATA as u64) > u64::from(PROFILE_RING_BYTES / 4) {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Adds `n` to a filter counter, atomically: other CPUs update it too. (The BPF target has no
/// compare-and-swap, so core's atomic types lack `fetch_add`; the intrinsic is the kernel's
/// atomic add, whose result is unused.)
#[inline(always)]
fn add(counter: *mut u32, n: u32) {
    // SAFETY: `counter` points into the filter array's value.
    let _ = unsafe { atomic_xadd::<u32, u32, { AtomicOrdering::Relaxed }>(counter, n) };
}

/// Ends the live sample of `key`, if there is one, with a `kind` event. The event is
/// reserved first: when the ring buffer is full the sample stays live on both sides (to end
/// at its address's next allocation, or to age out), rather than live in userspace only.
#[inline(always)]
fn end(key: LiveKey, kind: u32, filter: *mut u32) {
    let Some(mut entry) = PROFILE_EVENTS.reserve::<ProfileFree>(0) else {
        bump(Counter::ProfileRingFull);
        return;
    };
    if LIVE.remove(key).is_err() {
        // Another key of the same filter slot (or the bucket is busy: a program nested on
        // this CPU holds it; the sample then ends at its address's next allocation).
        entry.discard(0);
        return;
    }
    add(filter, u32::MAX); // minus one
    entry.write(ProfileFree {
        kind,
        _pad: 0,
        // SAFETY: the helper takes no arguments.
        ts_ns: unsafe { bpf_ktime_get_ns() },
        key,
    });
    entry.submit(submit_flags());
}
