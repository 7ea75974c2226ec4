//! Resolves where each tracepoint field lives, from the running kernel: classic tracepoint
//! record offsets from tracefs `format` files, BTF tracepoint argument positions from the
//! kernel's BTF. The result is the load-time global the programs read.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
};

use memtrace_common::{
    EventLayouts, FieldLoc, KmemCacheOffsets, Layouts, MemcgOffsets, PROBES, SlabOffsets,
    VmapAreaLayout,
};

use crate::kernel::{btf::Btf, tracefs::Format};

/// Layouts plus, per event and attach mode, what is missing (if anything).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub layouts: Layouts,
    tp_missing: BTreeMap<&'static str, String>,
    btf_missing: BTreeMap<&'static str, String>,
    fexit_missing: BTreeMap<&'static str, String>,
    /// Events whose tracepoint this kernel has (in its BTF or in tracefs).
    present: BTreeSet<&'static str>,
    /// What each event's program will not count on this kernel (fields it lacks), by event.
    degraded: BTreeMap<&'static str, String>,
    memcg_missing: Option<String>,
    slab_missing: Option<String>,
}

impl Resolved {
    /// Why the programs cannot find an object's slab cache from its address, if they cannot
    /// (needed where `kmem_cache_alloc` carries neither the cache nor its name).
    pub fn slab_missing(&self) -> Option<&str> {
        self.slab_missing.as_deref()
    }

    /// Why `event` cannot be used as a classic tracepoint, if it cannot.
    pub fn tp_missing(&self, event: &str) -> Option<&str> {
        self.tp_missing.get(event).map(String::as_str)
    }

    /// Why `event` cannot be used as a BTF tracepoint, if it cannot.
    pub fn btf_missing(&self, event: &str) -> Option<&str> {
        self.btf_missing.get(event).map(String::as_str)
    }

    /// Why `event`'s fexit stand-in (see [`memtrace_common::ProbeSpec::fexit`]) cannot be
    /// used, if it cannot (or the probe has none).
    pub fn fexit_missing(&self, event: &str) -> Option<&str> {
        match self.fexit_missing.get(event) {
            Some(why) => Some(why),
            None if PROBES.iter().any(|p| p.event == event && p.fexit.is_some()) => None,
            None => Some("no fexit stand-in for this tracepoint"),
        }
    }

    /// Whether this kernel has `event`'s tracepoint.
    pub fn exists(&self, event: &str) -> bool {
        self.present.contains(event)
    }

    /// What `event`'s program cannot count on this kernel, if anything.
    pub fn degraded(&self, event: &str) -> Option<&str> {
        self.degraded.get(event).map(String::as_str)
    }

    /// Why the programs cannot read the current task's memory cgroup, if they cannot.
    pub fn memcg_missing(&self) -> Option<&str> {
        self.memcg_missing.as_deref()
    }
}

/// Where to find named fields of one event, and which of them the program needs.
trait Source {
    fn loc(&self, name: &str) -> Option<FieldLoc>;
}

/// A classic tracepoint's record, laid out by its tracefs `format` file.
struct Classic<'a>(&'a Format);

impl Source for Classic<'_> {
    fn loc(&self, name: &str) -> Option<FieldLoc> {
        self.0.field(name).map(|f| FieldLoc::new(f.offset, f.size))
    }
}

/// A BTF tracepoint's argument array: argument `i` is the `u64` at `8 * i`.
struct Args(Vec<crate::kernel::btf::Param>);

impl Source for Args {
    fn loc(&self, name: &str) -> Option<FieldLoc> {
        let i = self.0.iter().position(|p| p.name == name)?;
        let size = self.0[i].size.clamp(1, 8) as u16;
        Some(FieldLoc::new((8 * i) as u16, size))
    }
}

/// Fills `out` with the fields `names` from `src`; returns the names that are missing.
fn fill<const N: usize>(
    src: &dyn Source,
    names: [&str; N],
    out: [&mut FieldLoc; N],
) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, slot) in names.into_iter().zip(out) {
        match src.loc(name) {
            Some(loc) => *slot = loc,
            None => missing.push(name.to_string()),
        }
    }
    missing
}

/// Whether a layout is for classic or BTF tracepoints.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Tp,
    Btf,
}

/// Fills one event's layout; returns the names of required fields that are missing.
/// `slab_missing`: why the programs cannot find an object's slab cache from its address (see
/// [`SlabOffsets`]), or `None` when they can: then `kmem_cache_alloc` needs neither the cache
/// nor its name.
fn fill_event(
    event: &str,
    src: &dyn Source,
    mode: Mode,
    slab_missing: Option<&str>,
    l: &mut EventLayouts,
) -> Vec<String> {
    match event {
        "kmalloc" | "kmalloc_node" => {
            let k = if event == "kmalloc" {
                &mut l.kmalloc
            } else {
                &mut l.kmalloc_node
            };
            fill(
                src,
                ["call_site", "ptr", "bytes_req", "bytes_alloc", "gfp_flags"],
                [
                    &mut k.call_site,
                    &mut k.ptr,
                    &mut k.bytes_req,
                    &mut k.bytes_alloc,
                    &mut k.gfp_flags,
                ],
            )
        }
        "kfree" => fill(src, ["ptr"], [&mut l.kfree.ptr]),
        "kmem_cache_alloc" | "kmem_cache_alloc_node" => {
            let k = if event == "kmem_cache_alloc" {
                &mut l.kmem_cache_alloc
            } else {
                &mut l.kmem_cache_alloc_node
            };
            let mut missing = fill(
                src,
                ["call_site", "ptr", "gfp_flags"],
                [&mut k.call_site, &mut k.ptr, &mut k.gfp_flags],
            );
            // The cache comes as a pointer (BTF, 6.1+), as a name (classic, 6.2+), or from
            // the object's page; the sizes from the cache, or from the event.
            let cache = match mode {
                Mode::Btf => fill(src, ["s"], [&mut k.s]),
                Mode::Tp => fill(src, ["name"], [&mut k.name]),
            };
            let from_pointer = mode == Mode::Btf && cache.is_empty();
            if !from_pointer {
                missing.extend(fill(
                    src,
                    ["bytes_req", "bytes_alloc"],
                    [&mut k.bytes_req, &mut k.bytes_alloc],
                ));
                if let (false, Some(why)) = (cache.is_empty(), slab_missing) {
                    missing.push(format!(
                        "{} (and the cache cannot be found from the object's page: {why})",
                        cache.join(", ")
                    ));
                }
            }
            missing
        }
        "kmem_cache_free" => fill(src, ["ptr"], [&mut l.kmem_cache_free.ptr]),
        "mm_page_alloc" => {
            let k = &mut l.mm_page_alloc;
            let first = match mode {
                Mode::Tp => fill(src, ["pfn"], [&mut k.pfn]),
                Mode::Btf => fill(src, ["page"], [&mut k.page]),
            };
            let mut missing = first;
            missing.extend(fill(
                src,
                ["order", "gfp_flags", "migratetype"],
                [&mut k.order, &mut k.gfp_flags, &mut k.migratetype],
            ));
            missing
        }
        "mm_page_free" | "mm_page_free_batched" => {
            let k = if event == "mm_page_free" {
                &mut l.mm_page_free
            } else {
                &mut l.mm_page_free_batched
            };
            // The page is for heap profiles only: without it, frees still count.
            let _ = match mode {
                Mode::Tp => fill(src, ["pfn"], [&mut k.pfn]),
                Mode::Btf => fill(src, ["page"], [&mut k.page]),
            };
            if event == "mm_page_free" {
                fill(src, ["order"], [&mut k.order])
            } else {
                Vec::new()
            }
        }
        "mm_page_alloc_extfrag" => fill(
            src,
            ["fallback_order"],
            [&mut l.mm_page_alloc_extfrag.fallback_order],
        ),
        "alloc_vmap_area" => {
            let k = &mut l.alloc_vmap_area;
            let _ = fill(src, ["addr"], [&mut k.addr]);
            fill(src, ["size", "failed"], [&mut k.size, &mut k.failed])
        }
        "free_vmap_area_noflush" => {
            fill(src, ["va_start"], [&mut l.free_vmap_area_noflush.va_start])
        }
        "percpu_free_percpu" => fill(src, ["ptr"], [&mut l.percpu_free_percpu.ptr]),
        "purge_vmap_area_lazy" => fill(src, ["npurged"], [&mut l.purge_vmap_area_lazy.npurged]),
        "percpu_alloc_percpu" => {
            let k = &mut l.percpu_alloc_percpu;
            // Before 5.14 the event has only the size: see `optional_missing`.
            let _ = fill(
                src,
                ["call_site", "bytes_alloc", "gfp_flags", "ptr"],
                [
                    &mut k.call_site,
                    &mut k.bytes_alloc,
                    &mut k.gfp_flags,
                    &mut k.ptr,
                ],
            );
            fill(src, ["size"], [&mut k.size])
        }
        "mm_compaction_try_to_compact_pages" => fill(
            src,
            ["order"],
            [&mut l.mm_compaction_try_to_compact_pages.order],
        ),
        // Events whose programs read no field.
        "percpu_alloc_percpu_fail" | "mark_victim" => Vec::new(),
        other => vec![format!("(memtrace has no layout for {other})")],
    }
}

/// The layout of `kmem_cache_alloc` or `kmem_cache_alloc_node`.
fn cache_layout<'a>(l: &'a EventLayouts, event: &str) -> &'a memtrace_common::KmemCacheAllocLayout {
    if event == "kmem_cache_alloc_node" {
        &l.kmem_cache_alloc_node
    } else {
        &l.kmem_cache_alloc
    }
}

/// What an event's program does without, where the kernel's event lacks optional fields.
fn optional_missing(event: &str, src: &dyn Source) -> Option<String> {
    match event {
        "percpu_alloc_percpu" => {
            let gone: Vec<&str> = ["call_site", "bytes_alloc", "gfp_flags"]
                .into_iter()
                .filter(|n| src.loc(n).is_none())
                .collect();
            (!gone.is_empty()).then(|| {
                format!(
                    "the event lacks {} (before Linux 5.14): percpu sizes count as requested, \
                     under gfp \"other\", with no calling function",
                    gone.join(", ")
                )
            })
        }
        _ => None,
    }
}

fn describe(missing: Vec<String>) -> Option<String> {
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "this kernel's event lacks field(s) {}",
            missing.join(", ")
        ))
    }
}

/// `struct kmem_cache` member offsets the BTF `kmem_cache_alloc` program dereferences.
fn kmem_cache_offsets(btf: &Btf, out: &mut KmemCacheOffsets) -> Option<String> {
    let Some(members) = btf.struct_members("kmem_cache") else {
        return Some("no struct kmem_cache in the kernel's BTF".into());
    };
    let mut missing = Vec::new();
    for (name, slot) in [
        ("name", &mut out.name),
        ("object_size", &mut out.object_size),
        ("size", &mut out.size),
    ] {
        match members.iter().find(|m| m.name == name) {
            Some(m) if (1..=8).contains(&m.size) && m.byte_offset <= u16::MAX as u32 => {
                *slot = FieldLoc::new(m.byte_offset as u16, m.size as u16)
            }
            _ => missing.push(name),
        }
    }
    if missing.is_empty() {
        None
    } else {
        Some(format!("struct kmem_cache lacks {}", missing.join(", ")))
    }
}

/// The offsets of the chain from `task_struct` to its memory cgroup's kernfs id (see
/// [`MemcgOffsets`]), or what this kernel's BTF lacks for it.
pub fn memcg_offsets(btf: &Btf) -> Result<MemcgOffsets, String> {
    let member = |st: &str, name: &str| -> Result<crate::kernel::btf::Member, String> {
        btf.struct_members(st)
            .ok_or_else(|| format!("no struct {st} in the kernel's BTF"))?
            .into_iter()
            .find(|m| m.name == name)
            .ok_or_else(|| format!("struct {st} has no member {name}"))
    };
    let pointer = |st: &str, name: &str| -> Result<u32, String> {
        let m = member(st, name)?;
        if m.size != 8 || m.integer {
            return Err(format!("{st}.{name} is not a pointer"));
        }
        Ok(m.byte_offset)
    };
    let memory = btf
        .enum_values("cgroup_subsys_id")
        .and_then(|v| v.into_iter().find(|(n, _)| n == "memory_cgrp_id"))
        .map(|(_, v)| v)
        .ok_or("no memory_cgrp_id in the kernel's BTF (memory cgroups not built in)")?;
    let subsys = member("css_set", "subsys")?;
    if memory < 0 || (memory as u64 + 1) * 8 > u64::from(subsys.size) {
        return Err(format!(
            "css_set.subsys ({} B) has no slot {memory} (memory_cgrp_id)",
            subsys.size
        ));
    }
    // Before Linux 5.5 the id was a union of a 32-bit inode and a generation; only the
    // 64-bit integer id equals the directory's inode number.
    let id = member("kernfs_node", "id")?;
    if id.size != 8 || !id.integer {
        return Err("kernfs_node.id is not a 64-bit integer (a kernel before 5.5)".into());
    }
    Ok(MemcgOffsets {
        task_cgroups: pointer("task_struct", "cgroups")?,
        css_set_memory: subsys.byte_offset + 8 * memory as u32,
        css_cgroup: pointer("cgroup_subsys_state", "cgroup")?,
        cgroup_kn: pointer("cgroup", "kn")?,
        kernfs_node_id: id.byte_offset,
        _pad: 0,
    })
}

/// `task_struct.comm`'s offset, when the kernel's BTF has it as 16 bytes (else 0: the
/// programs then copy the name with the `bpf_get_current_comm` helper).
pub fn task_comm_offset(btf: &Btf) -> u32 {
    btf.struct_members("task_struct")
        .and_then(|m| m.into_iter().find(|m| m.name == "comm"))
        .filter(|m| m.size == 16 && m.byte_offset > 0)
        .map_or(0, |m| m.byte_offset)
}

/// Whether the kernel has the `bpf_get_current_task_btf` helper (Linux 5.11+): its BTF's
/// `enum bpf_func_id` lists every helper it has.
pub fn has_task_btf_helper(btf: &Btf) -> bool {
    btf.enum_values("bpf_func_id")
        .is_some_and(|v| v.iter().any(|(n, _)| n == "BPF_FUNC_get_current_task_btf"))
}

/// Resolves every event's layout from what this kernel offers.
pub fn resolve(btf: Option<&Btf>, tracefs: Option<&Path>) -> Resolved {
    let mut r = Resolved {
        layouts: Layouts::ZERO,
        ..Default::default()
    };
    let cache_offsets = btf.and_then(|b| kmem_cache_offsets(b, &mut r.layouts.kmem_cache));
    r.layouts.task.task_btf = u32::from(btf.is_some_and(has_task_btf_helper));
    if r.layouts.task.task_btf != 0 {
        r.layouts.task.comm = btf.map_or(0, task_comm_offset);
    }
    match btf.map(memcg_offsets) {
        Some(Ok(o)) => r.layouts.memcg = o,
        Some(Err(why)) => r.memcg_missing = Some(why),
        None => r.memcg_missing = Some("kernel BTF unavailable".into()),
    }
    // Only where an event lacks the cache are kallsyms read and kernel addresses handed over.
    let slab = if needs_slab_lookup(btf, tracefs) {
        btf.map(|b| slab_offsets(b, &crate::kernel::kallsyms_addresses))
    } else {
        Some(Err("not needed: the events carry the cache".to_string()))
    };
    match slab {
        Some(Ok(o)) => r.layouts.slab = o,
        Some(Err(why)) => r.slab_missing = Some(why),
        None => r.slab_missing = Some("kernel BTF unavailable".into()),
    }
    let slab_missing = r.slab_missing.clone();
    let slab_missing = slab_missing.as_deref();
    for spec in PROBES {
        let (category, event) = (spec.category, spec.event);
        let is_cache = event.starts_with("kmem_cache_alloc");
        match tracefs.map(|dir| Format::read(dir, category, event)) {
            None => {
                r.tp_missing.insert(event, "tracefs not mounted".into());
            }
            Some(Err(e)) => {
                r.tp_missing.insert(event, e.to_string());
            }
            Some(Ok(fmt)) => {
                r.present.insert(event);
                let src = Classic(&fmt);
                let missing = fill_event(event, &src, Mode::Tp, slab_missing, &mut r.layouts.tp);
                if let Some(why) = describe(missing) {
                    r.tp_missing.insert(event, why);
                } else if is_cache && !cache_layout(&r.layouts.tp, event).name.is_present() {
                    if let Some(why) = &cache_offsets {
                        r.tp_missing.insert(event, why.clone());
                    }
                }
                if let Some(why) = optional_missing(event, &src) {
                    r.degraded.insert(event, why);
                }
            }
        }
        match btf.map(|b| b.tracepoint_args(event)) {
            None => {
                r.btf_missing.insert(event, "kernel BTF unavailable".into());
            }
            Some(None) => {
                r.btf_missing
                    .insert(event, format!("no btf_trace_{event} in the kernel's BTF"));
            }
            Some(Some(args)) => {
                r.present.insert(event);
                let unnamed = !args.is_empty() && args.iter().all(|a| a.name.is_empty());
                let src = Args(args);
                let missing = fill_event(event, &src, Mode::Btf, slab_missing, &mut r.layouts.btf);
                if unnamed && !missing.is_empty() {
                    r.btf_missing.insert(
                        event,
                        "this kernel's BTF does not name the tracepoint's arguments \
                         (no __bpf_trace_ functions, as before Linux 5.11)"
                            .into(),
                    );
                } else if let Some(why) = describe(missing) {
                    r.btf_missing.insert(event, why);
                } else if is_cache {
                    if let Some(why) = &cache_offsets {
                        r.btf_missing.insert(event, why.clone());
                    }
                }
                if let Some(why) = optional_missing(event, &src) {
                    r.degraded.entry(event).or_insert(why);
                }
            }
        }
        if let Some((_, function)) = spec.fexit {
            match btf.map(|b| vmap_fexit_layout(b, function)) {
                None => {
                    r.fexit_missing
                        .insert(event, "kernel BTF unavailable".into());
                }
                Some(Err(why)) => {
                    r.fexit_missing.insert(event, why);
                }
                Some(Ok(l)) => r.layouts.vmap_fexit = l,
            }
        }
    }
    r
}

/// Whether some form of `kmem_cache_alloc` this kernel has carries neither the cache (BTF)
/// nor its name (tracefs): then the programs find the cache from the object's page.
fn needs_slab_lookup(btf: Option<&Btf>, tracefs: Option<&Path>) -> bool {
    PROBES
        .iter()
        .filter(|p| p.event.starts_with("kmem_cache_alloc"))
        .any(|p| {
            let classic = tracefs
                .and_then(|d| Format::read(d, p.category, p.event).ok())
                .is_some_and(|f| f.field("name").is_none());
            let typed = btf
                .and_then(|b| b.tracepoint_args(p.event))
                .is_some_and(|a| a.iter().all(|x| x.name != "s"));
            classic || typed
        })
}

/// The fexit program's view of `function` (`alloc_vmap_area(unsigned long size, ...)`): the
/// argument `size` and the return value, which follows the arguments.
fn vmap_fexit_layout(btf: &Btf, function: &str) -> Result<VmapAreaLayout, String> {
    let params = btf
        .function_params(function)
        .ok_or_else(|| format!("no function {function} in the kernel's BTF"))?;
    vmap_layout_of(&params).map_err(|why| format!("{function} {why}"))
}

fn vmap_layout_of(params: &[crate::kernel::btf::Param]) -> Result<VmapAreaLayout, String> {
    let size = params
        .iter()
        .position(|p| p.name == "size" && p.size == 8)
        .ok_or("has no 8-byte argument size")?;
    // fexit programs see at most 12 arguments and the return value.
    if params.len() > 11 {
        return Err("has too many arguments for fexit".into());
    }
    Ok(VmapAreaLayout {
        addr: FieldLoc::ABSENT,
        size: FieldLoc::new(8 * size as u16, 8),
        failed: FieldLoc::ABSENT,
        ret: FieldLoc::new(8 * params.len() as u16, 8),
    })
}

/// Finds the addresses of kernel symbols, in the order asked (see
/// [`crate::kernel::kallsyms_addresses`]).
pub type SymbolLookup = dyn Fn(&[&str]) -> Result<Vec<u64>, String>;

/// Where the programs find an object's slab cache (see [`SlabOffsets`]), from the kernel's
/// BTF and the addresses of `page_offset_base` and `vmemmap_base` (`lookup` reads them from
/// kallsyms), or why they cannot.
pub fn slab_offsets(btf: &Btf, lookup: &SymbolLookup) -> Result<SlabOffsets, String> {
    let page_size = btf
        .struct_size("page")
        .ok_or("no struct page in the kernel's BTF")?;
    let compound_head = btf
        .member_deep("page", "compound_head")
        .ok_or("struct page has no compound_head")?;
    // Linux 5.17 moved the slab's fields from struct page into struct slab, which overlays it.
    let slab_cache = btf
        .member_deep("slab", "slab_cache")
        .filter(|_| btf.struct_size("slab").is_some_and(|s| s <= page_size))
        .or_else(|| btf.member_deep("page", "slab_cache"))
        .ok_or("neither struct slab nor struct page has slab_cache")?;
    if compound_head.size != 8 || slab_cache.size != 8 {
        return Err("struct page's compound_head or slab_cache is not 8 bytes".into());
    }
    let addrs = lookup(&["page_offset_base", "vmemmap_base"])?;
    let page = crate::kernel::page_size();
    Ok(SlabOffsets {
        page_offset_base: addrs[0],
        vmemmap_base: addrs[1],
        struct_page_size: page_size,
        compound_head: compound_head.byte_offset,
        slab_cache: slab_cache.byte_offset,
        page_shift: page.trailing_zeros(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::Param;

    #[test]
    fn classic_layout_from_format() {
        let fmt = Format::parse(crate::kernel::tracefs::tests_support::KMALLOC_FORMAT).unwrap();
        let mut l = EventLayouts::default();
        assert!(
            fill_event("kmalloc", &Classic(&fmt), Mode::Tp, Some("unknown"), &mut l).is_empty()
        );
        assert_eq!(l.kmalloc.ptr, FieldLoc::new(16, 8));
        assert_eq!(l.kmalloc.gfp_flags, FieldLoc::new(40, 8));
    }

    /// Every captured 6.18 format file yields a complete classic layout.
    #[test]
    fn every_captured_format_resolves() {
        // (6.18 has no kmalloc_node: those events exist only before 6.1.)
        for spec in PROBES.iter().filter(|s| s.only_on.is_none()) {
            let path = format!(
                "{}/testdata/linux-6.18/{}_{}.format",
                env!("CARGO_MANIFEST_DIR"),
                spec.category,
                spec.event
            );
            let text = std::fs::read_to_string(&path).unwrap();
            let fmt = Format::parse(&text).unwrap();
            let mut l = EventLayouts::default();
            let missing = fill_event(
                spec.event,
                &Classic(&fmt),
                Mode::Tp,
                Some("unknown"),
                &mut l,
            );
            assert!(missing.is_empty(), "{}: {missing:?}", spec.event);
        }
        // The heap profile's addresses, which no event requires.
        let layout = |event: &str| {
            let path = format!(
                "{}/testdata/linux-6.18/{event}.format",
                env!("CARGO_MANIFEST_DIR")
            );
            let fmt = Format::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
            let mut l = EventLayouts::default();
            let name = event.split_once('_').unwrap().1;
            assert!(fill_event(name, &Classic(&fmt), Mode::Tp, None, &mut l).is_empty());
            l
        };
        assert!(layout("kmem_mm_page_free").mm_page_free.pfn.is_present());
        assert!(
            layout("kmem_mm_page_free_batched")
                .mm_page_free_batched
                .pfn
                .is_present()
        );
        assert!(
            layout("vmalloc_alloc_vmap_area")
                .alloc_vmap_area
                .addr
                .is_present()
        );
        assert!(
            layout("percpu_percpu_alloc_percpu")
                .percpu_alloc_percpu
                .ptr
                .is_present()
        );
        let text = include_str!("../../testdata/linux-6.18/kmem_kmem_cache_alloc.format");
        let mut l = EventLayouts::default();
        fill_event(
            "kmem_cache_alloc",
            &Classic(&Format::parse(text).unwrap()),
            Mode::Tp,
            Some("unknown"),
            &mut l,
        );
        assert_eq!(l.kmem_cache_alloc.name, FieldLoc::new(24, 4));
        let text = include_str!("../../testdata/linux-6.18/kmem_mm_page_alloc.format");
        fill_event(
            "mm_page_alloc",
            &Classic(&Format::parse(text).unwrap()),
            Mode::Tp,
            Some("unknown"),
            &mut l,
        );
        assert_eq!(l.mm_page_alloc.pfn, FieldLoc::new(8, 8));
        assert_eq!(l.mm_page_alloc.migratetype, FieldLoc::new(32, 4));
    }

    /// Linux 5.10's classic kmem_cache_alloc has neither the cache nor its name: usable only
    /// where the programs can find the cache from the object's page. Its percpu event has
    /// only the size: usable, with what it lacks reported.
    #[test]
    fn linux_5_10_formats() {
        let text = include_str!("../../testdata/linux-5.10/kmem_kmem_cache_alloc.format");
        let fmt = Format::parse(text).unwrap();
        let mut l = EventLayouts::default();
        let missing = fill_event(
            "kmem_cache_alloc",
            &Classic(&fmt),
            Mode::Tp,
            Some("unknown"),
            &mut l,
        );
        assert_eq!(missing.len(), 1, "{missing:?}");
        assert!(missing[0].starts_with("name"), "{missing:?}");
        let mut l = EventLayouts::default();
        assert!(fill_event("kmem_cache_alloc", &Classic(&fmt), Mode::Tp, None, &mut l).is_empty());
        assert_eq!(l.kmem_cache_alloc.bytes_alloc, FieldLoc::new(32, 8));
        assert!(!l.kmem_cache_alloc.name.is_present());
        let text = include_str!("../../testdata/linux-5.10/percpu_percpu_alloc_percpu.format");
        let fmt = Format::parse(text).unwrap();
        let src = Classic(&fmt);
        assert!(
            fill_event(
                "percpu_alloc_percpu",
                &src,
                Mode::Tp,
                Some("unknown"),
                &mut l
            )
            .is_empty()
        );
        assert!(!l.percpu_alloc_percpu.gfp_flags.is_present());
        let why = optional_missing("percpu_alloc_percpu", &src).expect("degraded");
        assert!(why.contains("call_site, bytes_alloc, gfp_flags"), "{why}");
    }

    /// The fexit layout of `alloc_vmap_area(size, align, vstart, vend, node, gfp_mask)`:
    /// `size` is argument 0, the return value follows the six arguments.
    #[test]
    fn vmap_fexit_layout_from_the_prototype() {
        let p = |n: &str| Param {
            name: n.into(),
            size: 8,
        };
        let params = ["size", "align", "vstart", "vend", "node", "gfp_mask"].map(p);
        assert_eq!(
            vmap_layout_of(&params).unwrap(),
            VmapAreaLayout {
                addr: FieldLoc::ABSENT,
                size: FieldLoc::new(0, 8),
                failed: FieldLoc::ABSENT,
                ret: FieldLoc::new(48, 8),
            }
        );
        assert!(vmap_layout_of(&["align"].map(p)).is_err());
    }

    fn param(name: &str, size: u32) -> Param {
        Param {
            name: name.into(),
            size,
        }
    }

    /// The arguments of the BTF tracepoints of the hot events, as Linux 6.1 and later declare
    /// them (`btf_trace_<event>` without its leading context pointer).
    fn current_prototypes() -> [(&'static str, Vec<Param>); 6] {
        let p = param;
        [
            (
                "kmalloc",
                vec![
                    p("call_site", 8),
                    p("ptr", 8),
                    p("bytes_req", 8),
                    p("bytes_alloc", 8),
                    p("gfp_flags", 4),
                    p("node", 4),
                ],
            ),
            ("kfree", vec![p("call_site", 8), p("ptr", 8)]),
            // kmem_cache_alloc's BTF tracepoint passes the cache, not its name and sizes.
            (
                "kmem_cache_alloc",
                vec![
                    p("call_site", 8),
                    p("ptr", 8),
                    p("s", 8),
                    p("gfp_flags", 4),
                    p("node", 4),
                ],
            ),
            (
                "kmem_cache_free",
                vec![p("call_site", 8), p("ptr", 8), p("s", 8)],
            ),
            (
                "mm_page_alloc",
                vec![
                    p("page", 8),
                    p("order", 4),
                    p("gfp_flags", 4),
                    p("migratetype", 4),
                ],
            ),
            ("mm_page_free", vec![p("page", 8), p("order", 4)]),
        ]
    }

    /// The prototype of one hot event from [`current_prototypes`].
    fn prototype(event: &str) -> Args {
        let (_, args) = current_prototypes()
            .into_iter()
            .find(|(e, _)| *e == event)
            .expect("a hot event");
        Args(args)
    }

    #[test]
    fn btf_layout_from_args_and_missing_fields() {
        let p = param;
        let args = prototype("kmalloc");
        let mut l = EventLayouts::default();
        assert!(fill_event("kmalloc", &args, Mode::Btf, Some("unknown"), &mut l).is_empty());
        assert_eq!(l.kmalloc.gfp_flags, FieldLoc::new(32, 4));
        let old = Args(vec![p("call_site", 8), p("ptr", 8)]);
        let mut l = EventLayouts::default();
        assert_eq!(
            fill_event("kmalloc", &old, Mode::Btf, Some("unknown"), &mut l),
            vec!["bytes_req", "bytes_alloc", "gfp_flags"]
        );
        let args = prototype("kmem_cache_alloc");
        assert!(
            fill_event(
                "kmem_cache_alloc",
                &args,
                Mode::Btf,
                Some("unknown"),
                &mut l
            )
            .is_empty()
        );
        assert_eq!(l.kmem_cache_alloc.s, FieldLoc::new(16, 8));
    }

    /// The fixed-layout programs are chosen where the kernel's prototypes are the ones they
    /// were compiled for (6.1 and later), and not where an argument moved.
    #[test]
    fn fixed_layouts_match_current_prototypes_only() {
        let p = param;
        let mut l = EventLayouts::default();
        for (event, args) in current_prototypes() {
            assert!(fill_event(event, &Args(args), Mode::Btf, Some("unknown"), &mut l).is_empty());
        }
        for spec in PROBES.iter().filter(|s| s.fixed_program.is_some()) {
            assert!(
                spec.fixed_matches(&l),
                "{} has its fixed layout",
                spec.event
            );
        }
        // An argument that moved (here: gfp_flags before the sizes) selects the generic one.
        let moved = Args(vec![
            p("call_site", 8),
            p("ptr", 8),
            p("gfp_flags", 4),
            p("bytes_req", 8),
            p("bytes_alloc", 8),
        ]);
        assert!(fill_event("kmalloc", &moved, Mode::Btf, Some("unknown"), &mut l).is_empty());
        let kmalloc = PROBES.iter().find(|s| s.event == "kmalloc").unwrap();
        assert!(!kmalloc.fixed_matches(&l));
        let no_fixed = PROBES
            .iter()
            .find(|s| s.event == "alloc_vmap_area")
            .unwrap();
        assert!(!no_fixed.fixed_matches(&l));
    }

    /// A BTF blob with just the chain from `task_struct` to `kernfs_node.id`; `old_id`
    /// makes the id a union (as before Linux 5.5), `no_memcg` drops `memory_cgrp_id`.
    fn memcg_btf(old_id: bool, no_memcg: bool) -> Vec<u8> {
        let names = [
            "u64",
            "task_struct",
            "cgroups",
            "css_set",
            "subsys",
            "cgroup_subsys_state",
            "cgroup",
            "kn",
            "kernfs_node",
            "id",
            "cgroup_subsys_id",
            "cpuset_cgrp_id",
            "memory_cgrp_id",
            "kernfs_node_id",
            "ino",
        ];
        let mut strings = vec![0u8];
        let mut at = BTreeMap::new();
        for n in names {
            at.insert(n, strings.len() as u32);
            strings.extend_from_slice(n.as_bytes());
            strings.push(0);
        }
        let s = |n: &str| at[n];
        let (int, ptr, array, st, un, en) = (1u32, 2u32, 3u32, 4u32, 5u32, 6u32);
        let one = |kind: u32| (kind << 24) | 1;
        let id_type = if old_id { 10 } else { 1 };
        let memcg = if no_memcg {
            s("cpuset_cgrp_id")
        } else {
            s("memory_cgrp_id")
        };
        let words: Vec<u32> = [
            vec![s("u64"), int << 24, 8, 64],  // 1: u64
            vec![0, ptr << 24, 0],             // 2: void *
            vec![0, array << 24, 0, 2, 1, 12], // 3: void *[12]
            vec![s("task_struct"), one(st), 64, s("cgroups"), 2, 40 * 8], // 4
            vec![s("css_set"), one(st), 200, s("subsys"), 3, 16 * 8], // 5
            vec![s("cgroup_subsys_state"), one(st), 16, s("cgroup"), 2, 0], // 6
            vec![s("cgroup"), one(st), 64, s("kn"), 2, 32 * 8], // 7
            vec![s("kernfs_node"), one(st), 128, s("id"), id_type, 96 * 8], // 8
            vec![
                s("cgroup_subsys_id"),
                (en << 24) | 2,
                4,
                s("cpuset_cgrp_id"),
                0,
                memcg,
                4,
            ], // 9
            vec![s("kernfs_node_id"), one(un), 8, s("ino"), 1, 0], // 10
        ]
        .concat();
        let types: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        crate::kernel::btf::with_header(&types, &strings)
    }

    #[test]
    fn memcg_offsets_follow_the_chain_and_refuse_what_does_not_fit() {
        let btf = Btf::parse(&memcg_btf(false, false)).unwrap();
        assert_eq!(
            memcg_offsets(&btf),
            Ok(MemcgOffsets {
                task_cgroups: 40,
                css_set_memory: 16 + 8 * 4,
                css_cgroup: 0,
                cgroup_kn: 32,
                kernfs_node_id: 96,
                _pad: 0,
            })
        );
        let old = Btf::parse(&memcg_btf(true, false)).unwrap();
        let why = memcg_offsets(&old).unwrap_err();
        assert!(why.contains("kernfs_node.id"), "{why}");
        let none = Btf::parse(&memcg_btf(false, true)).unwrap();
        let why = memcg_offsets(&none).unwrap_err();
        assert!(why.contains("memory_cgrp_id"), "{why}");
        // And resolve() reports it instead of failing.
        let r = resolve(Some(&old), None);
        assert!(r.memcg_missing().is_some());
        assert_eq!(r.layouts.memcg, MemcgOffsets::default());
    }
}
