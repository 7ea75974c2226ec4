//! Notable events (failures, large or high-order allocations), sent to userspace through the
//! ring buffer.

use core::ffi::c_void;

use aya_ebpf::{
    bindings::BPF_F_REUSE_STACKID,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_smp_processor_id, bpf_ktime_get_ns,
    },
    programs::{TracePointContext, tracing::StackIdContext},
};
use memtrace_common::{ATTR_STACKS, Allocator, Counter, NotableEvent};

use crate::{
    globals::attribution,
    maps::{EVENTS, STACKS},
    tables::bump,
};

/// The allocation facts a notable event carries.
#[derive(Clone, Copy)]
pub(crate) struct Notable {
    pub(crate) allocator: Allocator,
    pub(crate) call_site: u64,
    pub(crate) bytes_req: u64,
    pub(crate) bytes_alloc: u64,
    pub(crate) gfp: u64,
    pub(crate) order: u32,
    pub(crate) flags: u32,
}

/// Sends a notable event; when the ring buffer is full it is counted as lost instead.
#[inline(always)]
pub(crate) fn emit(ctx: *mut c_void, n: Notable) {
    let stack_id = if attribution() & ATTR_STACKS != 0 {
        // The context pointer is the program's own, whichever kind it is.
        // Identical stacks share an id; on a hash collision the newer stack wins (the map
        // stays bounded and userspace never has to delete).
        match TracePointContext::new(ctx).get_stackid(&STACKS, BPF_F_REUSE_STACKID as u64) {
            Ok(id) => id as i32,
            Err(_) => -1,
        }
    } else {
        -1
    };
    let Some(mut entry) = EVENTS.reserve::<NotableEvent>(0) else {
        bump(Counter::RingbufFull);
        return;
    };
    let id = bpf_get_current_pid_tgid();
    // SAFETY: the helpers take no pointers we own.
    let (ts_ns, cpu) = unsafe { (bpf_ktime_get_ns(), bpf_get_smp_processor_id()) };
    entry.write(NotableEvent {
        ts_ns,
        call_site: n.call_site,
        bytes_req: n.bytes_req,
        bytes_alloc: n.bytes_alloc,
        gfp: n.gfp,
        tgid: (id >> 32) as u32,
        tid: id as u32,
        cpu,
        allocator: n.allocator as u32,
        order: n.order,
        flags: n.flags,
        stack_id,
        _pad: 0,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    });
    entry.submit(0);
}
