//! The programs' bodies, one per event: each takes what its event needs of the program's
//! context, the event's layout and how the program is attached ([`Kind`], a constant in every
//! program).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
};
use memtrace_common::{
    Allocator, CACHE_NAME_LEN, CACHE_OVERFLOW, CACHE_UNREADABLE, COMPACTION_STALLS_BASE, CacheName,
    CacheStats, CompactLayout, Counter, EVENT_FAILED, EVENT_LARGE, EXTFRAG_BASE, ExtfragLayout,
    FreeLayout, GFP_OVERFLOW, GFP_UNKNOWN, KmallocLayout, KmemCacheAllocLayout, LiveKey,
    PAGE_FREES_BASE, PageAllocLayout, PageFreeLayout, PageKey, PercpuAllocLayout, PercpuFreeLayout,
    PurgeLayout, SPACE_PAGE, SPACE_PERCPU, SPACE_SLAB, SPACE_VMALLOC, VmapAreaLayout,
    VmapFreeLayout, cache_name_id, cache_table_key, order_slot, page_table_key, span,
};

use crate::{
    attribution::attribute,
    fields::{EventFields, Kind, address_of, field, member, read},
    globals::{LAYOUTS, NOTABLE_MIN_ORDER, global, hooks_only, min_bytes, page_bytes, wanted},
    maps::{CACHE_NAMES, CACHE_STATS, CACHE_TABLE, PAGE_ALLOCS, PAGE_TABLE},
    notable::{Notable, emit},
    profile,
    tables::{add_counter, bump, count_failure, raise, record_size, slot, table_value, tables},
};

#[inline(always)]
pub(crate) fn on_kmalloc(ctx: *mut c_void, l: &KmallocLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = EventFields::load(
        ctx,
        span(&[l.call_site, l.ptr, l.bytes_req, l.bytes_alloc, l.gfp_flags]),
        k,
    );
    let gfp = r.get(l.gfp_flags);
    let bytes_req = r.get(l.bytes_req);
    let bytes_alloc = r.get(l.bytes_alloc);
    let mut n = Notable {
        allocator: Allocator::Kmalloc,
        call_site: r.get(l.call_site),
        bytes_req,
        bytes_alloc,
        gfp,
        order: 0,
        flags: 0,
    };
    let ptr = r.get(l.ptr);
    if ptr == 0 {
        count_failure(Allocator::Kmalloc, 0, gfp);
        n.flags = EVENT_FAILED;
        emit(ctx, n);
        return;
    }
    let t = tables(Allocator::Kmalloc);
    record_size(Allocator::Kmalloc, t, gfp, bytes_req, bytes_alloc);
    attribute(Allocator::Kmalloc, t, n.call_site, bytes_alloc, k.typed());
    raise(t, bytes_alloc);
    profile::on_alloc(
        ctx,
        t,
        Allocator::Kmalloc,
        slab_key(ptr),
        bytes_alloc,
        n.call_site,
    );
    if bytes_alloc >= min_bytes() {
        n.flags = EVENT_LARGE;
        emit(ctx, n);
    }
}

/// The heap-profile key of a slab object (kmalloc's and kmem_cache's alike: either free
/// event may free either's objects).
#[inline(always)]
fn slab_key(ptr: u64) -> LiveKey {
    LiveKey {
        addr: ptr,
        space: SPACE_SLAB,
    }
}

#[inline(always)]
pub(crate) fn on_free(ctx: *mut c_void, l: &FreeLayout, counter: Counter, k: Kind) {
    if hooks_only() {
        return;
    }
    let ptr = EventFields::load(ctx, span(&[l.ptr]), k).get(l.ptr);
    // Freeing NULL is legal and frees nothing.
    if ptr == 0 {
        return;
    }
    // Any task may free what the profiled one allocated: frees are not filtered.
    profile::on_free(slab_key(ptr));
    if wanted() {
        bump(counter);
    }
}

#[inline(always)]
pub(crate) fn on_kmem_cache_alloc(ctx: *mut c_void, l: &KmemCacheAllocLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = EventFields::load(
        ctx,
        span(&[
            l.call_site,
            l.ptr,
            l.s,
            l.name,
            l.bytes_req,
            l.bytes_alloc,
            l.gfp_flags,
        ]),
        k,
    );
    let gfp = r.get(l.gfp_flags);
    let call_site = r.get(l.call_site);
    let ptr = r.get(l.ptr);
    if ptr == 0 {
        count_failure(Allocator::KmemCache, 0, gfp);
        emit(
            ctx,
            Notable {
                allocator: Allocator::KmemCache,
                call_site,
                bytes_req: r.get(l.bytes_req),
                bytes_alloc: r.get(l.bytes_alloc),
                gfp,
                order: 0,
                flags: EVENT_FAILED,
            },
        );
        return;
    }
    // A classic tracepoint reads the name on every event (it is the id); a BTF one only
    // when it claims a new table slot or meets a cache the map does not hold yet, so it
    // needs no name buffer on the hot path.
    let t = tables(Allocator::KmemCache);
    let (id, requested, allocated, cache, classic_name) = if l.s.is_present() {
        // BTF or raw tracepoint: the cache itself, its address as id.
        let s = r.get(l.s) as *const u8;
        let off = global(&LAYOUTS.kmem_cache);
        let id = if k.typed() {
            address_of(s, t)
        } else {
            s as u64
        };
        (
            id,
            member(s, off.object_size, k),
            member(s, off.size, k),
            s,
            None,
        )
    } else if !l.name.is_present() {
        // Neither the cache nor its name (before 6.2): the cache the object lies in.
        let s = cache_of_object(ptr);
        let id = if s.is_null() {
            CACHE_UNREADABLE
        } else {
            s as u64
        };
        (id, r.get(l.bytes_req), r.get(l.bytes_alloc), s, None)
    } else {
        // Classic tracepoint: the record holds the name as a __data_loc string.
        let loc = r.get(l.name);
        let src = (ctx as *const u8).wrapping_add((loc & 0xffff) as usize);
        let mut name = CacheName {
            name: [0; CACHE_NAME_LEN],
        };
        read_name(src, &mut name.name);
        (
            cache_name_id(&name.name),
            r.get(l.bytes_req),
            r.get(l.bytes_alloc),
            core::ptr::null(),
            Some(name),
        )
    };
    attribute(Allocator::KmemCache, t, call_site, allocated, k.typed());
    profile::on_alloc(
        ctx,
        t,
        Allocator::KmemCache,
        slab_key(ptr),
        allocated,
        call_site,
    );

    // A slot of the cache table also stands for the size histogram (see `CacheTable`);
    // without one, the allocation counts in the cache map and the size table. Only BTF
    // programs use the table: with it, the classic and raw programs are refused by older
    // verifiers (6.1's loses the table pointer's null check across the branches above).
    let in_table = match cache_table_key(id, gfp, allocated) {
        Some(key) if k.typed() => table_value(CACHE_TABLE.get_ptr_mut(0), key),
        _ => None,
    };
    let p = match in_table {
        // Seen before on this CPU: its name was offered to CACHE_NAMES then (a cache whose
        // name did not fit there is reported as `unknown`).
        Some((p, false)) => Some(p),
        // New on this CPU: its name is recorded once for all CPUs.
        Some((p, true)) => {
            record_cache_name(id, cache, classic_name);
            Some(p)
        }
        None => {
            record_size(Allocator::KmemCache, t, gfp, requested, allocated);
            match CACHE_STATS.get_ptr_mut(id) {
                Some(p) => Some(p),
                None => {
                    record_cache_name(id, cache, classic_name);
                    slot::<_, CacheStats>(&CACHE_STATS, id, CACHE_OVERFLOW)
                }
            }
        }
    };
    if let Some(p) = p {
        // SAFETY: per-CPU value.
        unsafe {
            (*p).allocations += 1;
            (*p).requested_bytes += requested;
            (*p).allocated_bytes += allocated;
        }
    }
}

/// Reads a NUL-terminated kernel string into `buf` (zero-padded, possibly truncated).
#[inline(always)]
fn read_name(src: *const u8, buf: &mut [u8; CACHE_NAME_LEN]) {
    // SAFETY: the helper bounds the read by the buffer and checks the address.
    let _ = unsafe { bpf_probe_read_kernel_str_bytes(src, buf) };
}

/// Records the name of cache `id` in [`CACHE_NAMES`] if it has none: `known` (a classic
/// tracepoint's), or read from `cache` (a BTF tracepoint's `struct kmem_cache *`).
#[inline(always)]
fn record_cache_name(id: u64, cache: *const u8, known: Option<CacheName>) {
    let name = match known {
        Some(n) => n,
        None => {
            let mut n = CacheName {
                name: [0; CACHE_NAME_LEN],
            };
            if !cache.is_null() {
                let off = global(&LAYOUTS.kmem_cache);
                let name_ptr = read(cache, off.name) as *const u8;
                read_name(name_ptr, &mut n.name);
            }
            n
        }
    };
    let _ = CACHE_NAMES.insert(id, name, BPF_NOEXIST as u64);
}

/// The slab cache of the object at `addr`, from its page (see [`SlabOffsets`]); null if it
/// cannot be read. Four helper reads: the two bases, the page's head, its cache.
#[inline(always)]
fn cache_of_object(addr: u64) -> *const u8 {
    let so = global(&LAYOUTS.slab);
    if !so.is_known() {
        return core::ptr::null();
    }
    // SAFETY: bpf_probe_read_kernel checks every address; a failed read yields null.
    unsafe {
        let (Ok(direct), Ok(pages)) = (
            bpf_probe_read_kernel(so.page_offset_base as *const u64),
            bpf_probe_read_kernel(so.vmemmap_base as *const u64),
        ) else {
            return core::ptr::null();
        };
        if addr < direct {
            return core::ptr::null();
        }
        let pfn = (addr - direct) >> (so.page_shift & 63);
        let page = pages.wrapping_add(pfn.wrapping_mul(u64::from(so.struct_page_size)));
        let head =
            bpf_probe_read_kernel((page + u64::from(so.compound_head)) as *const u64).unwrap_or(0);
        let page = if head & 1 != 0 { head - 1 } else { page };
        bpf_probe_read_kernel((page + u64::from(so.slab_cache)) as *const u64).unwrap_or(0)
            as *const u8
    }
}

#[inline(always)]
pub(crate) fn on_mm_page_alloc(ctx: *mut c_void, l: &PageAllocLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = EventFields::load(
        ctx,
        span(&[l.pfn, l.page, l.order, l.gfp_flags, l.migratetype]),
        k,
    );
    let order = order_slot(r.get(l.order));
    let gfp = r.get(l.gfp_flags);
    let (page, failed) = if l.pfn.is_present() {
        let pfn = r.get(l.pfn);
        (pfn, pfn == u64::MAX)
    } else {
        let page = r.get(l.page);
        (page, page == 0)
    };
    let notable = Notable {
        allocator: Allocator::Page,
        call_site: 0,
        bytes_req: page_bytes(order),
        bytes_alloc: page_bytes(order),
        gfp,
        order,
        flags: 0,
    };
    if failed {
        count_failure(Allocator::Page, order, gfp);
        emit(
            ctx,
            Notable {
                flags: EVENT_FAILED,
                ..notable
            },
        );
        return;
    }
    if order >= global(&NOTABLE_MIN_ORDER) {
        emit(
            ctx,
            Notable {
                flags: EVENT_LARGE,
                ..notable
            },
        );
    }
    let t = tables(Allocator::Page);
    raise(t, order as u64 + 1);
    attribute(Allocator::Page, t, 0, page_bytes(order), k.typed());
    if profile::enabled() {
        // A BTF program's `struct page *` is a typed pointer: its number, for the key.
        let page = if k.typed() && !l.pfn.is_present() {
            address_of(page as *const u8, t)
        } else {
            page
        };
        profile::on_alloc(
            ctx,
            t,
            Allocator::Page,
            page_key(page),
            page_bytes(order),
            0,
        );
    }
    let migratetype = r.get(l.migratetype) as u32;
    if let Some((p, _)) = table_value(
        PAGE_TABLE.get_ptr_mut(0),
        [page_table_key(order, migratetype, gfp)],
    ) {
        // SAFETY: per-CPU value only this program writes.
        unsafe { *p += 1 };
        return;
    }
    let key = PageKey {
        order,
        migratetype,
        gfp,
    };
    let overflow = PageKey {
        order,
        migratetype: u32::MAX,
        gfp: GFP_OVERFLOW,
    };
    if let Some(p) = slot(&PAGE_ALLOCS, key, overflow) {
        // SAFETY: per-CPU value.
        unsafe { *p += 1 };
    }
}

/// The heap-profile key of a page: its frame number (classic tracepoints) or its
/// `struct page` (BTF and raw ones), as both the allocation and the free events give it.
#[inline(always)]
fn page_key(page: u64) -> LiveKey {
    LiveKey {
        addr: page,
        space: SPACE_PAGE,
    }
}

/// `mm_page_free`, and `mm_page_free_batched`, which frees one order-0 page (its layout has
/// no order).
#[inline(always)]
pub(crate) fn on_mm_page_free(ctx: *mut c_void, l: &PageFreeLayout, k: Kind) {
    if hooks_only() {
        return;
    }
    let r = EventFields::load(ctx, span(&[l.order, l.pfn, l.page]), k);
    let page = if l.pfn.is_present() {
        r.get(l.pfn)
    } else {
        r.get(l.page)
    };
    if profile::enabled() && (l.pfn.is_present() || l.page.is_present()) {
        // As in `on_mm_page_alloc`, through this CPU's page tables' scratch word.
        let page = if k.typed() && !l.pfn.is_present() {
            address_of(page as *const u8, tables(Allocator::Page))
        } else {
            page
        };
        profile::on_free(page_key(page));
    }
    if wanted() {
        add_counter(PAGE_FREES_BASE + order_slot(r.get(l.order)), 1);
    }
}

#[inline(always)]
pub(crate) fn on_extfrag(ctx: *mut c_void, l: &ExtfragLayout, k: Kind) {
    if wanted() {
        add_counter(
            EXTFRAG_BASE + order_slot(field(ctx, l.fallback_order, k)),
            1,
        );
    }
}

#[inline(always)]
pub(crate) fn on_compaction(ctx: *mut c_void, l: &CompactLayout, k: Kind) {
    if wanted() {
        add_counter(
            COMPACTION_STALLS_BASE + order_slot(field(ctx, l.order, k)),
            1,
        );
    }
}

#[inline(always)]
pub(crate) fn on_alloc_vmap_area(ctx: *mut c_void, l: &VmapAreaLayout, k: Kind) {
    if !wanted() {
        return;
    }
    let r = EventFields::load(ctx, span(&[l.addr, l.size, l.failed, l.ret]), k);
    let size = r.get(l.size);
    // The tracepoint's `failed`, or (fexit) an error pointer or NULL returned.
    let failed = if l.ret.is_present() {
        let ret = r.get(l.ret);
        ret == 0 || ret > (-4096i64) as u64
    } else {
        r.get(l.failed) != 0
    };
    let mut n = Notable {
        allocator: Allocator::Vmalloc,
        call_site: 0,
        bytes_req: size,
        bytes_alloc: size,
        gfp: GFP_UNKNOWN,
        order: 0,
        flags: 0,
    };
    if failed {
        count_failure(Allocator::Vmalloc, 0, GFP_UNKNOWN);
        n.flags = EVENT_FAILED;
        emit(ctx, n);
        return;
    }
    let t = tables(Allocator::Vmalloc);
    record_size(Allocator::Vmalloc, t, GFP_UNKNOWN, size, size);
    attribute(Allocator::Vmalloc, t, 0, size, k.typed());
    raise(t, size);
    // Only the tracepoint has the area's address (and only kernels with it have the free
    // event that ends its sample).
    if l.addr.is_present() {
        let key = LiveKey {
            addr: r.get(l.addr),
            space: SPACE_VMALLOC,
        };
        profile::on_alloc(ctx, t, Allocator::Vmalloc, key, size, 0);
    }
    if size >= min_bytes() {
        n.flags = EVENT_LARGE;
        emit(ctx, n);
    }
}

/// `vmalloc:free_vmap_area_noflush`: an area is freed (its pages may be purged later).
#[inline(always)]
pub(crate) fn on_free_vmap_area(ctx: *mut c_void, l: &VmapFreeLayout, k: Kind) {
    if !hooks_only() && profile::enabled() {
        profile::on_free(LiveKey {
            addr: field(ctx, l.va_start, k),
            space: SPACE_VMALLOC,
        });
    }
}

#[inline(always)]
pub(crate) fn on_purge(ctx: *mut c_void, l: &PurgeLayout, k: Kind) {
    if wanted() {
        bump(Counter::VmallocPurges);
        add_counter(Counter::VmallocPurgedAreas as u32, field(ctx, l.npurged, k));
    }
}

#[inline(always)]
pub(crate) fn on_percpu_alloc(ctx: *mut c_void, l: &PercpuAllocLayout, k: Kind) {
    if wanted() {
        let r = EventFields::load(
            ctx,
            span(&[l.call_site, l.size, l.bytes_alloc, l.gfp_flags, l.ptr]),
            k,
        );
        // Before 5.14 the event has neither the bytes allocated nor the GFP flags (nor the
        // call site, which then reads as 0: no call-site attribution).
        let size = r.get(l.size);
        let bytes_alloc = if l.bytes_alloc.is_present() {
            r.get(l.bytes_alloc)
        } else {
            size
        };
        let gfp = if l.gfp_flags.is_present() {
            r.get(l.gfp_flags)
        } else {
            GFP_UNKNOWN
        };
        let t = tables(Allocator::Percpu);
        let call_site = r.get(l.call_site);
        record_size(Allocator::Percpu, t, gfp, size, bytes_alloc);
        attribute(Allocator::Percpu, t, call_site, bytes_alloc, k.typed());
        // The pointer is read only for the profile.
        if profile::enabled() {
            let key = percpu_key(r.get(l.ptr));
            profile::on_alloc(ctx, t, Allocator::Percpu, key, bytes_alloc, call_site);
        }
    }
}

#[inline(always)]
fn percpu_key(ptr: u64) -> LiveKey {
    LiveKey {
        addr: ptr,
        space: SPACE_PERCPU,
    }
}

/// `percpu:percpu_free_percpu`.
#[inline(always)]
pub(crate) fn on_percpu_free(ctx: *mut c_void, l: &PercpuFreeLayout, k: Kind) {
    if !hooks_only() && profile::enabled() {
        profile::on_free(percpu_key(field(ctx, l.ptr, k)));
    }
}

/// `percpu_alloc_percpu_fail` carries no GFP flags.
#[inline(always)]
pub(crate) fn on_percpu_fail(ctx: *mut c_void) {
    if wanted() {
        count_failure(Allocator::Percpu, 0, GFP_UNKNOWN);
        emit(
            ctx,
            Notable {
                allocator: Allocator::Percpu,
                call_site: 0,
                bytes_req: 0,
                bytes_alloc: 0,
                gfp: GFP_UNKNOWN,
                order: 0,
                flags: EVENT_FAILED,
            },
        );
    }
}

/// `oom:mark_victim`: the OOM killer chose a victim.
#[inline(always)]
pub(crate) fn on_oom_kill() {
    if wanted() {
        bump(Counter::OomKills);
    }
}
