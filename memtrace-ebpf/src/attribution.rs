//! Attribution of successful allocations: to their call site, the allocating task's name
//! and its memory cgroup, as far as userspace turned each on (`ATTRIBUTION`).

use aya_ebpf::{
    helpers::{bpf_get_current_task, bpf_get_current_task_btf, bpf_probe_read_kernel},
    maps::PerCpuHashMap,
};
use memtrace_common::{
    ATTR_CALLSITES, ATTR_CGROUPS, ATTR_COMMS, Allocator, AllocatorTables, CGROUP_OVERFLOW,
    CGROUP_UNREADABLE, CgroupKey, CommKey, SiteKey, Usage,
};

use crate::{
    globals::{LAYOUTS, attribution, global},
    maps::{CALLSITES, CGROUPS, COMMS},
    tables::{slot, table_value},
};

/// Counts a successful allocation of `bytes` for its call site (when the tracepoint has one),
/// for the current task's name and for its memory cgroup, as far as attribution is on.
/// `btf`: the program is a BTF tracepoint.
#[inline(always)]
pub(crate) fn attribute(
    allocator: Allocator,
    t: Option<*mut AllocatorTables>,
    call_site: u64,
    bytes: u64,
    btf: bool,
) {
    let on = attribution();
    if on & ATTR_CALLSITES != 0 && call_site != 0 {
        // SAFETY: the address of a field of this CPU's tables; nothing is read here.
        let sites = t.map(|t| unsafe { &raw mut (*t).sites });
        if let Some((p, _)) = table_value(sites, [call_site]) {
            add_usage(p, bytes);
            return attribute_rest(allocator, t, bytes, btf, on);
        }
        let key = SiteKey {
            allocator: allocator as u32,
            _pad: 0,
            call_site,
        };
        let overflow = SiteKey {
            call_site: 0,
            ..key
        };
        count_usage(&CALLSITES, key, overflow, bytes);
    }
    attribute_rest(allocator, t, bytes, btf, on);
}

/// The task-name and memory-cgroup parts of [`attribute`].
#[inline(always)]
fn attribute_rest(
    allocator: Allocator,
    t: Option<*mut AllocatorTables>,
    bytes: u64,
    btf: bool,
    on: u32,
) {
    if on & ATTR_COMMS != 0 {
        let words = current_comm(btf);
        // SAFETY: the address of a field of this CPU's tables; nothing is read here.
        let comms = t.map(|t| unsafe { &raw mut (*t).comms });
        if let Some((p, _)) = table_value(comms, words) {
            add_usage(p, bytes);
        } else {
            let key = CommKey {
                allocator: allocator as u32,
                _pad: 0,
                comm: words,
            };
            let overflow = CommKey {
                comm: [0; 2],
                ..key
            };
            count_usage(&COMMS, key, overflow, bytes);
        }
    }
    if on & ATTR_CGROUPS != 0 {
        let key = CgroupKey {
            allocator: allocator as u32,
            _pad: 0,
            cgroup: memcg_id(btf),
        };
        let overflow = CgroupKey {
            cgroup: CGROUP_OVERFLOW,
            ..key
        };
        count_usage(&CGROUPS, key, overflow, bytes);
    }
}

/// Adds one allocation of `bytes` to a [`Usage`].
#[inline(always)]
fn add_usage(p: *mut Usage, bytes: u64) {
    // SAFETY: a per-CPU value only this program writes.
    unsafe {
        (*p).allocations += 1;
        (*p).bytes += bytes;
    }
}

/// Counts one allocation of `bytes` in `key`'s per-CPU [`Usage`] of `map` (or its overflow).
#[inline(always)]
fn count_usage<K: Copy>(map: &PerCpuHashMap<K, Usage>, key: K, overflow: K, bytes: u64) {
    if let Some(p) = slot::<_, Usage>(map, key, overflow) {
        // SAFETY: per-CPU value.
        unsafe {
            (*p).allocations += 1;
            (*p).bytes += bytes;
        }
    }
}

/// The current task's name as two words (its 16 bytes, NUL-padded). A BTF program loads
/// them from `task_struct.comm` (offset from BTF; the verifier checks the loads): no helper
/// copy. Otherwise `bpf_get_current_comm` copies it.
#[inline(always)]
fn current_comm(btf: bool) -> [u64; 2] {
    let off = global(&LAYOUTS.task.comm) as usize;
    if btf && off != 0 {
        // SAFETY: the helper takes no arguments; `off` is `task_struct.comm`'s offset in
        // this kernel's BTF, a 16-byte member: the verifier checks both loads against it.
        unsafe {
            let task = bpf_get_current_task_btf() as *const u8;
            return [
                core::ptr::read_volatile(task.wrapping_add(off) as *const u64),
                core::ptr::read_volatile(task.wrapping_add(off + 8) as *const u64),
            ];
        }
    }
    // The helper writes the name straight into two words: a byte array read as words would
    // make the compiler split the words of the load path above into bytes too.
    let mut words = [0u64; 2];
    // SAFETY: the helper writes at most 16 bytes into the 16-byte buffer (zeroed on failure).
    unsafe {
        aya_ebpf::helpers::generated::bpf_get_current_comm(words.as_mut_ptr().cast(), 16);
    }
    words
}

/// The current task's memory cgroup id (its cgroupfs directory's inode number), read through
/// the BTF offsets in `LAYOUTS.memcg`: task → css_set → memory css → cgroup → kernfs node →
/// id. [`CGROUP_UNREADABLE`] if a link cannot be read. Only paid with [`ATTR_CGROUPS`] on.
///
/// A BTF tracepoint (`btf`) gets a BTF-typed task from `bpf_get_current_task_btf` and follows
/// the links with plain loads, which the verifier checks against the kernel's BTF and turns
/// into fault-safe loads: no helper call per link. A classic tracepoint may not have typed
/// pointers and reads each link with `bpf_probe_read_kernel` (five helper calls). `btf` is a
/// constant in each program, so each keeps only its own way.
#[inline(always)]
fn memcg_id(btf: bool) -> u64 {
    let off = global(&LAYOUTS.memcg);
    let links = [
        off.task_cgroups,
        off.css_set_memory,
        off.css_cgroup,
        off.cgroup_kn,
    ];
    let task_btf = global(&LAYOUTS.task.task_btf) != 0;
    let id = if btf && task_btf {
        // SAFETY: the helper takes no arguments.
        let mut p = unsafe { bpf_get_current_task_btf() } as *const u8;
        for o in links {
            // SAFETY: `p` is a BTF-typed kernel pointer and `o` the offset of one of its
            // members from the same BTF: the verifier checks the load and makes a fault
            // yield 0.
            let next =
                unsafe { core::ptr::read_volatile(p.wrapping_add(o as usize) as *const u64) };
            if next == 0 {
                return CGROUP_UNREADABLE;
            }
            p = next as *const u8;
        }
        // SAFETY: as above, the kernfs node's id member.
        unsafe {
            core::ptr::read_volatile(p.wrapping_add(off.kernfs_node_id as usize) as *const u64)
        }
    } else {
        // SAFETY: the helper takes no arguments.
        let mut p = unsafe { bpf_get_current_task() } as *const u8;
        for o in links {
            // SAFETY: bpf_probe_read_kernel checks the address; a failed read ends the chain.
            match unsafe { bpf_probe_read_kernel(p.wrapping_add(o as usize) as *const u64) } {
                Ok(next) if next != 0 => p = next as *const u8,
                _ => return CGROUP_UNREADABLE,
            }
        }
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(p.wrapping_add(off.kernfs_node_id as usize) as *const u64) }
            .unwrap_or(CGROUP_UNREADABLE)
    };
    if id == CGROUP_OVERFLOW {
        CGROUP_UNREADABLE
    } else {
        id
    }
}
