//! Where the programs find their data in the running kernel: each event's field layout, for
//! classic and BTF tracepoints, and the struct offsets they dereference, resolved by userspace
//! at start-up and handed over in the load-time global [`GLOBAL_LAYOUTS`].

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

/// Bytes of a classic tracepoint's record the programs copy per event (BTF programs load
/// each field from their arguments instead): every field memtrace reads must end within
/// them (userspace refuses a layout that does not).
pub const RECORD_BYTES: usize = 96;

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

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for FieldLoc {}

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

/// Layout of `kmem:mm_page_free` and `kmem:mm_page_free_batched` (which has no order:
/// order 0). The page (`pfn` in the record, `page` for BTF tracepoints) ends a heap-profile
/// sample of the page.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PageFreeLayout {
    pub order: FieldLoc,
    pub pfn: FieldLoc,
    pub page: FieldLoc,
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
    /// The area's start (the tracepoint only): a heap-profile sample's address.
    pub addr: FieldLoc,
    pub size: FieldLoc,
    pub failed: FieldLoc,
    pub ret: FieldLoc,
}

/// Layout of `vmalloc:free_vmap_area_noflush`: the area's start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VmapFreeLayout {
    pub va_start: FieldLoc,
}

/// Layout of `percpu:percpu_free_percpu`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PercpuFreeLayout {
    pub ptr: FieldLoc,
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
    /// The percpu pointer (a heap-profile sample's address).
    pub ptr: FieldLoc,
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
    pub mm_page_free_batched: PageFreeLayout,
    pub mm_page_alloc_extfrag: ExtfragLayout,
    pub alloc_vmap_area: VmapAreaLayout,
    pub free_vmap_area_noflush: VmapFreeLayout,
    pub purge_vmap_area_lazy: PurgeLayout,
    pub percpu_alloc_percpu: PercpuAllocLayout,
    pub percpu_free_percpu: PercpuFreeLayout,
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

const NO_PAGE_FREE: PageFreeLayout = PageFreeLayout {
    order: NO,
    pfn: NO,
    page: NO,
};

const NO_VMAP_AREA: VmapAreaLayout = VmapAreaLayout {
    addr: NO,
    size: NO,
    failed: NO,
    ret: NO,
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
        mm_page_free: NO_PAGE_FREE,
        mm_page_free_batched: NO_PAGE_FREE,
        mm_page_alloc_extfrag: ExtfragLayout { fallback_order: NO },
        alloc_vmap_area: NO_VMAP_AREA,
        free_vmap_area_noflush: VmapFreeLayout { va_start: NO },
        purge_vmap_area_lazy: PurgeLayout { npurged: NO },
        percpu_alloc_percpu: PercpuAllocLayout {
            call_site: NO,
            size: NO,
            bytes_alloc: NO,
            gfp_flags: NO,
            ptr: NO,
        },
        percpu_free_percpu: PercpuFreeLayout { ptr: NO },
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
    pub const MM_PAGE_FREE: PageFreeLayout = PageFreeLayout {
        order: arg(1, 4),
        pfn: NO,
        page: arg(0, 8),
    };
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

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for Layouts {}

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
        vmap_fexit: NO_VMAP_AREA,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_stable() {
        assert_eq!(core::mem::size_of::<FieldLoc>(), 4);
        assert_eq!(core::mem::size_of::<KmallocLayout>(), 20);
        assert_eq!(core::mem::size_of::<MemcgOffsets>(), 24);
        assert_eq!(core::mem::size_of::<Layouts>() % 4, 0);
    }
}
