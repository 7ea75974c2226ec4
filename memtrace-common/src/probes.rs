//! The programs, by the tracepoint they serve.

use crate::{EventLayouts, FixedBtf};

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
        raw_program: Some("free_vmap_area_noflush_raw"),
        ..spec(
            "vmalloc",
            "free_vmap_area_noflush",
            "free_vmap_area_noflush_tp",
            "free_vmap_area_noflush_btf",
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
        raw_program: Some("percpu_free_percpu_raw"),
        ..spec(
            "percpu",
            "percpu_free_percpu",
            "percpu_free_percpu_tp",
            "percpu_free_percpu_btf",
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
