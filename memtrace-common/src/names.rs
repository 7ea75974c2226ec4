//! The names by which userspace finds the programs' maps and load-time globals, the maps'
//! capacities, and the bits of [`GLOBAL_ATTRIBUTION`].

use crate::Allocator;

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

/// Per-CPU array, one [`AllocatorTables`] per [`Allocator`].
pub const MAP_TABLES: &str = "TABLES";
/// Per-CPU array of one [`CacheTable`].
pub const MAP_CACHE_TABLE: &str = "CACHE_TABLE";
/// Per-CPU array of one [`PageTable`].
pub const MAP_PAGE_TABLE: &str = "PAGE_TABLE";
/// Entries of the per-allocator tables.
pub const ALLOCATORS: u32 = Allocator::ALL.len() as u32;

/// [`GLOBAL_ATTRIBUTION`] bit: count allocations per call site.
pub const ATTR_CALLSITES: u32 = 1;
/// [`GLOBAL_ATTRIBUTION`] bit: count allocations per task name.
pub const ATTR_COMMS: u32 = 2;
/// [`GLOBAL_ATTRIBUTION`] bit: record the kernel stack of every notable event.
pub const ATTR_STACKS: u32 = 4;
/// [`GLOBAL_ATTRIBUTION`] bit: count allocations per memory cgroup (reads
/// [`MemcgOffsets`]; userspace sets it only when they resolved).
pub const ATTR_CGROUPS: u32 = 8;

/// Load-time global: [`Layouts`].
pub const GLOBAL_LAYOUTS: &str = "LAYOUTS";
/// Load-time global (`u32`): count only events of this process (thread-group id); 0 counts
/// everything.
pub const GLOBAL_FILTER_TGID: &str = "FILTER_TGID";
/// Load-time global (`u32`): count only events of this thread; 0 counts everything. The
/// integration tests use it so that their counts are exact on a busy machine.
pub const GLOBAL_FILTER_TID: &str = "FILTER_TID";
/// Load-time global (`u32`): 1 when [`GLOBAL_FILTER_TGID`] or [`GLOBAL_FILTER_TID`] is set.
pub const GLOBAL_FILTERED: &str = "FILTERED";

/// Load-time global (`u64`): kmalloc and vmalloc allocations of at least this many bytes
/// are sent as [`NotableEvent`]s; 0 sends none.
pub const GLOBAL_NOTABLE_MIN_BYTES: &str = "NOTABLE_MIN_BYTES";
/// Load-time global (`u32`): page allocations of at least this order are sent as
/// [`NotableEvent`]s; above the highest order sends none.
pub const GLOBAL_NOTABLE_MIN_ORDER: &str = "NOTABLE_MIN_ORDER";

/// Load-time global (`u32`): a mask on every per-CPU table's slot index (see [`Slot`]):
/// `u32::MAX` uses every slot; `n - 1` only the first `n` (a power of two). Tests lower it to
/// drive keys into the hash maps.
pub const GLOBAL_TABLE_MASK: &str = "TABLE_MASK";
/// Load-time global (`u32`): which attribution is on ([`ATTR_CALLSITES`], [`ATTR_COMMS`],
/// [`ATTR_STACKS`], [`ATTR_CGROUPS`]).
pub const GLOBAL_ATTRIBUTION: &str = "ATTRIBUTION";

/// Load-time global (`u32`): 1 makes every program return at once, counting nothing (the
/// cost of the hooks alone, measured by `cargo xtask bench`).
pub const GLOBAL_HOOKS_ONLY: &str = "HOOKS_ONLY";

/// Load-time global (`u64`): the running kernel's page size.
pub const GLOBAL_PAGE_SIZE: &str = "PAGE_SIZE";

/// Per-CPU hash: [`SiteKey`] → [`Usage`].
pub const MAP_CALLSITES: &str = "CALLSITES";
/// Per-CPU hash: [`CommKey`] → [`Usage`].
pub const MAP_COMMS: &str = "COMMS";
/// Per-CPU hash: [`CgroupKey`] → [`Usage`].
pub const MAP_CGROUPS: &str = "CGROUPS";
/// Stack trace map of notable events' kernel stacks.
pub const MAP_STACKS: &str = "STACKS";
/// Default capacity of [`MAP_CALLSITES`] (userspace may resize it at load). The per-CPU
/// tables hold the first call sites each CPU meets; this map holds the rest. Preallocated
/// per CPU, as every per-CPU hash: capacities are kept small, since their memory scales
/// with the number of CPUs.
pub const CALLSITES_MAX: u32 = 4096;
/// Default capacity of [`MAP_COMMS`].
pub const COMMS_MAX: u32 = 2048;
/// Default capacity of [`MAP_CGROUPS`]: allocators × memory cgroups.
pub const CGROUPS_MAX: u32 = 4096;
/// Capacity of [`MAP_STACKS`]. Identical stacks share an id; on a hash collision the newer
/// stack replaces the older (`BPF_F_REUSE_STACKID`), which keeps the map bounded.
pub const STACKS_MAX: u32 = 2048;
/// Frames per stack in [`MAP_STACKS`] (the kernel's PERF_MAX_STACK_DEPTH).
pub const STACK_DEPTH: usize = 127;

/// Ring buffer of [`NotableEvent`]s.
pub const MAP_EVENTS: &str = "EVENTS";
/// Size of [`MAP_EVENTS`] in bytes (a power of two, a multiple of the page size).
pub const EVENTS_RING_BYTES: u32 = 256 * 1024;

/// Per-CPU hash: [`GfpKey`] → [`SizeStats`].
pub const MAP_SIZE_STATS: &str = "SIZE_STATS";
/// Per-CPU hash: [`GfpKey`] → `u64` failed allocations.
pub const MAP_FAILURES: &str = "FAILURES";
/// Per-CPU array of `u64`, indexed by [`Counter`], [`PAGE_FREES_BASE`], [`EXTFRAG_BASE`].
pub const MAP_COUNTERS: &str = "COUNTERS";
/// Per-CPU hash: [`PageKey`] → `u64` successful page allocations.
pub const MAP_PAGE_ALLOCS: &str = "PAGE_ALLOCS";
/// Per-CPU hash: cache id (`u64`: the cache's address for BTF tracepoints, a hash of its
/// name for classic ones; it never leaves memtrace) → [`CacheStats`].
pub const MAP_CACHE_STATS: &str = "CACHE_STATS";
/// Hash: cache id → [`CacheName`], written when a cache id is first seen.
pub const MAP_CACHE_NAMES: &str = "CACHE_NAMES";

/// Capacity of [`MAP_PAGE_ALLOCS`]: orders × migratetypes × gfp values beyond what the
/// per-CPU [`PageTable`] holds.
pub const PAGE_KEYS_MAX: u32 = 1024;
/// Capacity of [`MAP_CACHE_STATS`] and [`MAP_CACHE_NAMES`]: slab caches (a few hundred exist).
pub const CACHES_MAX: u32 = 2048;

/// Capacity of [`MAP_SIZE_STATS`] and [`MAP_FAILURES`]: distinct (allocator, gfp) pairs
/// (beyond the per-CPU size tables, for sizes). A busy server shows a few dozen; what does
/// not fit counts under [`GFP_OVERFLOW`].
pub const GFP_KEYS_MAX: u32 = 256;
