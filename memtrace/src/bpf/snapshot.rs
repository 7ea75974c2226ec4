//! The aggregates of the kernel maps, read and summed over CPUs at scrape time.

use std::collections::BTreeMap;

use anyhow::Context as _;
use aya::{
    Ebpf,
    maps::{HashMap as BpfHashMap, MapData, PerCpuArray, PerCpuHashMap},
};
use memtrace_common::{
    Allocator, AllocatorTables, CACHE_OVERFLOW, CACHE_SLOTS, COUNTERS_LEN, CacheName, CacheStats,
    CgroupKey, CommKey, GfpKey, MAP_CACHE_NAMES, MAP_CACHE_STATS, MAP_CACHE_TABLE, MAP_CALLSITES,
    MAP_CGROUPS, MAP_COMMS, MAP_COUNTERS, MAP_FAILURES, MAP_PAGE_ALLOCS, MAP_PAGE_TABLE,
    MAP_SIZE_STATS, MAP_TABLES, PAGE_SLOTS, PageKey, SiteKey, SizeStats, Slot, Usage,
    cache_table_fields, comm_bytes, page_table_fields, size_table_gfp,
};

use super::Tracer;
use crate::label::{OTHER, UNKNOWN};

/// Aggregates read from the kernel maps, summed over CPUs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// (allocator, raw gfp) → sizes
    pub sizes: BTreeMap<(Allocator, u64), SizeStats>,
    /// (allocator, page order or 0, raw gfp) → failed allocations
    pub failures: BTreeMap<(Allocator, u32, u64), u64>,
    /// (order, migratetype, raw gfp) → successful page allocations; the overflow slot of an
    /// order has migratetype `u32::MAX` and gfp [`memtrace_common::GFP_OVERFLOW`].
    pub pages: BTreeMap<(u32, u32, u64), u64>,
    /// slab cache name → allocations (caches sharing a name are summed; `other` holds what
    /// did not fit in the map)
    pub caches: BTreeMap<String, CacheStats>,
    /// [`memtrace_common::Counter`], page-free, extfrag and compaction slots
    pub counters: Vec<u64>,
    /// [`memtrace_common::Maximum`] slots, the maximum over CPUs
    pub maxima: Vec<u64>,
    /// (allocator, call-site kernel address; 0 = overflow) → usage. Addresses stay inside
    /// memtrace: they are symbolized before anything is shown.
    pub callsites: BTreeMap<(Allocator, u64), Usage>,
    /// (allocator, task name; "" = overflow) → usage
    pub comms: BTreeMap<(Allocator, String), Usage>,
    /// (allocator, memory cgroup id: the cgroup directory's inode number;
    /// [`memtrace_common::CGROUP_OVERFLOW`] = overflow) → usage. Empty unless `ATTR_CGROUPS` is on.
    pub cgroups: BTreeMap<(Allocator, u64), Usage>,
    /// Program runs the kernel skipped because the program was already running on that CPU
    /// (see [`Tracer::recursion_misses`]).
    pub recursion_misses: u64,
}

impl Snapshot {
    /// All sizes of one allocator, over every gfp value.
    pub fn total(&self, allocator: Allocator) -> SizeStats {
        let mut t = SizeStats::ZERO;
        for ((a, _), s) in &self.sizes {
            if *a == allocator {
                t.add(s);
            }
        }
        t
    }

    pub fn failures_of(&self, allocator: Allocator) -> u64 {
        self.failures
            .iter()
            .filter(|((a, _, _), _)| *a == allocator)
            .map(|(_, n)| n)
            .sum()
    }

    pub fn counter(&self, c: memtrace_common::Counter) -> u64 {
        self.counter_at(c as u32)
    }

    pub fn counter_at(&self, index: u32) -> u64 {
        self.counters.get(index as usize).copied().unwrap_or(0)
    }

    /// Pages freed of `order`.
    pub fn page_frees(&self, order: u32) -> u64 {
        self.counter_at(memtrace_common::PAGE_FREES_BASE + order)
    }

    /// Direct compactions for allocations of `order`.
    pub fn compaction_stalls(&self, order: u32) -> u64 {
        self.counter_at(memtrace_common::COMPACTION_STALLS_BASE + order)
    }

    fn maximum(&self, m: memtrace_common::Maximum) -> u64 {
        self.maxima.get(m as usize).copied().unwrap_or(0)
    }

    /// The largest successful kmalloc seen, in bytes allocated (0: none).
    pub fn largest_kmalloc(&self) -> u64 {
        self.maximum(memtrace_common::Maximum::KmallocBytes)
    }

    /// The largest vmalloc area seen, in bytes (0: none).
    pub fn largest_vmalloc(&self) -> u64 {
        self.maximum(memtrace_common::Maximum::VmallocBytes)
    }

    /// The highest order of a successful page allocation seen.
    pub fn largest_page_order(&self) -> Option<u32> {
        self.maximum(memtrace_common::Maximum::PageOrderPlusOne)
            .checked_sub(1)
            .map(|o| o as u32)
    }

    /// Extfrag fallbacks to a block of `fallback_order`.
    pub fn extfrag(&self, fallback_order: u32) -> u64 {
        self.counter_at(memtrace_common::EXTFRAG_BASE + fallback_order)
    }
}

impl Tracer {
    /// Reads every aggregate map and sums CPUs. Map read errors are returned, never swallowed.
    pub fn snapshot(&self) -> anyhow::Result<Snapshot> {
        let mut snap = Snapshot::default();
        let e = &self.ebpf;
        let tables = read_allocator_tables(e)?;
        let sum = |t: &mut u64, v: &u64| *t = t.wrapping_add(*v);
        for (key, total) in
            read_summed::<GfpKey, SizeStats>(e, MAP_SIZE_STATS, SizeStats::ZERO, SizeStats::add)?
        {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), total.count() > 0) {
                snap.sizes
                    .entry((a, key.gfp))
                    .or_insert(SizeStats::ZERO)
                    .add(&total);
            }
        }
        for ((entry, [key]), total) in tables.sizes {
            if let (Some(a), true) = (Allocator::from_u32(entry), total.count() > 0) {
                let gfp = size_table_gfp(key);
                snap.sizes
                    .entry((a, gfp))
                    .or_insert(SizeStats::ZERO)
                    .add(&total);
            }
        }
        for (key, n) in read_summed::<GfpKey, u64>(e, MAP_FAILURES, 0, sum)? {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), n > 0) {
                snap.failures.insert((a, key.order, key.gfp), n);
            }
        }
        for (key, n) in read_summed::<PageKey, u64>(e, MAP_PAGE_ALLOCS, 0, sum)? {
            if n > 0 {
                *snap
                    .pages
                    .entry((key.order, key.migratetype, key.gfp))
                    .or_default() += n;
            }
        }
        for (_, [key], n) in read_table::<1, _, PAGE_SLOTS>(e, MAP_PAGE_TABLE, 0u64, sum)? {
            if n > 0 {
                *snap.pages.entry(page_table_fields(key)).or_default() += n;
            }
        }
        let names: BpfHashMap<&MapData, u64, CacheName> = BpfHashMap::try_from(
            self.ebpf
                .map(MAP_CACHE_NAMES)
                .context("map CACHE_NAMES missing")?,
        )?;
        let mut caches: BTreeMap<u64, CacheStats> = BTreeMap::new();
        for (id, total) in
            read_summed::<u64, CacheStats>(e, MAP_CACHE_STATS, CacheStats::ZERO, CacheStats::add)?
        {
            caches.entry(id).or_insert(CacheStats::ZERO).add(&total);
        }
        // A cache-table slot holds allocations of one cache, GFP value and object size: the
        // cache's totals, and kmem_cache's size histogram for that GFP value.
        for (_, key, total) in
            read_table::<2, _, CACHE_SLOTS>(e, MAP_CACHE_TABLE, CacheStats::ZERO, CacheStats::add)?
        {
            let (id, gfp, object) = cache_table_fields(key);
            caches.entry(id).or_insert(CacheStats::ZERO).add(&total);
            if total.allocations > 0 {
                let mut sizes = SizeStats::ZERO;
                sizes.buckets[memtrace_common::size_bucket(object)] = total.allocations;
                sizes.requested_bytes = total.requested_bytes;
                sizes.allocated_bytes = total.allocated_bytes;
                snap.sizes
                    .entry((Allocator::KmemCache, gfp))
                    .or_insert(SizeStats::ZERO)
                    .add(&sizes);
            }
        }
        for (id, total) in caches {
            if total.allocations == 0 {
                continue;
            }
            let name = if id == CACHE_OVERFLOW {
                OTHER.to_string()
            } else {
                match names.get(&id, 0) {
                    Ok(n) => cache_name(&n),
                    // Counted before its name landed (a race on first sight): unnamed.
                    Err(aya::maps::MapError::KeyNotFound) => UNKNOWN.to_string(),
                    Err(e) => return Err(e).context("reading CACHE_NAMES"),
                }
            };
            snap.caches
                .entry(name)
                .or_insert(CacheStats::ZERO)
                .add(&total);
        }
        let counters: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(MAP_COUNTERS)
                .context("map COUNTERS missing")?,
        )?;
        for i in 0..COUNTERS_LEN {
            let v = counters.get(&i, 0).context("reading COUNTERS")?;
            snap.counters.push(v.iter().sum());
        }
        snap.maxima = memtrace_common::Maximum::ALL
            .iter()
            .map(|m| {
                tables
                    .maxima
                    .get(m.allocator() as usize)
                    .copied()
                    .unwrap_or(0)
            })
            .collect();
        for (key, u) in
            read_summed::<SiteKey, Usage>(&self.ebpf, MAP_CALLSITES, Usage::default(), Usage::add)?
        {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), u.allocations > 0) {
                snap.callsites
                    .entry((a, key.call_site))
                    .or_default()
                    .add(&u);
            }
        }
        for ((entry, [site]), u) in tables.sites {
            if let (Some(a), true) = (Allocator::from_u32(entry), u.allocations > 0) {
                snap.callsites.entry((a, site)).or_default().add(&u);
            }
        }
        let comms = read_summed::<CommKey, Usage>(e, MAP_COMMS, Usage::default(), Usage::add)?
            .into_iter()
            .map(|(k, u)| (k.allocator, comm_bytes(k.comm), u));
        let table = (tables.comms.into_iter()).map(|((e, w), u)| (e, comm_bytes(w), u));
        for (allocator, comm, u) in comms.chain(table) {
            if let (Some(a), true) = (Allocator::from_u32(allocator), u.allocations > 0) {
                let comm = crate::bpf::events::nul_terminated(&comm);
                snap.comms.entry((a, comm)).or_default().add(&u);
            }
        }
        for (key, u) in
            read_summed::<CgroupKey, Usage>(&self.ebpf, MAP_CGROUPS, Usage::default(), Usage::add)?
        {
            if let (Some(a), true) = (Allocator::from_u32(key.allocator), u.allocations > 0) {
                snap.cgroups.entry((a, key.cgroup)).or_default().add(&u);
            }
        }
        snap.recursion_misses = self.recursion_misses()?;
        Ok(snap)
    }
}

/// The used slots of [`MAP_TABLES`], by (allocator entry, key), summed over CPUs.
#[derive(Default)]
struct TableTotals {
    sizes: BTreeMap<(u32, [u64; 1]), SizeStats>,
    sites: BTreeMap<(u32, [u64; 1]), Usage>,
    comms: BTreeMap<(u32, [u64; 2]), Usage>,
    /// Per allocator entry, the maximum over CPUs of [`AllocatorTables::maximum`].
    maxima: Vec<u64>,
}

/// Adds the used slots of one table (see [`memtrace_common::Slot`]) of `entry` into `out`.
fn fold_slots<const W: usize, V: Copy>(
    out: &mut BTreeMap<(u32, [u64; W]), V>,
    entry: u32,
    slots: &[Slot<W, V>],
    zero: V,
    add: impl Fn(&mut V, &V),
) {
    for slot in slots.iter().filter(|s| s.key != [0; W]) {
        add(out.entry((entry, slot.key)).or_insert(zero), &slot.value);
    }
}

/// Every allocator's per-CPU tables in [`MAP_TABLES`], summed over CPUs.
fn read_allocator_tables(ebpf: &Ebpf) -> anyhow::Result<TableTotals> {
    let m: PerCpuArray<&MapData, AllocatorTables> = PerCpuArray::try_from(
        ebpf.map(MAP_TABLES)
            .with_context(|| format!("map {MAP_TABLES} missing"))?,
    )?;
    let mut out = TableTotals::default();
    for entry in 0..m.len() {
        let per_cpu = m
            .get(&entry, 0)
            .with_context(|| format!("reading {MAP_TABLES}"))?;
        out.maxima
            .push(per_cpu.iter().map(|t| t.maximum).max().unwrap_or(0));
        for t in per_cpu.iter() {
            fold_slots(
                &mut out.sizes,
                entry,
                &t.sizes,
                SizeStats::ZERO,
                SizeStats::add,
            );
            let zero = Usage::default();
            fold_slots(&mut out.sites, entry, &t.sites, zero, Usage::add);
            fold_slots(&mut out.comms, entry, &t.comms, zero, Usage::add);
        }
    }
    Ok(out)
}

/// Every used slot of every entry of the per-CPU table array `map` (see
/// [`memtrace_common::Slot`]) as (entry, key, value), the same key's slots over CPUs folded
/// with `add`.
fn read_table<const W: usize, V: aya::Pod, const N: usize>(
    ebpf: &Ebpf,
    map: &str,
    zero: V,
    add: impl Fn(&mut V, &V),
) -> anyhow::Result<Vec<(u32, [u64; W], V)>> {
    let m: PerCpuArray<&MapData, [Slot<W, V>; N]> = PerCpuArray::try_from(
        ebpf.map(map)
            .with_context(|| format!("map {map} missing"))?,
    )?;
    let mut out: BTreeMap<(u32, [u64; W]), V> = BTreeMap::new();
    for entry in 0..m.len() {
        let per_cpu = m.get(&entry, 0).with_context(|| format!("reading {map}"))?;
        for table in per_cpu.iter() {
            fold_slots(&mut out, entry, table, zero, &add);
        }
    }
    Ok(out.into_iter().map(|((e, k), v)| (e, k, v)).collect())
}

/// Every entry of the per-CPU hash `map`, its CPUs folded with `add`.
fn read_summed<K: aya::Pod, V: aya::Pod>(
    ebpf: &Ebpf,
    map: &str,
    zero: V,
    add: impl Fn(&mut V, &V),
) -> anyhow::Result<Vec<(K, V)>> {
    let m: PerCpuHashMap<&MapData, K, V> = PerCpuHashMap::try_from(
        ebpf.map(map)
            .with_context(|| format!("map {map} missing"))?,
    )?;
    let mut out = Vec::new();
    for item in m.iter() {
        let (key, per_cpu) = item.with_context(|| format!("reading {map}"))?;
        let mut total = zero;
        for v in per_cpu.iter() {
            add(&mut total, v);
        }
        out.push((key, total));
    }
    Ok(out)
}

/// A cache name from its NUL-padded bytes.
fn cache_name(n: &CacheName) -> String {
    let s = crate::bpf::events::nul_terminated(&n.name);
    if s.is_empty() { UNKNOWN.into() } else { s }
}
