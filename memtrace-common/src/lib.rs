//! The one definition of everything memtrace's eBPF programs and its userspace share:
//! map names and layouts, keys, values, load-time globals and the ring-buffer event.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree byte for byte.
//! `aya::Pod` is implemented only under the `user` feature (the eBPF side has no aya).
#![no_std]

/// Number of size-histogram buckets: upper bounds at the powers of two from 8 B (2^3) to
/// 4 MiB (2^22), the kmalloc ceiling with 4 KiB pages, plus one overflow bucket (+Inf).
pub const SIZE_BUCKETS: usize = 21;
/// log2 of the first bucket's upper bound (8 B).
pub const SIZE_BUCKET_MIN_SHIFT: u32 = 3;

/// The bucket index of an allocation of `bytes`: the smallest `i` with
/// `bytes <= 2^(i + SIZE_BUCKET_MIN_SHIFT)`, or the overflow bucket.
/// Shared by both sides so the kernel's bucketing and userspace's labels cannot drift.
#[inline(always)]
pub fn size_bucket(bytes: u64) -> usize {
    if bytes <= (1 << SIZE_BUCKET_MIN_SHIFT) {
        return 0;
    }
    // ceil(log2(bytes)) = 64 - leading_zeros(bytes - 1) for bytes >= 2.
    let ceil_log2 = 64 - (bytes - 1).leading_zeros();
    let idx = (ceil_log2 - SIZE_BUCKET_MIN_SHIFT) as usize;
    if idx >= SIZE_BUCKETS - 1 {
        SIZE_BUCKETS - 1
    } else {
        idx
    }
}

/// The upper bound (`le`) of bucket `idx`, or `None` for the overflow bucket.
pub fn size_bucket_upper(idx: usize) -> Option<u64> {
    if idx + 1 >= SIZE_BUCKETS {
        None
    } else {
        Some(1u64 << (idx as u32 + SIZE_BUCKET_MIN_SHIFT))
    }
}

/// Which allocator an aggregate or event belongs to.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Allocator {
    Kmalloc = 0,
    KmemCache = 1,
    Page = 2,
    Vmalloc = 3,
    Percpu = 4,
}

impl Allocator {
    pub const ALL: [Allocator; 5] = [
        Allocator::Kmalloc,
        Allocator::KmemCache,
        Allocator::Page,
        Allocator::Vmalloc,
        Allocator::Percpu,
    ];

    pub fn from_u32(v: u32) -> Option<Self> {
        Self::ALL.get(v as usize).copied()
    }

    /// The `allocator` label value.
    pub fn name(self) -> &'static str {
        match self {
            Allocator::Kmalloc => "kmalloc",
            Allocator::KmemCache => "kmem_cache",
            Allocator::Page => "page",
            Allocator::Vmalloc => "vmalloc",
            Allocator::Percpu => "percpu",
        }
    }
}

/// The `gfp` value under which an aggregate lands when its map is full: userspace
/// pre-inserts this key so that counting goes on, and reports it as `gfp="other"`.
pub const GFP_OVERFLOW: u64 = u64::MAX;

/// Key of [`MAP_SIZE_STATS`] and [`MAP_FAILURES`]: one allocator and one raw gfp value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GfpKey {
    /// An [`Allocator`] as `u32`.
    pub allocator: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// The raw `gfp_flags` the kernel passed, or [`GFP_OVERFLOW`].
    pub gfp: u64,
}

/// Value of [`MAP_SIZE_STATS`]: a size histogram with the bytes requested and allocated.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SizeStats {
    /// Allocations per bucket (not cumulative); see [`size_bucket`].
    pub buckets: [u64; SIZE_BUCKETS],
    /// Sum of bytes the callers asked for.
    pub requested_bytes: u64,
    /// Sum of bytes the allocator handed out (after slab rounding).
    pub allocated_bytes: u64,
}

impl SizeStats {
    pub const ZERO: SizeStats = SizeStats {
        buckets: [0; SIZE_BUCKETS],
        requested_bytes: 0,
        allocated_bytes: 0,
    };

    pub fn count(&self) -> u64 {
        self.buckets.iter().sum()
    }

    /// Adds `other` into `self` (summing per-CPU values).
    pub fn add(&mut self, other: &SizeStats) {
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a = a.wrapping_add(*b);
        }
        self.requested_bytes = self.requested_bytes.wrapping_add(other.requested_bytes);
        self.allocated_bytes = self.allocated_bytes.wrapping_add(other.allocated_bytes);
    }
}

/// Indexes of the per-CPU scalar counters in [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `kmem:kfree` events.
    KmallocFrees = 0,
    /// An aggregate could not get its own map entry (map full) and counted under the
    /// overflow key instead.
    MapFull = 1,
    /// A notable event could not be reserved in the ring buffer.
    RingbufFull = 2,
}

/// Number of slots in [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = 16;

/// Where one tracepoint field lives in a program's context.
///
/// For a classic tracepoint this is the field's offset and size in the trace record (from the
/// event's `format` file); for a BTF tracepoint it is `8 * argument index` and the argument's
/// size (from the `btf_trace_<event>` prototype in the kernel's BTF). `size == 0` means the
/// running kernel does not have the field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FieldLoc {
    pub offset: u16,
    pub size: u16,
}

impl FieldLoc {
    pub const ABSENT: FieldLoc = FieldLoc { offset: 0, size: 0 };

    pub const fn new(offset: u16, size: u16) -> Self {
        FieldLoc { offset, size }
    }

    pub const fn is_present(&self) -> bool {
        self.size != 0
    }
}

/// Layout of the `kmem:kmalloc` event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KmallocLayout {
    pub call_site: FieldLoc,
    pub ptr: FieldLoc,
    pub bytes_req: FieldLoc,
    pub bytes_alloc: FieldLoc,
    pub gfp_flags: FieldLoc,
}

/// Layout of the `kmem:kfree` event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KfreeLayout {
    pub call_site: FieldLoc,
    pub ptr: FieldLoc,
}

/// Every event layout the programs need, resolved from the running kernel at start-up and
/// handed to the programs as the load-time global [`GLOBAL_LAYOUTS`]. A program attached as a
/// classic tracepoint reads `tp`, one attached as a BTF tracepoint reads `btf`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLayouts {
    pub kmalloc: KmallocLayout,
    pub kfree: KfreeLayout,
}

/// The two layout sets: one per way of attaching.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layouts {
    pub tp: EventLayouts,
    pub btf: EventLayouts,
}

impl Layouts {
    pub const ZERO: Layouts = Layouts {
        tp: EventLayouts {
            kmalloc: KmallocLayout {
                call_site: FieldLoc::ABSENT,
                ptr: FieldLoc::ABSENT,
                bytes_req: FieldLoc::ABSENT,
                bytes_alloc: FieldLoc::ABSENT,
                gfp_flags: FieldLoc::ABSENT,
            },
            kfree: KfreeLayout {
                call_site: FieldLoc::ABSENT,
                ptr: FieldLoc::ABSENT,
            },
        },
        btf: EventLayouts {
            kmalloc: KmallocLayout {
                call_site: FieldLoc::ABSENT,
                ptr: FieldLoc::ABSENT,
                bytes_req: FieldLoc::ABSENT,
                bytes_alloc: FieldLoc::ABSENT,
                gfp_flags: FieldLoc::ABSENT,
            },
            kfree: KfreeLayout {
                call_site: FieldLoc::ABSENT,
                ptr: FieldLoc::ABSENT,
            },
        },
    };
}

/// Load-time global: [`Layouts`].
pub const GLOBAL_LAYOUTS: &str = "LAYOUTS";
/// Load-time global (`u32`): count only events of this process (thread-group id); 0 counts
/// everything.
pub const GLOBAL_FILTER_TGID: &str = "FILTER_TGID";
/// Load-time global (`u32`): count only events of this thread; 0 counts everything. The
/// integration tests use it so that their counts are exact on a busy machine.
pub const GLOBAL_FILTER_TID: &str = "FILTER_TID";

/// Per-CPU hash: [`GfpKey`] → [`SizeStats`].
pub const MAP_SIZE_STATS: &str = "SIZE_STATS";
/// Per-CPU hash: [`GfpKey`] → `u64` failed allocations.
pub const MAP_FAILURES: &str = "FAILURES";
/// Per-CPU array of `u64`, indexed by [`Counter`].
pub const MAP_COUNTERS: &str = "COUNTERS";

/// Capacity of [`MAP_SIZE_STATS`] and [`MAP_FAILURES`]: distinct (allocator, gfp) pairs.
/// A busy server shows a few dozen; what does not fit counts under [`GFP_OVERFLOW`].
pub const GFP_KEYS_MAX: u32 = 1024;

/// The eBPF programs, by the tracepoint they serve: (program name, category, event).
/// `*_tp` programs attach as classic tracepoints, `*_btf` as BTF tracepoints.
pub struct ProbeSpec {
    pub category: &'static str,
    pub event: &'static str,
    pub tp_program: &'static str,
    pub btf_program: &'static str,
}

pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        category: "kmem",
        event: "kmalloc",
        tp_program: "kmalloc_tp",
        btf_program: "kmalloc_btf",
    },
    ProbeSpec {
        category: "kmem",
        event: "kfree",
        tp_program: "kfree_tp",
        btf_program: "kfree_btf",
    },
];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], made only of integers, with explicit padding.
    unsafe impl aya::Pod for GfpKey {}
    unsafe impl aya::Pod for SizeStats {}
    unsafe impl aya::Pod for FieldLoc {}
    unsafe impl aya::Pod for Layouts {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_powers_of_two_from_8_to_4mib() {
        assert_eq!(size_bucket(0), 0);
        assert_eq!(size_bucket(1), 0);
        assert_eq!(size_bucket(8), 0);
        assert_eq!(size_bucket(9), 1);
        assert_eq!(size_bucket(16), 1);
        assert_eq!(size_bucket(17), 2);
        assert_eq!(size_bucket(4096), 9);
        assert_eq!(size_bucket(4097), 10);
        assert_eq!(size_bucket(4 << 20), 19);
        assert_eq!(size_bucket((4 << 20) + 1), 20);
        assert_eq!(size_bucket(u64::MAX), 20);
        assert_eq!(size_bucket_upper(0), Some(8));
        assert_eq!(size_bucket_upper(19), Some(4 << 20));
        assert_eq!(size_bucket_upper(20), None);
        for idx in 0..SIZE_BUCKETS - 1 {
            let le = size_bucket_upper(idx).unwrap();
            assert_eq!(size_bucket(le), idx, "upper bound belongs to its bucket");
            assert_eq!(size_bucket(le + 1), idx + 1, "one past goes to the next");
        }
    }

    #[test]
    fn layout_sizes_are_stable() {
        assert_eq!(core::mem::size_of::<GfpKey>(), 16);
        assert_eq!(core::mem::size_of::<SizeStats>(), 8 * (SIZE_BUCKETS + 2));
        assert_eq!(core::mem::size_of::<FieldLoc>(), 4);
        assert_eq!(core::mem::size_of::<KmallocLayout>(), 20);
    }

    #[test]
    fn allocator_round_trips() {
        for a in Allocator::ALL {
            assert_eq!(Allocator::from_u32(a as u32), Some(a));
        }
        assert_eq!(Allocator::from_u32(99), None);
    }
}
