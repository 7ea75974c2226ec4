//! Counting into the per-CPU aggregates: this CPU's open-addressed tables first (see
//! `memtrace_common::Slot`), the per-CPU hash maps behind them, the counters and maxima.

use aya_ebpf::{bindings::BPF_NOEXIST, maps::PerCpuHashMap};
use memtrace_common::{
    Allocator, AllocatorTables, Counter, GFP_OVERFLOW, GfpKey, SIZE_BUCKETS, SizeStats, Slot,
    TABLE_PROBES, size_bucket, size_table_key, table_hash,
};

use crate::{
    globals::{TABLE_MASK, global},
    maps::{COUNTERS, FAILURES, SIZE_STATS, TABLES},
};

/// This CPU's tables of `allocator` (one inlined array lookup for all three).
#[inline(always)]
pub(crate) fn tables(allocator: Allocator) -> Option<*mut AllocatorTables> {
    TABLES.get_ptr_mut(allocator as u32)
}

/// The value of `key` in `table` (this CPU's; see [`Slot`]), its slot claimed if the key is
/// new here (then `true`). `None` when none of the key's [`TABLE_PROBES`] slots is its own or
/// free, or the key is all-zero, or there is no table: count in the hash map.
#[inline(always)]
pub(crate) fn table_value<const W: usize, V, const N: usize>(
    table: Option<*mut [Slot<W, V>; N]>,
    key: [u64; W],
) -> Option<(*mut V, bool)> {
    let mut zero = true;
    for w in key {
        zero &= w == 0;
    }
    if zero {
        return None;
    }
    let mask = (N - 1) & global(&TABLE_MASK) as usize;
    let t = table? as *mut Slot<W, V>;
    let h = table_hash(&key);
    for i in 0..TABLE_PROBES {
        // SAFETY: the index is masked below N, the table's length (a power of two), so the
        // slot lies inside the map value; it is this CPU's, and only this program writes
        // this entry (the kernel does not run a program twice at once on a CPU; see Slot).
        unsafe {
            let s = t.add((h + i) & mask);
            let (mut same, mut free) = (true, true);
            for (w, want) in key.iter().enumerate() {
                let k = (*s).key[w];
                same &= k == *want;
                free &= k == 0;
            }
            if same {
                return Some((&raw mut (*s).value, false));
            }
            if free {
                (*s).key = key;
                return Some((&raw mut (*s).value, true));
            }
        }
    }
    None
}

/// Raises this CPU's maximum of an allocator ([`AllocatorTables::maximum`]) to `v`.
#[inline(always)]
pub(crate) fn raise(t: Option<*mut AllocatorTables>, v: u64) {
    if let Some(t) = t {
        // SAFETY: this CPU's tables, which only this program writes.
        unsafe {
            if (*t).maximum < v {
                (*t).maximum = v;
            }
        }
    }
}

#[inline(always)]
pub(crate) fn add_counter(index: u32, n: u64) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; programs do not nest on one CPU.
        unsafe { *p += n };
    }
}

#[inline(always)]
pub(crate) fn bump(counter: Counter) {
    add_counter(counter as u32, 1);
}

/// Words of [`MEMTRACE_ZERO`]: at least the largest map value.
const ZERO_WORDS: usize = 32;

/// The all-zero value new map entries start from (see [`slot`]). Exported and mutable, so
/// that the compiler can neither fold it nor place it in .rodata; nothing writes it.
#[unsafe(no_mangle)]
static mut MEMTRACE_ZERO: [u64; ZERO_WORDS] = [0; ZERO_WORDS];

/// The per-CPU slot of `key` in `map`, created (zeroed) on first use. When the map is full,
/// the slot of `overflow`, which userspace pre-inserts, and the MapFull counter says so:
/// counting goes on, never silently lost.
///
/// `V` must be plain integers (all-zero is a valid value).
#[inline(always)]
pub(crate) fn slot<K: Copy, V>(map: &PerCpuHashMap<K, V>, key: K, overflow: K) -> Option<*mut V> {
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    // The zero value must not be a constant: a reference to one (`&0`) is a promoted
    // read-only constant, which LLVM may merge with a zero-initialised load-time global in
    // .rodata, which userspace then overwrites at load time (seen here: new entries started at
    // NOTABLE_MIN_BYTES). It is not a stack local either (a SizeStats is 184 bytes of the
    // 512-byte stack): it is writable, exported memory that nothing writes.
    const { assert!(core::mem::size_of::<V>() <= core::mem::size_of::<[u64; ZERO_WORDS]>()) };
    // SAFETY: ZERO is all-zero and large enough (asserted above); V is plain integers, for
    // which all-zero is valid; nothing ever writes ZERO.
    let zero = unsafe { &*(&raw const MEMTRACE_ZERO).cast::<V>() };
    let _ = map.insert(key, zero, BPF_NOEXIST as u64);
    if let Some(p) = map.get_ptr_mut(key) {
        return Some(p);
    }
    bump(Counter::MapFull);
    map.get_ptr_mut(overflow)
}

#[inline(always)]
fn gfp_key(allocator: Allocator, order: u32, gfp: u64) -> GfpKey {
    GfpKey {
        allocator: allocator as u32,
        order,
        gfp,
    }
}

#[inline(always)]
pub(crate) fn count_failure(allocator: Allocator, order: u32, gfp: u64) {
    let key = gfp_key(allocator, order, gfp);
    let overflow = gfp_key(allocator, order, GFP_OVERFLOW);
    if let Some(p) = slot(&FAILURES, key, overflow) {
        // SAFETY: per-CPU value.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub(crate) fn record_size(
    allocator: Allocator,
    t: Option<*mut AllocatorTables>,
    gfp: u64,
    requested: u64,
    allocated: u64,
) {
    // SAFETY: the address of a field of this CPU's tables; nothing is read here.
    let sizes = t.map(|t| unsafe { &raw mut (*t).sizes });
    let p = match table_value(sizes, [size_table_key(gfp)]) {
        Some((p, _)) => Some(p),
        None => {
            let key = gfp_key(allocator, 0, gfp);
            let overflow = gfp_key(allocator, 0, GFP_OVERFLOW);
            slot::<_, SizeStats>(&SIZE_STATS, key, overflow)
        }
    };
    if let Some(p) = p {
        let bucket = size_bucket(allocated);
        // SAFETY: per-CPU value; the bounds check satisfies the verifier.
        unsafe {
            if bucket < SIZE_BUCKETS {
                (*p).buckets[bucket] += 1;
            }
            (*p).requested_bytes += requested;
            (*p).allocated_bytes += allocated;
        }
    }
}
