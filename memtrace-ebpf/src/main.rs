//! memtrace's eBPF programs.
//!
//! Each tracepoint has three programs with one body: `<event>_tp` for the classic
//! tracepoint (fields read from the trace record), `<event>_btf` for the BTF tracepoint
//! (fields read from the argument array) and `<event>_raw` for the raw tracepoint (the same
//! arguments, pointers read with helpers where a verifier refuses typed loads). Userspace
//! attaches the first way the running kernel allows and hands the field layouts, resolved
//! from that kernel, in the load-time global `LAYOUTS`. The hot events have a fourth,
//! `<event>_btf_fixed`: the BTF body compiled with the layout of current kernels as constants
//! (`FixedBtf`), which userspace loads only where the resolved layout equals it. Where a
//! kernel lacks a tracepoint, an fexit program on the kernel function stands in (vmalloc
//! before 6.2).
//!
//! Hot paths only touch per-CPU maps: no allocation, no unbounded loop, no lock. Aggregates
//! live first in per-CPU tables (see `memtrace_common::Slot`), then in per-CPU hash maps.
//!
//! The crate root is the table of programs: each entry point names its event's layout and
//! its [`Kind`] and calls the event's body in `handlers`. The bodies are built from `fields`
//! (reading the event), `tables` (counting), `attribution` (call site, task name, cgroup) and
//! `notable` (ring-buffer events), over the `maps` and the load-time `globals`. Userspace
//! looks the programs, maps and globals up by name: their names must not change.
#![no_std]
#![no_main]
// The atomic add on the heap profile's filter (see `profile::add`).
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod attribution;
mod fields;
mod globals;
mod handlers;
mod maps;
mod notable;
mod profile;
mod tables;

use aya_ebpf::{
    EbpfContext,
    macros::{btf_tracepoint, fentry, fexit, raw_tracepoint, tracepoint},
    programs::{
        BtfTracePointContext, FEntryContext, FExitContext, RawTracePointContext, TracePointContext,
    },
};
use memtrace_common::{Counter, FixedBtf};

use crate::{
    fields::Kind,
    globals::{LAYOUTS, global},
    handlers::{
        on_alloc_vmap_area, on_compaction, on_extfrag, on_free, on_free_vmap_area, on_kmalloc,
        on_kmem_cache_alloc, on_mm_page_alloc, on_mm_page_free, on_oom_kill, on_percpu_alloc,
        on_percpu_fail, on_percpu_free, on_purge,
    },
};

/// Defines the classic, the BTF and the raw tracepoint program of one event around one body.
macro_rules! probe {
    ($event:ident, $name:literal, $tp:ident, $btf:ident, $raw:ident,
     |$ctx:ident, $l:ident, $k:ident| $body:expr) => {
        #[tracepoint]
        pub fn $tp(ctx: TracePointContext) -> u32 {
            let $ctx = ctx.as_ptr();
            let $l = global(&LAYOUTS.tp.$event);
            let $k = Kind::Tp;
            $body;
            0
        }

        #[btf_tracepoint(function = $name)]
        pub fn $btf(ctx: BtfTracePointContext) -> i32 {
            let $ctx = ctx.as_ptr();
            let $l = global(&LAYOUTS.btf.$event);
            let $k = Kind::Btf;
            $body;
            0
        }

        // A raw tracepoint's arguments are the BTF tracepoint's: the same layout.
        #[raw_tracepoint(tracepoint = $name)]
        pub fn $raw(ctx: RawTracePointContext) -> i32 {
            let $ctx = ctx.as_ptr();
            let $l = global(&LAYOUTS.btf.$event);
            let $k = Kind::Raw;
            $body;
            0
        }
    };
    // A hot event also gets `$fixed`: the BTF body compiled with the constant layout
    // `$layout` (see `FixedBtf`), which userspace loads where the kernel's layout equals it.
    ($event:ident, $name:literal, $tp:ident, $btf:ident, $raw:ident, $fixed:ident = $layout:expr,
     |$ctx:ident, $l:ident, $k:ident| $body:expr) => {
        probe!($event, $name, $tp, $btf, $raw, |$ctx, $l, $k| $body);

        #[btf_tracepoint(function = $name)]
        pub fn $fixed(ctx: BtfTracePointContext) -> i32 {
            let $ctx = ctx.as_ptr();
            let $l = $layout;
            let $k = Kind::Btf;
            $body;
            0
        }
    };
}

probe!(
    kmalloc,
    "kmalloc",
    kmalloc_tp,
    kmalloc_btf,
    kmalloc_raw,
    kmalloc_btf_fixed = FixedBtf::KMALLOC,
    |c, l, k| on_kmalloc(c, &l, k)
);
probe!(
    kfree,
    "kfree",
    kfree_tp,
    kfree_btf,
    kfree_raw,
    kfree_btf_fixed = FixedBtf::FREE,
    |c, l, k| on_free(c, &l, Counter::KmallocFrees, k)
);
probe!(
    kmem_cache_alloc,
    "kmem_cache_alloc",
    kmem_cache_alloc_tp,
    kmem_cache_alloc_btf,
    kmem_cache_alloc_raw,
    kmem_cache_alloc_btf_fixed = FixedBtf::KMEM_CACHE_ALLOC,
    |c, l, k| on_kmem_cache_alloc(c, &l, k)
);
probe!(
    kmalloc_node,
    "kmalloc_node",
    kmalloc_node_tp,
    kmalloc_node_btf,
    kmalloc_node_raw,
    |c, l, k| on_kmalloc(c, &l, k)
);
probe!(
    kmem_cache_alloc_node,
    "kmem_cache_alloc_node",
    kmem_cache_alloc_node_tp,
    kmem_cache_alloc_node_btf,
    kmem_cache_alloc_node_raw,
    |c, l, k| on_kmem_cache_alloc(c, &l, k)
);
probe!(
    kmem_cache_free,
    "kmem_cache_free",
    kmem_cache_free_tp,
    kmem_cache_free_btf,
    kmem_cache_free_raw,
    kmem_cache_free_btf_fixed = FixedBtf::FREE,
    |c, l, k| on_free(c, &l, Counter::KmemCacheFrees, k)
);
probe!(
    mm_page_alloc,
    "mm_page_alloc",
    mm_page_alloc_tp,
    mm_page_alloc_btf,
    mm_page_alloc_raw,
    mm_page_alloc_btf_fixed = FixedBtf::MM_PAGE_ALLOC,
    |c, l, k| on_mm_page_alloc(c, &l, k)
);
probe!(
    mm_page_free,
    "mm_page_free",
    mm_page_free_tp,
    mm_page_free_btf,
    mm_page_free_raw,
    mm_page_free_btf_fixed = FixedBtf::MM_PAGE_FREE,
    |c, l, k| on_mm_page_free(c, &l, k)
);
// `mm_page_free_batched` frees one order-0 page: its layout has no order.
probe!(
    mm_page_free_batched,
    "mm_page_free_batched",
    mm_page_free_batched_tp,
    mm_page_free_batched_btf,
    mm_page_free_batched_raw,
    |c, l, k| on_mm_page_free(c, &l, k)
);
probe!(
    mm_page_alloc_extfrag,
    "mm_page_alloc_extfrag",
    mm_page_alloc_extfrag_tp,
    mm_page_alloc_extfrag_btf,
    mm_page_alloc_extfrag_raw,
    |c, l, k| on_extfrag(c, &l, k)
);
probe!(
    alloc_vmap_area,
    "alloc_vmap_area",
    alloc_vmap_area_tp,
    alloc_vmap_area_btf,
    alloc_vmap_area_raw,
    |c, l, k| on_alloc_vmap_area(c, &l, k)
);
/// `alloc_vmap_area()` returns, on kernels without the vmalloc tracepoints (before 6.2):
/// the same allocations the `vmalloc:alloc_vmap_area` tracepoint reports, from the function's
/// arguments and return value.
#[fexit(function = "alloc_vmap_area")]
pub fn alloc_vmap_area_fexit(ctx: FExitContext) -> i32 {
    on_alloc_vmap_area(ctx.as_ptr(), &global(&LAYOUTS.vmap_fexit), Kind::Btf);
    0
}

probe!(
    free_vmap_area_noflush,
    "free_vmap_area_noflush",
    free_vmap_area_noflush_tp,
    free_vmap_area_noflush_btf,
    free_vmap_area_noflush_raw,
    |c, l, k| on_free_vmap_area(c, &l, k)
);
probe!(
    purge_vmap_area_lazy,
    "purge_vmap_area_lazy",
    purge_vmap_area_lazy_tp,
    purge_vmap_area_lazy_btf,
    purge_vmap_area_lazy_raw,
    |c, l, k| on_purge(c, &l, k)
);
probe!(
    percpu_alloc_percpu,
    "percpu_alloc_percpu",
    percpu_alloc_percpu_tp,
    percpu_alloc_percpu_btf,
    percpu_alloc_percpu_raw,
    |c, l, k| on_percpu_alloc(c, &l, k)
);
probe!(
    percpu_free_percpu,
    "percpu_free_percpu",
    percpu_free_percpu_tp,
    percpu_free_percpu_btf,
    percpu_free_percpu_raw,
    |c, l, k| on_percpu_free(c, &l, k)
);

probe!(
    mm_compaction_try_to_compact_pages,
    "mm_compaction_try_to_compact_pages",
    mm_compaction_try_to_compact_pages_tp,
    mm_compaction_try_to_compact_pages_btf,
    mm_compaction_try_to_compact_pages_raw,
    |c, l, k| on_compaction(c, &l, k)
);

/// `oom:mark_victim`: the OOM killer chose a victim. No field is needed.
#[tracepoint]
pub fn mark_victim_tp(_ctx: TracePointContext) -> u32 {
    on_oom_kill();
    0
}

#[btf_tracepoint(function = "mark_victim")]
pub fn mark_victim_btf(_ctx: BtfTracePointContext) -> i32 {
    on_oom_kill();
    0
}

#[raw_tracepoint(tracepoint = "mark_victim")]
pub fn mark_victim_raw(_ctx: RawTracePointContext) -> i32 {
    on_oom_kill();
    0
}

#[tracepoint]
pub fn percpu_alloc_percpu_fail_tp(ctx: TracePointContext) -> u32 {
    on_percpu_fail(ctx.as_ptr());
    0
}

#[btf_tracepoint(function = "percpu_alloc_percpu_fail")]
pub fn percpu_alloc_percpu_fail_btf(ctx: BtfTracePointContext) -> i32 {
    on_percpu_fail(ctx.as_ptr());
    0
}

#[raw_tracepoint(tracepoint = "percpu_alloc_percpu_fail")]
pub fn percpu_alloc_percpu_fail_raw(ctx: RawTracePointContext) -> i32 {
    on_percpu_fail(ctx.as_ptr());
    0
}

/// Loaded (never attached) by `memtrace check` to learn whether this kernel allows fentry.
#[fentry(function = "kfree")]
pub fn fentry_probe(_ctx: FEntryContext) -> u32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
