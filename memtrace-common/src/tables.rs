//! The per-CPU open-addressed tables that hold the hot path's aggregates before the hash
//! maps (see [`Slot`]), and their keys.

use crate::{CACHE_OVERFLOW, CacheStats, SizeStats, Usage};

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

/// # Per-CPU tables: the hot path's aggregates
///
/// Every successful allocation updates its size histogram, its call site, its task name and
/// (slab caches) its cache. A per-CPU hash map costs a hash computation, a bucket walk and a
/// helper call per update, several times the cost of the tracepoint itself. The hot path
/// instead finds its key in a small open-addressed table held in one per-CPU array value:
/// the kernel inlines the array lookup, and the key is found in at most [`TABLE_PROBES`]
/// slots from its [`table_hash`]. A key that finds no free slot there (the table is nearly
/// full, or its neighbours are taken) counts in the per-CPU hash map of the same aggregate,
/// as before, so every allocation is counted exactly once; userspace sums both.
///
/// A slot is claimed by writing its key and is never freed, so per-key totals only grow. Each
/// table region (one array entry) is written by one program only, and the kernel does not
/// run a program again on a CPU where it is running (classic tracepoints: no BPF program
/// nests in another; BTF tracepoints: per program, since Linux 6.1, counted as recursion
/// misses), so no update races with another. On older kernels an interrupt that allocates
/// while the same BTF program runs could, rarely, count one allocation under a neighbour's
/// key.
///
/// One table slot: a non-zero key of `W` words (all-zero = free) and its value.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Slot<const W: usize, V> {
    pub key: [u64; W],
    pub value: V,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl<const W: usize, V: aya::Pod> aya::Pod for Slot<W, V> {}

/// Consecutive slots a key may take from its hash.
pub const TABLE_PROBES: usize = 4;

/// The first slot a table key is looked for in (before masking with the table's size, a
/// power of two). Multiplicative (Fibonacci) hashing: cheap in eBPF, and it spreads kernel
/// addresses, which differ in few bits, over the table.
#[inline(always)]
pub fn table_hash<const W: usize>(key: &[u64; W]) -> usize {
    let mut h: u64 = 0;
    let mut i = 0;
    while i < W {
        h = (h.rotate_left(29) ^ key[i]).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        i += 1;
    }
    (h >> 40) as usize
}

/// Slots of [`AllocatorTables::sizes`]: gfp values (a few dozen exist).
pub const SIZE_SLOTS: usize = 32;
/// Slots of [`AllocatorTables::sites`]: call sites.
pub const SITE_SLOTS: usize = 512;
/// Slots of [`AllocatorTables::comms`]: task names.
pub const COMM_SLOTS: usize = 256;
/// Slots in [`MAP_CACHE_TABLE`]: slab caches.
pub const CACHE_SLOTS: usize = 512;
/// Slots in [`MAP_PAGE_TABLE`]: (order, migratetype, gfp) triples.
pub const PAGE_SLOTS: usize = 256;

/// One allocator's size histograms by gfp; key: [`size_table_key`].
pub type SizeTable = [Slot<1, SizeStats>; SIZE_SLOTS];
/// One allocator's call sites; key: the call site's kernel address (never 0).
pub type SiteTable = [Slot<1, Usage>; SITE_SLOTS];
/// One allocator's task names; key: the 16 bytes of the name, NUL-padded.
pub type CommTable = [Slot<2, Usage>; COMM_SLOTS];
/// Slab caches by GFP value and object size; key: [`cache_table_key`].
///
/// Every object of a cache has the same size, so a slot keyed by its size as well holds
/// allocations of one size only: userspace derives kmem_cache's size histogram per GFP value
/// from these slots, and an allocation counted here costs no second update of the size
/// table. One that finds no slot counts in [`MAP_CACHE_STATS`] and in the size table.
pub type CacheTable = [Slot<2, CacheStats>; CACHE_SLOTS];

/// The [`CacheTable`] key of an allocation from cache `id` (see [`MAP_CACHE_STATS`]) with
/// raw `gfp` flags and `allocated` bytes: `[id, gfp | allocated << 32]`. `None` (count it
/// in the maps) for id 0, or a value that does not fit 32 bits (`gfp_t` is an
/// `unsigned int`; slab objects are far below 4 GiB).
#[inline(always)]
pub fn cache_table_key(id: u64, gfp: u64, allocated: u64) -> Option<[u64; 2]> {
    if id == CACHE_OVERFLOW || gfp > u32::MAX as u64 || allocated > u32::MAX as u64 {
        return None;
    }
    Some([id, gfp | allocated << 32])
}

/// (cache id, raw gfp, bytes allocated per object) of a [`CacheTable`] key.
pub fn cache_table_fields(key: [u64; 2]) -> (u64, u64, u64) {
    (key[0], key[1] & 0xffff_ffff, key[1] >> 32)
}
/// Page allocations; key: [`page_table_key`].
pub type PageTable = [Slot<1, u64>; PAGE_SLOTS];

/// One allocator's tables: one per-CPU array value, so that an allocation finds all three
/// with one (inlined) lookup.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct AllocatorTables {
    /// The largest allocation seen on this CPU: bytes allocated for kmalloc, bytes for
    /// vmalloc, the order plus one for pages (0: none); 0 for the other allocators.
    pub maximum: u64,
    /// A word through which the BTF `kmem_cache_alloc` program turns the cache's pointer
    /// into a number (the verifier allows no arithmetic on typed pointers); unused elsewhere.
    pub scratch: u64,
    /// Bytes this CPU still allocates with this allocator before its next heap-profile
    /// sample (see [`sample_step`]); 0 before the first draw.
    pub countdown: u64,
    pub sizes: SizeTable,
    pub sites: SiteTable,
    pub comms: CommTable,
}

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for AllocatorTables {}

const _: () = assert!(SIZE_SLOTS.is_power_of_two() && SITE_SLOTS.is_power_of_two());
const _: () = assert!(COMM_SLOTS.is_power_of_two() && CACHE_SLOTS.is_power_of_two());
const _: () = assert!(PAGE_SLOTS.is_power_of_two());
// A per-CPU array value is at most 32 KiB (the kernel's PCPU_MIN_UNIT_SIZE).
const _: () = assert!(core::mem::size_of::<AllocatorTables>() <= 32 * 1024);
const _: () = assert!(core::mem::size_of::<CacheTable>() <= 32 * 1024);
const _: () = assert!(core::mem::size_of::<PageTable>() <= 32 * 1024);

/// The [`SizeTable`] key of a raw gfp value (0, the free slot's key, for [`GFP_OVERFLOW`],
/// which never goes into a table).
#[inline(always)]
pub fn size_table_key(gfp: u64) -> u64 {
    gfp.wrapping_add(1)
}

/// The raw gfp value of a [`SizeTable`] key.
pub fn size_table_gfp(key: u64) -> u64 {
    key.wrapping_sub(1)
}

/// The [`PageTable`] key of (order, migratetype, gfp), or 0 (it goes to the hash map) when a
/// value does not fit its bits: order below 2^8, migratetype below 2^16, gfp below 2^32 (the
/// kernel's `gfp_t` is an `unsigned int`).
#[inline(always)]
pub fn page_table_key(order: u32, migratetype: u32, gfp: u64) -> u64 {
    if order >= 1 << 8 || migratetype >= 1 << 16 || gfp > u32::MAX as u64 {
        return 0;
    }
    (1 << 63) | ((order as u64) << 48) | ((migratetype as u64) << 32) | gfp
}

/// (order, migratetype, gfp) of a [`PageTable`] key.
pub fn page_table_fields(key: u64) -> (u32, u32, u64) {
    (
        ((key >> 48) & 0xff) as u32,
        ((key >> 32) & 0xffff) as u32,
        key & 0xffff_ffff,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{GFP_OVERFLOW, GFP_UNKNOWN};

    #[test]
    fn table_keys_round_trip_and_are_never_free() {
        for gfp in [0, 0xcc0, 0x400_000, GFP_UNKNOWN] {
            assert_ne!(size_table_key(gfp), 0);
            assert_eq!(size_table_gfp(size_table_key(gfp)), gfp);
        }
        // The overflow key maps to the free key: it never goes into a table.
        assert_eq!(size_table_key(GFP_OVERFLOW), 0);
        for (order, mt, gfp) in [(0, 0, 0), (10, 5, 0x140cca), (255, 65535, u32::MAX as u64)] {
            let k = page_table_key(order, mt, gfp);
            assert_ne!(k, 0);
            assert_eq!(page_table_fields(k), (order, mt, gfp));
        }
        let key = cache_table_key(0xffff_8881_0000_1200, 0xcc0, 256).expect("fits");
        assert_eq!(cache_table_fields(key), (0xffff_8881_0000_1200, 0xcc0, 256));
        assert_eq!(cache_table_key(CACHE_OVERFLOW, 0xcc0, 256), None);
        assert_eq!(cache_table_key(7, 1 << 32, 256), None);
        assert_eq!(cache_table_key(7, 0xcc0, 1 << 32), None);
        assert_eq!(page_table_key(256, 0, 0), 0);
        assert_eq!(page_table_key(0, 1 << 16, 0), 0);
        assert_eq!(page_table_key(0, 0, 1 << 32), 0);
    }

    #[test]
    fn table_hash_spreads_nearby_addresses() {
        // Call sites a few bytes apart land in different slots of a small table.
        let base = 0xffff_ffff_8130_0000u64;
        let mut seen = [false; SITE_SLOTS];
        let mut distinct = 0;
        for i in 0..64u64 {
            let slot = table_hash(&[base + i * 16]) & (SITE_SLOTS - 1);
            if !seen[slot] {
                seen[slot] = true;
                distinct += 1;
            }
        }
        assert!(distinct >= 60, "{distinct} of 64 slots distinct");
        // Both words of a two-word key count.
        assert_ne!(table_hash(&[1, 2]), table_hash(&[1, 3]));
        assert_ne!(table_hash(&[1, 2]), table_hash(&[2, 1]));
    }

    #[test]
    fn sizes_are_stable() {
        assert_eq!(core::mem::size_of::<SiteTable>(), 24 * SITE_SLOTS);
        assert_eq!(core::mem::size_of::<CommTable>(), 32 * COMM_SLOTS);
        assert_eq!(core::mem::size_of::<SizeTable>(), 192 * SIZE_SLOTS);
        assert_eq!(
            core::mem::size_of::<AllocatorTables>(),
            24 + 192 * SIZE_SLOTS + 24 * SITE_SLOTS + 32 * COMM_SLOTS
        );
    }
}
