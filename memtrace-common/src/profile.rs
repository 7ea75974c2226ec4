//! Heap profiles: the sampling countdown, the live-sample map and its filter, and the
//! profile ring buffer's events.
//!
//! # Sampling by bytes
//!
//! Each CPU keeps, per allocator, a countdown of bytes ([`AllocatorTables::countdown`]). An
//! allocation of `n` bytes that leaves it positive is not sampled: the cost is a subtraction
//! and a compare. One that reaches it is sampled and the countdown is drawn anew from
//! [`SampleGaps`], a table of quantiles of the exponential distribution with mean
//! `--profile.sample-bytes` that userspace fills at load time (eBPF has no floating point),
//! indexed by a random number. Sample points so spaced form (nearly) a Poisson process over
//! the allocated bytes, so an allocation of `n` bytes is sampled with probability
//! `1 - exp(-n / mean)`, whatever came before it: userspace weighs each sample by the
//! inverse of that probability (see `memtrace::profile::weight`).
//!
//! # Live samples and frees
//!
//! A sampled allocation sends a [`ProfileSample`] (with its kernel stack) through
//! [`MAP_PROFILE_EVENTS`] and enters [`MAP_LIVE`] under its [`LiveKey`]. A free must find out
//! whether its pointer was sampled without a hash lookup on every free: [`MAP_LIVE_FILTER`]
//! is an array of counters indexed by [`live_slot`] (a counting Bloom filter with one hash),
//! which a sampled allocation increments and its free decrements. A free whose counter is 0
//! (nearly all) costs one inlined array load; only the others look the key up in
//! [`MAP_LIVE`], and a hit sends a [`ProfileFree`]. A live sample whose free no probe saw (a
//! free path without a tracepoint, or a free the kernel skipped because a program was
//! already running on that CPU) ends at its address's next free, or, when its address is
//! sampled again, with a [`PROFILE_MISSED_FREE`] event (only sampled allocations look at the
//! filter: for every allocation it would cost a cache miss on a random counter).

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

use crate::table_hash;

/// Entries of [`SampleGaps`] (a power of two).
pub const GAP_SLOTS: usize = 1024;

/// Load-time global [`GLOBAL_PROFILE_GAPS`]: countdowns to the next sample, in bytes, drawn
/// by a random index (see the module documentation). All zero: profiling is off.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SampleGaps {
    pub gaps: [u64; GAP_SLOTS],
}

// SAFETY: #[repr(C)], made only of integers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SampleGaps {}

impl SampleGaps {
    pub const ZERO: SampleGaps = SampleGaps {
        gaps: [0; GAP_SLOTS],
    };
}

/// The address space of a [`LiveKey`]: the free events of different allocators name
/// different things (a slab object, a page frame, a vmap area, a percpu pointer).
pub const SPACE_SLAB: u64 = 1;
/// [`LiveKey::space`] of pages: the page frame number (classic tracepoints) or the
/// `struct page` pointer (BTF and raw tracepoints).
pub const SPACE_PAGE: u64 = 2;
pub const SPACE_VMALLOC: u64 = 3;
pub const SPACE_PERCPU: u64 = 4;

/// A live sample's identity: the allocation's address in its [`space`](Self::space)
/// (`SPACE_*`). kmalloc and kmem_cache share [`SPACE_SLAB`]: either free event may free
/// either's objects.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LiveKey {
    pub addr: u64,
    pub space: u64,
}

// SAFETY: #[repr(C)], made only of integers.
#[cfg(feature = "user")]
unsafe impl aya::Pod for LiveKey {}

/// The slot of `key` in [`MAP_LIVE_FILTER`], whose size is `mask + 1` (a power of two).
#[inline(always)]
pub fn live_slot(key: &LiveKey, mask: u32) -> u32 {
    (table_hash(&[key.addr, key.space]) as u32) & mask
}

/// Hash: [`LiveKey`] → `u64` (the sample's `bpf_ktime_get_ns`), the live sampled
/// allocations. Sized by `--profile.max-live`.
pub const MAP_LIVE: &str = "LIVE";
/// Array of `u32` counters: [`MAP_LIVE`]'s filter (see the module documentation).
pub const MAP_LIVE_FILTER: &str = "LIVE_FILTER";
/// Ring buffer of [`ProfileSample`]s and [`ProfileFree`]s.
pub const MAP_PROFILE_EVENTS: &str = "PROFILE_EVENTS";
/// Size of [`MAP_PROFILE_EVENTS`] with profiling on (a power of two, a multiple of the page
/// size): ~7000 samples.
pub const PROFILE_RING_BYTES: u32 = 4 * 1024 * 1024;
/// Default capacity of [`MAP_LIVE`].
pub const LIVE_MAX: u32 = 32 * 1024;

/// Load-time global: [`SampleGaps`].
pub const GLOBAL_PROFILE_GAPS: &str = "PROFILE_GAPS";
/// Load-time global (`u32`): the mask of [`live_slot`], `MAP_LIVE_FILTER`'s size minus one;
/// 0: profiling is off (the programs' profile code is then dead and the verifier drops it).
pub const GLOBAL_PROFILE_MASK: &str = "PROFILE_MASK";

/// Frames of a [`ProfileSample`]'s kernel stack.
pub const PROFILE_FRAMES: usize = 48;

/// [`ProfileSample::kind`]: a sampled allocation.
pub const PROFILE_ALLOC: u32 = 1;
/// [`ProfileFree::kind`]: a live sample was freed.
pub const PROFILE_FREE: u32 = 2;
/// [`ProfileFree::kind`]: a live sample's address was allocated again: its free was missed.
pub const PROFILE_MISSED_FREE: u32 = 3;

/// A sampled allocation, in [`MAP_PROFILE_EVENTS`].
#[repr(C)]
#[derive(Clone, Copy)]
pub struct ProfileSample {
    /// [`PROFILE_ALLOC`].
    pub kind: u32,
    /// An [`Allocator`] as `u32`.
    pub allocator: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    pub key: LiveKey,
    /// Bytes allocated (the allocation's size in its allocator: `bytes_alloc`, the pages'
    /// bytes, the area's size).
    pub bytes: u64,
    /// The allocating call site where the event has one (kmalloc, kmem_cache, percpu), else
    /// 0: a kernel address. Symbolize it; never print it.
    pub call_site: u64,
    pub tgid: u32,
    /// Bytes of [`frames`](Self::frames) `bpf_get_stack` filled (8 per frame), or its
    /// negative error.
    pub stack_bytes: i32,
    pub comm: [u8; 16],
    /// The kernel stack, innermost frame first: kernel addresses, symbolized in userspace.
    pub frames: [u64; PROFILE_FRAMES],
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProfileSample {}

/// A live sample's end, in [`MAP_PROFILE_EVENTS`]: [`PROFILE_FREE`] or
/// [`PROFILE_MISSED_FREE`].
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProfileFree {
    pub kind: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    pub ts_ns: u64,
    pub key: LiveKey,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for ProfileFree {}

/// One step of the sampling countdown (the programs' and the estimator tests' one
/// definition): takes `bytes` from `*countdown`; returns whether the allocation is sampled,
/// and then sets the countdown anew from `gap` (a draw from [`SampleGaps`], made only then).
/// A countdown of 0 (a CPU's first allocation) is first drawn, then applied: the first
/// sample point lies a random gap from the start, as every later one from its predecessor.
#[inline(always)]
pub fn sample_step(countdown: &mut u64, bytes: u64, mut gap: impl FnMut() -> u64) -> bool {
    if bytes < *countdown {
        *countdown -= bytes;
        return false;
    }
    if *countdown == 0 {
        *countdown = gap();
        if bytes < *countdown {
            *countdown -= bytes;
            return false;
        }
    }
    *countdown = gap();
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_stable() {
        assert_eq!(core::mem::size_of::<LiveKey>(), 16);
        assert_eq!(core::mem::size_of::<ProfileFree>(), 32);
        assert_eq!(
            core::mem::size_of::<ProfileSample>(),
            8 + 8 + 16 + 8 + 8 + 8 + 16 + 8 * PROFILE_FRAMES
        );
    }

    #[test]
    fn countdown_samples_where_it_runs_out() {
        let mut c = 0;
        assert!(
            !sample_step(&mut c, 10, || 100),
            "the first draw, then its test"
        );
        assert_eq!(c, 90);
        assert!(!sample_step(&mut c, 50, || 7));
        let mut first = 0;
        assert!(
            sample_step(&mut first, 500, || 100),
            "the first gap is tested too"
        );
        assert_eq!(first, 100);
        c = 100;
        assert!(!sample_step(&mut c, 60, || 7));
        assert_eq!(c, 40);
        assert!(sample_step(&mut c, 40, || 7));
        assert_eq!(c, 7);
        assert!(sample_step(&mut c, 1000, || 5));
        assert_eq!(c, 5);
    }

    #[test]
    fn live_slots_stay_in_the_filter() {
        for a in [0u64, 1, 0xffff_8881_0000_1200, u64::MAX] {
            let k = LiveKey {
                addr: a,
                space: SPACE_SLAB,
            };
            assert!(live_slot(&k, 1023) <= 1023);
        }
        let a = LiveKey {
            addr: 0x1000,
            space: SPACE_SLAB,
        };
        let b = LiveKey {
            addr: 0x1000,
            space: SPACE_PAGE,
        };
        assert_ne!(live_slot(&a, u32::MAX), live_slot(&b, u32::MAX));
    }
}
