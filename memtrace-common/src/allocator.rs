//! The allocators, and the per-CPU counters and maxima kept for them: [`Allocator`],
//! [`Counter`], [`Maximum`], the by-order counter ranges of [`MAP_COUNTERS`].

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

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

/// Indexes of the per-CPU scalar counters in [`MAP_COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// `kmem:kfree` events of non-NULL pointers.
    KmallocFrees = 0,
    /// An aggregate could not get its own map entry (map full) and counted under the
    /// overflow key instead.
    MapFull = 1,
    /// A notable event could not be reserved in the ring buffer.
    RingbufFull = 2,
    /// `kmem:kmem_cache_free` events of non-NULL pointers.
    KmemCacheFrees = 3,
    /// `vmalloc:purge_vmap_area_lazy` events.
    VmallocPurges = 4,
    /// Sum of `npurged` over `vmalloc:purge_vmap_area_lazy` events.
    VmallocPurgedAreas = 5,
    /// `oom:mark_victim` events: processes chosen by the OOM killer.
    OomKills = 6,
    /// A heap-profile sample found [`MAP_LIVE`] full: not sampled.
    ProfileLiveFull = 7,
    /// A heap-profile event could not be reserved in [`MAP_PROFILE_EVENTS`]: a sample not
    /// taken, or a sample's free not reported (userspace ages that sample out).
    ProfileRingFull = 8,
}

/// Orders are counted in slots `0..ORDER_SLOTS`; a higher order (none exists on
/// mainstream configurations, where MAX_PAGE_ORDER is at most 10) counts in the last slot.
pub const ORDER_SLOTS: u32 = 16;
/// `COUNTERS[PAGE_FREES_BASE + order]`: pages freed, by order (`mm_page_free`, and
/// `mm_page_free_batched` as order 0).
pub const PAGE_FREES_BASE: u32 = 16;
/// `COUNTERS[EXTFRAG_BASE + fallback_order]`: `mm_page_alloc_extfrag` events by the order of
/// the block the allocator fell back to (below pageblock order means it fragments).
pub const EXTFRAG_BASE: u32 = 32;
/// `COUNTERS[COMPACTION_STALLS_BASE + order]`: direct compactions
/// (`mm_compaction_try_to_compact_pages`) by the order being allocated.
pub const COMPACTION_STALLS_BASE: u32 = 48;

/// Number of slots in [`MAP_COUNTERS`].
pub const COUNTERS_LEN: u32 = 64;

/// The largest values seen, each the maximum over CPUs of one allocator's
/// [`AllocatorTables::maximum`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Maximum {
    /// Largest successful kmalloc, bytes allocated.
    KmallocBytes = 0,
    /// Largest vmalloc area reserved, bytes.
    VmallocBytes = 1,
    /// Highest order of a successful page allocation, plus one (0: none seen).
    PageOrderPlusOne = 2,
}

impl Maximum {
    pub const ALL: [Maximum; 3] = [
        Maximum::KmallocBytes,
        Maximum::VmallocBytes,
        Maximum::PageOrderPlusOne,
    ];

    /// The allocator whose tables hold it.
    pub fn allocator(self) -> Allocator {
        match self {
            Maximum::KmallocBytes => Allocator::Kmalloc,
            Maximum::VmallocBytes => Allocator::Vmalloc,
            Maximum::PageOrderPlusOne => Allocator::Page,
        }
    }
}

// The counter ranges must not overlap.
const _: () = assert!(PAGE_FREES_BASE + ORDER_SLOTS <= EXTFRAG_BASE);
const _: () = assert!(EXTFRAG_BASE + ORDER_SLOTS <= COMPACTION_STALLS_BASE);
const _: () = assert!(COMPACTION_STALLS_BASE + ORDER_SLOTS <= COUNTERS_LEN);
const _: () = assert!((Counter::ProfileRingFull as u32) < PAGE_FREES_BASE);

/// Clamps an order into a counter slot.
#[inline(always)]
pub fn order_slot(order: u64) -> u32 {
    if order >= ORDER_SLOTS as u64 {
        ORDER_SLOTS - 1
    } else {
        order as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_clamp_into_slots() {
        assert_eq!(order_slot(0), 0);
        assert_eq!(order_slot(10), 10);
        assert_eq!(order_slot(99), ORDER_SLOTS - 1);
    }

    #[test]
    fn allocator_round_trips() {
        for a in Allocator::ALL {
            assert_eq!(Allocator::from_u32(a as u32), Some(a));
        }
        assert_eq!(Allocator::from_u32(99), None);
    }
}
