//! Where older kernels of the matrix give the allocator comparisons' reference in another
//! form: no field, another call site, caches without names, no vmalloc tracepoints.

use std::collections::HashMap;

use super::ftrace::TraceEvent;

/// Whether this kernel's `category:event` tracepoint has the field `field`.
pub fn event_has_field(category: &str, event: &str, field: &str) -> bool {
    let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
    memtrace::kernel::tracefs::Format::read(&tracefs, category, event)
        .is_ok_and(|f| f.field(field).is_some())
}

/// Whether `function` is where setxattr's value copy is allocated: `vmemdup_user` on
/// current kernels; before 6.x's allocation-profiling rework the kmalloc event's call site is
/// the kvmalloc inside it.
pub fn is_vmemdup_site(function: &str) -> bool {
    // 5.10's setxattr calls kvmalloc itself, inlined; elsewhere the kvmalloc behind
    // vmemdup_user is the call site for sizes it sends to kmalloc_node (6.12:
    // __kvmalloc_node_noprof).
    function == "vmemdup_user" || function == "setxattr" || function.contains("kvmalloc_node")
}

/// Checks memtrace's per-cache counts `got` where the kernel's event names no cache (before
/// 6.2): together they equal ftrace's `total` (allocations, bytes requested, bytes allocated),
/// every cache is named, and each cache's bytes per object are that cache's own object size
/// (`/sys/kernel/slab/<name>/slab_size`), so each allocation landed under its own cache.
pub fn assert_caches_without_names(
    got: &std::collections::BTreeMap<String, (u64, u64, u64)>,
    total: &(u64, u64, u64),
) {
    let sum = got
        .values()
        .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    assert_eq!(&sum, total, "all caches together differ from ftrace");
    for (name, (n, _, allocated)) in got {
        assert!(
            name != "unknown" && name != "other",
            "unnamed cache: {got:?}"
        );
        let path = format!("/sys/kernel/slab/{name}/slab_size");
        let size: u64 = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .expect("slab_size");
        assert_eq!(allocated / n, size, "{name}: bytes per object vs {path}");
    }
}

/// The ftrace group of the kprobe events the tests define as references where a kernel has
/// no tracepoint (vmalloc before 6.2).
pub const KPROBE_GROUP: &str = "memtrace_test";
/// The kprobe events on `alloc_vmap_area()`: its entry (with `size`) and its return.
pub const VMAP_KPROBES: [&str; 2] = ["alloc_vmap_area", "alloc_vmap_area_ret"];

/// Defines [`VMAP_KPROBES`] (once): the reference for vmalloc on kernels without the
/// vmalloc tracepoints, the function memtrace's fexit program watches.
pub fn define_vmap_kprobes() {
    let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
    if tracefs
        .join("events")
        .join(KPROBE_GROUP)
        .join(VMAP_KPROBES[0])
        .is_dir()
    {
        return;
    }
    let defs = format!(
        "p:{KPROBE_GROUP}/{} alloc_vmap_area size=%di:u64\nr:{KPROBE_GROUP}/{} alloc_vmap_area ret=$retval:x64\n",
        VMAP_KPROBES[0], VMAP_KPROBES[1]
    );
    let path = tracefs.join("kprobe_events");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, defs.as_bytes())
        .unwrap_or_else(|e| panic!("define kprobes in {}: {e}", path.display()));
}

/// `events` with each pair of [`VMAP_KPROBES`] events (one thread's, in order) turned into
/// one `alloc_vmap_area` event with the tracepoint's `size` and `failed` fields.
pub fn vmap_events_from_kprobes(events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    let mut pending: HashMap<u32, Vec<u64>> = HashMap::new();
    for e in events {
        if e.name == VMAP_KPROBES[0] {
            pending.entry(e.pid).or_default().push(e.u64("size"));
        } else if e.name == VMAP_KPROBES[1] {
            let Some(size) = pending.get_mut(&e.pid).and_then(Vec::pop) else {
                continue; // entered before the window opened
            };
            let ret = e.str("ret");
            let ret = u64::from_str_radix(ret.trim_start_matches("0x"), 16)
                .unwrap_or_else(|_| panic!("kretprobe ret={ret} is not hex"));
            let failed = ret == 0 || ret > (-4096i64) as u64;
            out.push(TraceEvent {
                pid: e.pid,
                name: "alloc_vmap_area".into(),
                fields: HashMap::from([
                    ("size".to_string(), size.to_string()),
                    ("failed".to_string(), u64::from(failed).to_string()),
                ]),
            });
        } else {
            out.push(e);
        }
    }
    out
}
