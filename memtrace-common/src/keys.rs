//! The hash maps' keys and values: by gfp, by page order, by slab cache, by call site, task
//! name and memory cgroup, and their overflow and unknown values.

use crate::SIZE_BUCKETS;

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

/// The `gfp` value under which an aggregate lands when its map is full: userspace
/// pre-inserts this key so that counting goes on, and reports it as `gfp="other"`.
pub const GFP_OVERFLOW: u64 = u64::MAX;

/// The `gfp` value of aggregates whose tracepoint carries no GFP flags (vmalloc areas,
/// percpu failures); reported as `gfp="unknown"`.
pub const GFP_UNKNOWN: u64 = u64::MAX - 1;

/// Key of [`MAP_SIZE_STATS`] and [`MAP_FAILURES`]: one allocator and one raw gfp value.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct GfpKey {
    /// An [`Allocator`] as `u32`.
    pub allocator: u32,
    /// The page order for [`Allocator::Page`] failures; 0 otherwise.
    pub order: u32,
    /// The raw `gfp_flags` the kernel passed, or [`GFP_OVERFLOW`].
    pub gfp: u64,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for GfpKey {}

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

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SizeStats {}

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

/// Key of [`MAP_PAGE_ALLOCS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PageKey {
    pub order: u32,
    /// The kernel's `enum migratetype` value.
    pub migratetype: u32,
    /// Raw gfp flags, or [`GFP_OVERFLOW`].
    pub gfp: u64,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for PageKey {}

/// Longest slab cache name kept (longer names are truncated; real ones are shorter).
pub const CACHE_NAME_LEN: usize = 32;

/// Value of [`MAP_CACHE_STATS`]: allocations from one slab cache.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheStats {
    pub allocations: u64,
    pub requested_bytes: u64,
    pub allocated_bytes: u64,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CacheStats {}

impl CacheStats {
    pub const ZERO: CacheStats = CacheStats {
        allocations: 0,
        requested_bytes: 0,
        allocated_bytes: 0,
    };

    pub fn add(&mut self, o: &CacheStats) {
        self.allocations = self.allocations.wrapping_add(o.allocations);
        self.requested_bytes = self.requested_bytes.wrapping_add(o.requested_bytes);
        self.allocated_bytes = self.allocated_bytes.wrapping_add(o.allocated_bytes);
    }
}

/// Value of [`MAP_CACHE_NAMES`]: the NUL-padded name of a cache id.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CacheName {
    pub name: [u8; CACHE_NAME_LEN],
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CacheName {}

/// The cache id under which caches count when [`MAP_CACHE_STATS`] is full.
pub const CACHE_OVERFLOW: u64 = 0;

/// The cache id of allocations whose cache could not be found from the object's page (see
/// [`SlabOffsets`]): it has no name, and is shown as `unknown`.
pub const CACHE_UNREADABLE: u64 = u64::MAX;

/// FNV-1a over a NUL-terminated name: the cache id of a classic tracepoint event, whose
/// record carries the cache's name but not its address. Never returns [`CACHE_OVERFLOW`].
#[inline(always)]
pub fn cache_name_id(name: &[u8; CACHE_NAME_LEN]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < CACHE_NAME_LEN {
        let b = name[i];
        if b == 0 {
            break;
        }
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    if h == CACHE_OVERFLOW { 1 } else { h }
}

/// Key of [`MAP_CALLSITES`]: an allocator and the kernel address that called it. The address
/// never leaves memtrace: userspace symbolizes it. `call_site == 0` is the overflow slot.
#[repr(C)]
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SiteKey {
    pub allocator: u32,
    pub _pad: u32,
    pub call_site: u64,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for SiteKey {}

/// Debug without the kernel address (KASLR).
impl core::fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SiteKey")
            .field("allocator", &self.allocator)
            .field(
                "call_site",
                &if self.call_site != 0 {
                    "<kernel address>"
                } else {
                    "overflow"
                },
            )
            .finish()
    }
}

/// Key of [`MAP_COMMS`]: an allocator and the allocating task's name. An all-zero `comm`
/// is the overflow slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CommKey {
    pub allocator: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    /// The name's 16 bytes (NUL-padded) as two native-endian words, as the programs load
    /// them (see [`comm_bytes`]).
    pub comm: [u64; 2],
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CommKey {}

/// The 16 bytes of a task name held as two native-endian words ([`CommKey::comm`], the key
/// of a [`CommTable`] slot).
pub fn comm_bytes(words: [u64; 2]) -> [u8; 16] {
    let mut b = [0; 16];
    b[..8].copy_from_slice(&words[0].to_ne_bytes());
    b[8..].copy_from_slice(&words[1].to_ne_bytes());
    b
}

/// Key of [`MAP_CGROUPS`]: an allocator and the allocating task's memory cgroup id (the
/// cgroup directory's inode number). [`CGROUP_OVERFLOW`] is the overflow slot,
/// [`CGROUP_UNREADABLE`] the id of a task whose cgroup could not be read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct CgroupKey {
    pub allocator: u32,
    pub _pad: u32,
    pub cgroup: u64,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for CgroupKey {}

/// [`CgroupKey::cgroup`] of the overflow slot (kernfs ids start at 1).
pub const CGROUP_OVERFLOW: u64 = 0;
/// [`CgroupKey::cgroup`] when the pointer chain to the id could not be read.
pub const CGROUP_UNREADABLE: u64 = u64::MAX;

/// Value of [`MAP_CALLSITES`], [`MAP_COMMS`] and [`MAP_CGROUPS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub allocations: u64,
    /// Bytes allocated (for pages: page size << order).
    pub bytes: u64,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Usage {}

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.allocations = self.allocations.wrapping_add(o.allocations);
        self.bytes = self.bytes.wrapping_add(o.bytes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cache_ids_depend_on_the_name_only_up_to_nul() {
        let mut a = [0u8; CACHE_NAME_LEN];
        a[..4].copy_from_slice(b"filp");
        let mut b = a;
        b[10] = b'x'; // after the NUL: ignored
        assert_eq!(cache_name_id(&a), cache_name_id(&b));
        let mut c = a;
        c[0] = b'F';
        assert_ne!(cache_name_id(&a), cache_name_id(&c));
        assert_ne!(cache_name_id(&[0; CACHE_NAME_LEN]), CACHE_OVERFLOW);
    }

    #[test]
    fn sizes_are_stable() {
        assert_eq!(core::mem::size_of::<GfpKey>(), 16);
        assert_eq!(core::mem::size_of::<SizeStats>(), 8 * (SIZE_BUCKETS + 2));
        assert_eq!(core::mem::size_of::<PageKey>(), 16);
        assert_eq!(core::mem::size_of::<CacheName>(), CACHE_NAME_LEN);
        assert_eq!(core::mem::size_of::<SiteKey>(), 16);
        assert_eq!(core::mem::size_of::<CommKey>(), 24);
        assert_eq!(core::mem::size_of::<CgroupKey>(), 16);
    }
}
