//! The maps, under the names userspace opens them by (`memtrace_common::MAP_*`, each
//! described there).

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray, PerCpuHashMap, RingBuf, StackTrace},
};
use memtrace_common::{
    ALLOCATORS, AllocatorTables, CACHES_MAX, CALLSITES_MAX, CGROUPS_MAX, COMMS_MAX, COUNTERS_LEN,
    CacheName, CacheStats, CacheTable, CgroupKey, CommKey, EVENTS_RING_BYTES, GFP_KEYS_MAX, GfpKey,
    LIVE_MAX, LiveKey, PAGE_KEYS_MAX, PROFILE_RING_BYTES, PageKey, PageTable, STACKS_MAX, SiteKey,
    SizeStats, Usage,
};

#[map]
pub(crate) static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub(crate) static CALLSITES: PerCpuHashMap<SiteKey, Usage> =
    PerCpuHashMap::with_max_entries(CALLSITES_MAX, 0);

#[map]
pub(crate) static COMMS: PerCpuHashMap<CommKey, Usage> =
    PerCpuHashMap::with_max_entries(COMMS_MAX, 0);

#[map]
pub(crate) static CGROUPS: PerCpuHashMap<CgroupKey, Usage> =
    PerCpuHashMap::with_max_entries(CGROUPS_MAX, 0);

#[map]
pub(crate) static TABLES: PerCpuArray<AllocatorTables> =
    PerCpuArray::with_max_entries(ALLOCATORS, 0);

#[map]
pub(crate) static CACHE_TABLE: PerCpuArray<CacheTable> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static PAGE_TABLE: PerCpuArray<PageTable> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub(crate) static STACKS: StackTrace = StackTrace::with_max_entries(STACKS_MAX, 0);

#[map]
pub(crate) static SIZE_STATS: PerCpuHashMap<GfpKey, SizeStats> =
    PerCpuHashMap::with_max_entries(GFP_KEYS_MAX, 0);

#[map]
pub(crate) static FAILURES: PerCpuHashMap<GfpKey, u64> =
    PerCpuHashMap::with_max_entries(GFP_KEYS_MAX, 0);

#[map]
pub(crate) static PAGE_ALLOCS: PerCpuHashMap<PageKey, u64> =
    PerCpuHashMap::with_max_entries(PAGE_KEYS_MAX, 0);

#[map]
pub(crate) static CACHE_STATS: PerCpuHashMap<u64, CacheStats> =
    PerCpuHashMap::with_max_entries(CACHES_MAX, 0);

#[map]
pub(crate) static CACHE_NAMES: HashMap<u64, CacheName> = HashMap::with_max_entries(CACHES_MAX, 0);

#[map]
pub(crate) static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(COUNTERS_LEN, 0);

// Heap profiles (see `profile`). Userspace sizes the live map and its filter from its flags
// (the filter to one entry, the ring to one page, with profiling off).

#[map]
pub(crate) static LIVE: HashMap<LiveKey, u64> = HashMap::with_max_entries(LIVE_MAX, 0);

#[map]
pub(crate) static LIVE_FILTER: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub(crate) static PROFILE_EVENTS: RingBuf = RingBuf::with_byte_size(PROFILE_RING_BYTES, 0);
