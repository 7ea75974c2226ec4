//! The ring buffer's notable event.

// Doc links name other modules' items.
#[cfg(doc)]
use crate::*;

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

// SAFETY: #[repr(C)], made only of integers, with explicit padding.
#[cfg(feature = "user")]
unsafe impl aya::Pod for NotableEvent {}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_is_stable() {
        assert_eq!(core::mem::size_of::<NotableEvent>(), 5 * 8 + 8 * 4 + 16);
    }
}
