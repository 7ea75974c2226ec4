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
    // For bytes > 8: idx = ceil(log2(bytes)) - 3 = floor(log2(bytes - 1)) - 2, at most the
    // overflow bucket: the largest idx <= SIZE_BUCKETS - 1 with bytes - 1 >= 2^(idx + 2),
    // found by binary search. BPF has no count-leading-zeros instruction; the compiler's
    // portable one is some 40 instructions on the hot path, this is 5 comparisons.
    let v = bytes - 1;
    let mut idx = 0;
    let mut step = 16;
    while step > 0 {
        let next = idx + step;
        if next < SIZE_BUCKETS && v >> (next + 2) != 0 {
            idx = next;
        }
        step >>= 1;
    }
    idx
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
/// Bytes of a classic tracepoint's record the programs copy per event (BTF programs load
/// each field from their arguments instead): every field memtrace reads must end within
/// them (userspace refuses a layout that does not).
pub const RECORD_BYTES: usize = 96;

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
const _: () = assert!((Counter::OomKills as u32) < PAGE_FREES_BASE);

/// Clamps an order into a counter slot.
#[inline(always)]
pub fn order_slot(order: u64) -> u32 {
    if order >= ORDER_SLOTS as u64 {
        ORDER_SLOTS - 1
    } else {
        order as u32
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

    /// One past the field's last byte (0 when absent).
    pub const fn end(&self) -> u16 {
        if self.size == 0 {
            0
        } else {
            self.offset + self.size
        }
    }
}

/// The largest `end()` of `fields`: how many bytes of the context hold them all.
pub const fn span(fields: &[FieldLoc]) -> u16 {
    let mut max = 0;
    let mut i = 0;
    while i < fields.len() {
        let e = fields[i].end();
        if e > max {
            max = e;
        }
        i += 1;
    }
    max
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

/// Layout of a free event (`kmem:kfree`, `kmem:kmem_cache_free`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FreeLayout {
    pub ptr: FieldLoc,
}

/// Layout of `kmem:kmem_cache_alloc`. The classic record has the cache's `name` (a
/// `__data_loc` string) and sizes; the BTF tracepoint has the `struct kmem_cache *` argument
/// `s` instead, read through [`KmemCacheOffsets`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KmemCacheAllocLayout {
    pub call_site: FieldLoc,
    pub ptr: FieldLoc,
    pub gfp_flags: FieldLoc,
    pub name: FieldLoc,
    pub bytes_req: FieldLoc,
    pub bytes_alloc: FieldLoc,
    pub s: FieldLoc,
}

/// Member offsets of `struct kmem_cache`, from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KmemCacheOffsets {
    pub name: FieldLoc,
    pub object_size: FieldLoc,
    pub size: FieldLoc,
}

/// Layout of `kmem:mm_page_alloc`: the record has `pfn` (-1 on failure), the BTF
/// tracepoint `page` (NULL on failure).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageAllocLayout {
    pub pfn: FieldLoc,
    pub page: FieldLoc,
    pub order: FieldLoc,
    pub gfp_flags: FieldLoc,
    pub migratetype: FieldLoc,
}

/// Layout of `kmem:mm_page_free` (`mm_page_free_batched` has no order: order 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageFreeLayout {
    pub order: FieldLoc,
}

/// Layout of `kmem:mm_page_alloc_extfrag`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExtfragLayout {
    pub fallback_order: FieldLoc,
}

/// Layout of `vmalloc:alloc_vmap_area`, or of the `alloc_vmap_area()` function's arguments
/// for its fexit program (kernels before 6.2 have no vmalloc tracepoints): then `ret` is the
/// function's return value (a `struct vmap_area *`, an error pointer on failure) and
/// `failed` is absent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmapAreaLayout {
    pub size: FieldLoc,
    pub failed: FieldLoc,
    pub ret: FieldLoc,
}

/// Layout of `vmalloc:purge_vmap_area_lazy`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PurgeLayout {
    pub npurged: FieldLoc,
}

/// Layout of `compaction:mm_compaction_try_to_compact_pages`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CompactLayout {
    pub order: FieldLoc,
}

/// Layout of `percpu:percpu_alloc_percpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PercpuAllocLayout {
    pub call_site: FieldLoc,
    pub size: FieldLoc,
    pub bytes_alloc: FieldLoc,
    pub gfp_flags: FieldLoc,
}

/// Every event layout the programs need, resolved from the running kernel at start-up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EventLayouts {
    pub kmalloc: KmallocLayout,
    /// `kmem:kmalloc_node` (kernels before 6.1; later, kmalloc covers it).
    pub kmalloc_node: KmallocLayout,
    pub kfree: FreeLayout,
    pub kmem_cache_alloc: KmemCacheAllocLayout,
    /// `kmem:kmem_cache_alloc_node` (kernels before 6.1).
    pub kmem_cache_alloc_node: KmemCacheAllocLayout,
    pub kmem_cache_free: FreeLayout,
    pub mm_page_alloc: PageAllocLayout,
    pub mm_page_free: PageFreeLayout,
    pub mm_page_alloc_extfrag: ExtfragLayout,
    pub alloc_vmap_area: VmapAreaLayout,
    pub purge_vmap_area_lazy: PurgeLayout,
    pub percpu_alloc_percpu: PercpuAllocLayout,
    pub mm_compaction_try_to_compact_pages: CompactLayout,
}

const NO: FieldLoc = FieldLoc::ABSENT;

const NO_KMALLOC: KmallocLayout = KmallocLayout {
    call_site: NO,
    ptr: NO,
    bytes_req: NO,
    bytes_alloc: NO,
    gfp_flags: NO,
};

const NO_KMEM_CACHE_ALLOC: KmemCacheAllocLayout = KmemCacheAllocLayout {
    call_site: NO,
    ptr: NO,
    gfp_flags: NO,
    name: NO,
    bytes_req: NO,
    bytes_alloc: NO,
    s: NO,
};

impl EventLayouts {
    pub const ZERO: EventLayouts = EventLayouts {
        kmalloc: NO_KMALLOC,
        kmalloc_node: NO_KMALLOC,
        kfree: FreeLayout { ptr: NO },
        kmem_cache_alloc: NO_KMEM_CACHE_ALLOC,
        kmem_cache_alloc_node: NO_KMEM_CACHE_ALLOC,
        kmem_cache_free: FreeLayout { ptr: NO },
        mm_page_alloc: PageAllocLayout {
            pfn: NO,
            page: NO,
            order: NO,
            gfp_flags: NO,
            migratetype: NO,
        },
        mm_page_free: PageFreeLayout { order: NO },
        mm_page_alloc_extfrag: ExtfragLayout { fallback_order: NO },
        alloc_vmap_area: VmapAreaLayout {
            size: NO,
            failed: NO,
            ret: NO,
        },
        purge_vmap_area_lazy: PurgeLayout { npurged: NO },
        percpu_alloc_percpu: PercpuAllocLayout {
            call_site: NO,
            size: NO,
            bytes_alloc: NO,
            gfp_flags: NO,
        },
        mm_compaction_try_to_compact_pages: CompactLayout { order: NO },
    };
}

/// The BTF tracepoint argument `i` of `size` bytes.
const fn arg(i: u16, size: u16) -> FieldLoc {
    FieldLoc::new(8 * i, size)
}

/// The hot events' BTF tracepoint layouts as the prototypes of mainline kernels since 6.1
/// have them (`btf_trace_kmalloc(void *, unsigned long call_site, const void *ptr,
/// size_t bytes_req, size_t bytes_alloc, gfp_t gfp_flags, int node)` and so on).
///
/// Each hot event has a second BTF program, `<event>_btf_fixed`, compiled with its layout
/// from here as constants: every field is one load at a constant offset, with no layout to
/// read and nothing to select at run time. Userspace loads it only where the layout it
/// resolved from the running kernel's BTF equals this one ([`ProbeSpec::fixed_matches`]),
/// and the generic `<event>_btf` program everywhere else; so this is a fast path, never an
/// assumption about the kernel.
pub struct FixedBtf;

impl FixedBtf {
    pub const KMALLOC: KmallocLayout = KmallocLayout {
        call_site: arg(0, 8),
        ptr: arg(1, 8),
        bytes_req: arg(2, 8),
        bytes_alloc: arg(3, 8),
        gfp_flags: arg(4, 4),
    };
    pub const FREE: FreeLayout = FreeLayout { ptr: arg(1, 8) };
    pub const KMEM_CACHE_ALLOC: KmemCacheAllocLayout = KmemCacheAllocLayout {
        call_site: arg(0, 8),
        ptr: arg(1, 8),
        gfp_flags: arg(3, 4),
        name: NO,
        bytes_req: NO,
        bytes_alloc: NO,
        s: arg(2, 8),
    };
    pub const MM_PAGE_ALLOC: PageAllocLayout = PageAllocLayout {
        pfn: NO,
        page: arg(0, 8),
        order: arg(1, 4),
        gfp_flags: arg(2, 4),
        migratetype: arg(3, 4),
    };
    pub const MM_PAGE_FREE: PageFreeLayout = PageFreeLayout { order: arg(1, 4) };
}

/// Byte offsets, from the running kernel's BTF, of the pointer chain from the current task
/// to its memory cgroup's id:
/// `task_struct.cgroups` (`struct css_set *`) → `css_set.subsys[memory_cgrp_id]`
/// (`struct cgroup_subsys_state *`) → `cgroup_subsys_state.cgroup` (`struct cgroup *`) →
/// `cgroup.kn` (`struct kernfs_node *`) → `kernfs_node.id` (`u64`, the cgroup directory's
/// inode number). Works on cgroup v1 and v2 alike. Only read with [`ATTR_CGROUPS`] on.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemcgOffsets {
    pub task_cgroups: u32,
    /// `css_set.subsys` plus `8 * memory_cgrp_id`.
    pub css_set_memory: u32,
    pub css_cgroup: u32,
    pub cgroup_kn: u32,
    pub kernfs_node_id: u32,
    /// Explicit padding; always zero.
    pub _pad: u32,
}

/// `task_struct` offsets from the running kernel's BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TaskOffsets {
    /// `task_struct.comm` (16 bytes); 0 if unknown. BTF programs read the current task's
    /// name with two loads from it instead of the `bpf_get_current_comm` helper's copy.
    pub comm: u32,
    /// 1 when the kernel has the `bpf_get_current_task_btf` helper (5.11+), which the BTF
    /// programs' typed task reads start from; 0: they use the untyped helpers.
    pub task_btf: u32,
}

/// The two layout sets, one per way of attaching, and the struct offsets the BTF programs
/// dereference. A program attached as a classic tracepoint reads `tp`, a generic one attached
/// as a BTF tracepoint reads `btf` (a fixed-layout one, see [`FixedBtf`], reads neither).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layouts {
    pub tp: EventLayouts,
    /// Also the layouts of raw tracepoints, whose argument array is the same.
    pub btf: EventLayouts,
    /// The `alloc_vmap_area()` fexit program's arguments (see [`VmapAreaLayout`]).
    pub vmap_fexit: VmapAreaLayout,
    pub kmem_cache: KmemCacheOffsets,
    pub memcg: MemcgOffsets,
    pub task: TaskOffsets,
    pub slab: SlabOffsets,
}

impl Layouts {
    pub const ZERO: Layouts = Layouts {
        tp: EventLayouts::ZERO,
        btf: EventLayouts::ZERO,
        kmem_cache: KmemCacheOffsets {
            name: NO,
            object_size: NO,
            size: NO,
        },
        memcg: MemcgOffsets {
            task_cgroups: 0,
            css_set_memory: 0,
            css_cgroup: 0,
            cgroup_kn: 0,
            kernfs_node_id: 0,
            _pad: 0,
        },
        task: TaskOffsets {
            comm: 0,
            task_btf: 0,
        },
        vmap_fexit: VmapAreaLayout {
            size: NO,
            failed: NO,
            ret: NO,
        },
        slab: SlabOffsets {
            page_offset_base: 0,
            vmemmap_base: 0,
            struct_page_size: 0,
            compound_head: 0,
            slab_cache: 0,
            page_shift: 0,
        },
    };
}

/// What finds the slab cache of an allocated object, for `kmem_cache_alloc` events that
/// carry neither the cache nor its name (the classic event before Linux 6.2, and every form
/// of it before 6.1): the object's `struct page` in the kernel's page array, its head page,
/// and that page's (or `struct slab`'s) `slab_cache` pointer. The kernel randomizes the base
/// of the direct map and of the page array at boot (`CONFIG_RANDOMIZE_MEMORY`): the programs
/// read them from the kernel variables `page_offset_base` and `vmemmap_base`, whose addresses
/// userspace takes from `/proc/kallsyms`. These addresses stay inside the programs.
/// All zero when unknown: such events then count under [`CACHE_UNREADABLE`] (`unknown`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabOffsets {
    /// The address of the kernel variable `page_offset_base`.
    pub page_offset_base: u64,
    /// The address of the kernel variable `vmemmap_base`.
    pub vmemmap_base: u64,
    /// `sizeof(struct page)`.
    pub struct_page_size: u32,
    /// `struct page.compound_head` (bit 0 set on a tail page: the head page's address + 1).
    pub compound_head: u32,
    /// `slab_cache` in `struct slab` (6.1+) or `struct page` (before).
    pub slab_cache: u32,
    /// log2 of the page size.
    pub page_shift: u32,
}

impl SlabOffsets {
    pub const fn is_known(&self) -> bool {
        self.page_offset_base != 0 && self.vmemmap_base != 0 && self.struct_page_size != 0
    }
}

/// A notable allocation event, sent through [`MAP_EVENTS`]: every failure, and allocations
/// at or above the size / order thresholds ([`GLOBAL_NOTABLE_MIN_BYTES`],
/// [`GLOBAL_NOTABLE_MIN_ORDER`]).
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NotableEvent {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// The allocating call site: a kernel address. Symbolize it; never print it.
    pub call_site: u64,
    pub bytes_req: u64,
    pub bytes_alloc: u64,
    /// Raw gfp flags, or [`GFP_UNKNOWN`].
    pub gfp: u64,
    pub tgid: u32,
    pub tid: u32,
    pub cpu: u32,
    /// An [`Allocator`] as `u32`.
    pub allocator: u32,
    /// Page order (page allocations), else 0.
    pub order: u32,
    /// [`EVENT_FAILED`], [`EVENT_LARGE`].
    pub flags: u32,
    /// The kernel stack's id in [`MAP_STACKS`] when stacks are on ([`ATTR_STACKS`]), else -1.
    pub stack_id: i32,
    /// Explicit padding; always zero.
    pub _pad: u32,
    pub comm: [u8; 16],
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

impl Usage {
    pub fn add(&mut self, o: &Usage) {
        self.allocations = self.allocations.wrapping_add(o.allocations);
        self.bytes = self.bytes.wrapping_add(o.bytes);
    }
}

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
    pub sizes: SizeTable,
    pub sites: SiteTable,
    pub comms: CommTable,
}

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

/// Debug without the kernel address (KASLR): the call site is shown only as present or not.
impl core::fmt::Debug for NotableEvent {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NotableEvent")
            .field("ts_ns", &self.ts_ns)
            .field(
                "call_site",
                &if self.call_site != 0 {
                    "<kernel address>"
                } else {
                    "none"
                },
            )
            .field("bytes_req", &self.bytes_req)
            .field("bytes_alloc", &self.bytes_alloc)
            .field("gfp", &self.gfp)
            .field("tgid", &self.tgid)
            .field("tid", &self.tid)
            .field("cpu", &self.cpu)
            .field("allocator", &self.allocator)
            .field("order", &self.order)
            .field("flags", &self.flags)
            .field("stack_id", &self.stack_id)
            .finish()
    }
}

/// [`NotableEvent::flags`]: the allocation failed.
pub const EVENT_FAILED: u32 = 1;
/// [`NotableEvent::flags`]: the allocation is at or above the notable size or order.
pub const EVENT_LARGE: u32 = 2;

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

/// The eBPF programs, by the tracepoint they serve: (program name, category, event).
/// `*_tp` programs attach as classic tracepoints, `*_btf` as BTF tracepoints.
#[derive(Clone, Copy, Debug)]
pub struct ProbeSpec {
    pub category: &'static str,
    pub event: &'static str,
    pub tp_program: &'static str,
    pub btf_program: &'static str,
    /// The BTF program compiled with [`FixedBtf`]'s layout of the event, for the hot events.
    pub fixed_program: Option<&'static str>,
    /// The raw tracepoint program: the BTF program's body reading the same argument array
    /// without BTF-typed pointers, for verifiers that refuse a BTF program's access (6.1 to
    /// 6.12 refuse reading a `const void *` argument of a tp_btf program).
    pub raw_program: Option<&'static str>,
    /// (program, kernel function) of an fexit program standing in for the tracepoint on
    /// kernels that lack it (the vmalloc tracepoints came in Linux 6.2).
    pub fexit: Option<(&'static str, &'static str)>,
    /// Set for a tracepoint only some kernels have, saying which: where it is absent, that is
    /// expected, not a missing probe.
    pub only_on: Option<&'static str>,
}

impl ProbeSpec {
    /// Whether `l`, the BTF layouts resolved from the running kernel, has this event's
    /// fields where [`Self::fixed_program`] was compiled to find them.
    pub fn fixed_matches(&self, l: &EventLayouts) -> bool {
        self.fixed_program.is_some()
            && match self.event {
                "kmalloc" => l.kmalloc == FixedBtf::KMALLOC,
                "kfree" => l.kfree == FixedBtf::FREE,
                "kmem_cache_alloc" => l.kmem_cache_alloc == FixedBtf::KMEM_CACHE_ALLOC,
                "kmem_cache_free" => l.kmem_cache_free == FixedBtf::FREE,
                "mm_page_alloc" => l.mm_page_alloc == FixedBtf::MM_PAGE_ALLOC,
                "mm_page_free" => l.mm_page_free == FixedBtf::MM_PAGE_FREE,
                _ => false,
            }
    }
}

/// A [`ProbeSpec`] with every optional part empty, to fill in with `..`.
const fn spec(
    category: &'static str,
    event: &'static str,
    tp_program: &'static str,
    btf_program: &'static str,
) -> ProbeSpec {
    ProbeSpec {
        category,
        event,
        tp_program,
        btf_program,
        fixed_program: None,
        raw_program: None,
        fexit: None,
        only_on: None,
    }
}

pub const PROBES: &[ProbeSpec] = &[
    ProbeSpec {
        fixed_program: Some("kmalloc_btf_fixed"),
        raw_program: Some("kmalloc_raw"),
        ..spec("kmem", "kmalloc", "kmalloc_tp", "kmalloc_btf")
    },
    ProbeSpec {
        raw_program: Some("kmalloc_node_raw"),
        only_on: Some("kernels before 6.1; later ones report these in kmem:kmalloc"),
        ..spec(
            "kmem",
            "kmalloc_node",
            "kmalloc_node_tp",
            "kmalloc_node_btf",
        )
    },
    ProbeSpec {
        fixed_program: Some("kfree_btf_fixed"),
        raw_program: Some("kfree_raw"),
        ..spec("kmem", "kfree", "kfree_tp", "kfree_btf")
    },
    ProbeSpec {
        fixed_program: Some("kmem_cache_alloc_btf_fixed"),
        raw_program: Some("kmem_cache_alloc_raw"),
        ..spec(
            "kmem",
            "kmem_cache_alloc",
            "kmem_cache_alloc_tp",
            "kmem_cache_alloc_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("kmem_cache_alloc_node_raw"),
        only_on: Some("kernels before 6.1; later ones report these in kmem:kmem_cache_alloc"),
        ..spec(
            "kmem",
            "kmem_cache_alloc_node",
            "kmem_cache_alloc_node_tp",
            "kmem_cache_alloc_node_btf",
        )
    },
    ProbeSpec {
        fixed_program: Some("kmem_cache_free_btf_fixed"),
        raw_program: Some("kmem_cache_free_raw"),
        ..spec(
            "kmem",
            "kmem_cache_free",
            "kmem_cache_free_tp",
            "kmem_cache_free_btf",
        )
    },
    ProbeSpec {
        fixed_program: Some("mm_page_alloc_btf_fixed"),
        raw_program: Some("mm_page_alloc_raw"),
        ..spec(
            "kmem",
            "mm_page_alloc",
            "mm_page_alloc_tp",
            "mm_page_alloc_btf",
        )
    },
    ProbeSpec {
        fixed_program: Some("mm_page_free_btf_fixed"),
        raw_program: Some("mm_page_free_raw"),
        ..spec(
            "kmem",
            "mm_page_free",
            "mm_page_free_tp",
            "mm_page_free_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("mm_page_free_batched_raw"),
        ..spec(
            "kmem",
            "mm_page_free_batched",
            "mm_page_free_batched_tp",
            "mm_page_free_batched_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("mm_page_alloc_extfrag_raw"),
        ..spec(
            "kmem",
            "mm_page_alloc_extfrag",
            "mm_page_alloc_extfrag_tp",
            "mm_page_alloc_extfrag_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("alloc_vmap_area_raw"),
        fexit: Some(("alloc_vmap_area_fexit", "alloc_vmap_area")),
        ..spec(
            "vmalloc",
            "alloc_vmap_area",
            "alloc_vmap_area_tp",
            "alloc_vmap_area_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("purge_vmap_area_lazy_raw"),
        ..spec(
            "vmalloc",
            "purge_vmap_area_lazy",
            "purge_vmap_area_lazy_tp",
            "purge_vmap_area_lazy_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("percpu_alloc_percpu_raw"),
        ..spec(
            "percpu",
            "percpu_alloc_percpu",
            "percpu_alloc_percpu_tp",
            "percpu_alloc_percpu_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("percpu_alloc_percpu_fail_raw"),
        ..spec(
            "percpu",
            "percpu_alloc_percpu_fail",
            "percpu_alloc_percpu_fail_tp",
            "percpu_alloc_percpu_fail_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("mm_compaction_try_to_compact_pages_raw"),
        ..spec(
            "compaction",
            "mm_compaction_try_to_compact_pages",
            "mm_compaction_try_to_compact_pages_tp",
            "mm_compaction_try_to_compact_pages_btf",
        )
    },
    ProbeSpec {
        raw_program: Some("mark_victim_raw"),
        ..spec("oom", "mark_victim", "mark_victim_tp", "mark_victim_btf")
    },
];

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all are #[repr(C)], made only of integers, with explicit padding.
    unsafe impl aya::Pod for GfpKey {}
    unsafe impl aya::Pod for PageKey {}
    unsafe impl aya::Pod for CacheStats {}
    unsafe impl aya::Pod for CacheName {}
    unsafe impl aya::Pod for NotableEvent {}
    unsafe impl aya::Pod for SiteKey {}
    unsafe impl aya::Pod for CommKey {}
    unsafe impl aya::Pod for CgroupKey {}
    unsafe impl aya::Pod for Usage {}
    unsafe impl aya::Pod for SizeStats {}
    unsafe impl aya::Pod for FieldLoc {}
    unsafe impl aya::Pod for Layouts {}
    unsafe impl<const W: usize, V: aya::Pod> aya::Pod for Slot<W, V> {}
    unsafe impl aya::Pod for AllocatorTables {}
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
        assert_eq!(core::mem::size_of::<PageKey>(), 16);
        assert_eq!(core::mem::size_of::<CacheName>(), CACHE_NAME_LEN);
        assert_eq!(core::mem::size_of::<NotableEvent>(), 5 * 8 + 8 * 4 + 16);
        assert_eq!(core::mem::size_of::<SiteKey>(), 16);
        assert_eq!(core::mem::size_of::<CommKey>(), 24);
        assert_eq!(core::mem::size_of::<CgroupKey>(), 16);
        assert_eq!(core::mem::size_of::<MemcgOffsets>(), 24);
        assert_eq!(core::mem::size_of::<Layouts>() % 4, 0);
        assert_eq!(core::mem::size_of::<SiteTable>(), 24 * SITE_SLOTS);
        assert_eq!(core::mem::size_of::<CommTable>(), 32 * COMM_SLOTS);
        assert_eq!(core::mem::size_of::<SizeTable>(), 192 * SIZE_SLOTS);
        assert_eq!(
            core::mem::size_of::<AllocatorTables>(),
            16 + 192 * SIZE_SLOTS + 24 * SITE_SLOTS + 32 * COMM_SLOTS
        );
    }

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
    fn size_bucket_is_the_ceiling_log2_clamped() {
        let reference = |bytes: u64| -> usize {
            if bytes <= 8 {
                return 0;
            }
            let ceil_log2 = 64 - (bytes - 1).leading_zeros() as usize;
            (ceil_log2 - 3).min(SIZE_BUCKETS - 1)
        };
        for shift in 0..64 {
            for delta in [-1i64, 0, 1] {
                let bytes = (1u64 << shift).wrapping_add_signed(delta);
                assert_eq!(size_bucket(bytes), reference(bytes), "{bytes} bytes");
            }
        }
        for bytes in (0..70_000).chain([u64::MAX, u64::MAX - 1, 3 << 40]) {
            assert_eq!(size_bucket(bytes), reference(bytes), "{bytes} bytes");
        }
    }

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
