//! Notable events (failures, large and high-order allocations) from the kernel's ring
//! buffer: decoding and draining. The trace view and the daemon read them from here.

use aya::maps::{MapData, RingBuf};
use memtrace_common::{Allocator, EVENT_FAILED, NotableEvent};
use tokio::io::{Interest, unix::AsyncFd};

/// Decodes one ring-buffer record; `None` if it is too short (a corrupt record).
pub fn decode(bytes: &[u8]) -> Option<NotableEvent> {
    if bytes.len() < std::mem::size_of::<NotableEvent>() {
        return None;
    }
    // SAFETY: NotableEvent is #[repr(C)] plain integers, valid for any bit pattern; the
    // length is checked and the read is unaligned-safe.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<NotableEvent>()) })
}

/// The kind of a notable event, for counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    Failure,
    Large,
}

impl Kind {
    pub fn of(e: &NotableEvent) -> Kind {
        if e.flags & EVENT_FAILED != 0 {
            Kind::Failure
        } else {
            Kind::Large
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Kind::Failure => "failure",
            Kind::Large => "large",
        }
    }
}

/// The text of a NUL-padded kernel name (a task's comm, a slab cache's name): the bytes
/// before the first NUL, which end it (what follows is not part of it).
pub fn nul_terminated(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}

/// The process name of an event.
pub fn comm(e: &NotableEvent) -> String {
    nul_terminated(&e.comm)
}

/// The allocator of an event.
pub fn allocator(e: &NotableEvent) -> Option<Allocator> {
    Allocator::from_u32(e.allocator)
}

/// The ring buffer, registered with tokio so that its reader can await new records.
pub fn poll(ring: RingBuf<MapData>) -> anyhow::Result<AsyncFd<RingBuf<MapData>>> {
    // SAFETY: the ring buffer owns its fd, and the AsyncFd owns the ring buffer: the fd stays
    // open and the same for the registration's whole life.
    unsafe { AsyncFd::register_with_interest(ring, Interest::READABLE) }
        .map_err(|e| anyhow::anyhow!("cannot poll the events ring buffer: {e}"))
}

/// Reads every record currently in the ring buffer, without blocking.
pub fn drain(ring: &mut RingBuf<MapData>, mut each: impl FnMut(NotableEvent)) -> usize {
    let mut n = 0;
    while let Some(item) = ring.next() {
        match decode(&item) {
            Some(e) => each(e),
            None => tracing::warn!(len = item.len(), "short ring-buffer record skipped"),
        }
        n += 1;
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_and_rejects_short_records() {
        let mut e = NotableEvent {
            ts_ns: 1,
            call_site: 0,
            bytes_req: 100,
            bytes_alloc: 128,
            gfp: 0xcc0,
            tgid: 10,
            tid: 11,
            cpu: 1,
            allocator: Allocator::Kmalloc as u32,
            order: 0,
            flags: EVENT_FAILED,
            stack_id: -1,
            _pad: 0,
            comm: [0; 16],
        };
        e.comm[..4].copy_from_slice(b"test");
        let bytes: Vec<u8> = {
            let p = &e as *const NotableEvent as *const u8;
            // SAFETY: reading the bytes of a plain #[repr(C)] value.
            unsafe { std::slice::from_raw_parts(p, std::mem::size_of::<NotableEvent>()) }.to_vec()
        };
        let d = decode(&bytes).unwrap();
        assert_eq!(d, e);
        assert_eq!(comm(&d), "test");
        assert_eq!(Kind::of(&d), Kind::Failure);
        assert_eq!(allocator(&d), Some(Allocator::Kmalloc));
        assert!(decode(&bytes[..bytes.len() - 1]).is_none());
    }
}
