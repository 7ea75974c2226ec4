//! Reading an event's fields, whichever way the program is attached ([`Kind`]), and members
//! of the kernel structs its arguments point to.

use core::ffi::c_void;

use aya_ebpf::helpers::bpf_probe_read_kernel;
use memtrace_common::{AllocatorTables, FieldLoc, RECORD_BYTES};

/// How a program is attached, which decides how it reads its event. A constant in each
/// program, so each keeps only its own way.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// Classic tracepoint: fields are copied from the trace record.
    Tp,
    /// BTF tracepoint (or fexit): the argument array, pointers BTF-typed (plain loads
    /// through them are checked by the verifier).
    Btf,
    /// Raw tracepoint: the same argument array, every value a plain number (kernel memory is
    /// read with `bpf_probe_read_kernel`).
    Raw,
}

impl Kind {
    /// Whether the context is the tracepoint's argument array (not a record).
    #[inline(always)]
    fn args(self) -> bool {
        self != Kind::Tp
    }

    /// Whether pointer arguments are BTF-typed.
    #[inline(always)]
    pub(crate) fn typed(self) -> bool {
        self == Kind::Btf
    }
}

/// Reads an unsigned value of 1, 2, 4 or 8 bytes at `base + loc.offset`; 0 if absent or
/// unreadable. The layout is a read-only global, so the verifier sees `loc` as constants.
#[inline(always)]
pub(crate) fn read(base: *const u8, loc: FieldLoc) -> u64 {
    // SAFETY: bpf_probe_read_kernel checks the address; a failed read yields 0.
    unsafe {
        let p = base.add(loc.offset as usize);
        match loc.size {
            8 => bpf_probe_read_kernel(p as *const u64).unwrap_or(0),
            4 => bpf_probe_read_kernel(p as *const u32).map_or(0, u64::from),
            2 => bpf_probe_read_kernel(p as *const u16).map_or(0, u64::from),
            1 => bpf_probe_read_kernel(p).map_or(0, u64::from),
            _ => 0,
        }
    }
}

/// Reads an unsigned member at `base + loc.offset` of a kernel struct the program was given a
/// pointer to: [`deref`] where the pointer is BTF-typed, else [`read`].
#[inline(always)]
pub(crate) fn member(base: *const u8, loc: FieldLoc, k: Kind) -> u64 {
    if k.typed() {
        deref(base, loc)
    } else {
        read(base, loc)
    }
}

/// Reads an unsigned field of 4 or 8 bytes at `base + loc.offset`, where `base` is a typed
/// kernel pointer a BTF tracepoint was given: a direct load, which the verifier checks
/// against the kernel's BTF and guards against faults (no helper call). 0 if absent.
#[inline(always)]
fn deref(base: *const u8, loc: FieldLoc) -> u64 {
    // SAFETY: `base` is a BTF-typed pointer and `loc` a member of its type, resolved from the
    // running kernel's BTF; the verifier rejects any other access, and the kernel turns a
    // fault into a zero.
    unsafe {
        let p = base.add(loc.offset as usize);
        match loc.size {
            8 => core::ptr::read_volatile(p as *const u64),
            4 => u64::from(core::ptr::read_volatile(p as *const u32)),
            _ => 0,
        }
    }
}

/// One field of an event (see [`EventFields`]).
#[inline(always)]
pub(crate) fn field(ctx: *mut c_void, loc: FieldLoc, k: Kind) -> u64 {
    EventFields::load(ctx, loc.end(), k).get(loc)
}

/// Words of a [`EventFields`]'s copy of a classic tracepoint's record.
const RECORD_WORDS: usize = RECORD_BYTES / 8;

/// An event's fields.
///
/// A BTF tracepoint's context is its argument array, which the program may read only at
/// constant offsets: each field is one load, picked by [`btf_arg`] from the layout (a
/// read-only global the verifier knows), so nothing is copied. A classic tracepoint's record
/// is copied once with one helper call (whole words, at most [`RECORD_BYTES`]), and fields
/// are read from the copy.
pub(crate) struct EventFields {
    ctx: *mut c_void,
    copy: Option<[u64; RECORD_WORDS]>,
}

impl EventFields {
    /// The fields of `ctx`; `len` is the span of the fields the program needs. `k` is a
    /// constant in every program, so each keeps only its own way.
    #[inline(always)]
    pub(crate) fn load(ctx: *mut c_void, len: u16, k: Kind) -> EventFields {
        if k.args() {
            return EventFields { ctx, copy: None };
        }
        let mut buf = [0u64; RECORD_WORDS];
        let n = if (len as usize) > RECORD_BYTES {
            RECORD_BYTES
        } else {
            len as usize
        };
        // SAFETY: the helper checks the source address and writes at most n <= RECORD_BYTES
        // bytes into the buffer; on failure the buffer stays zero.
        unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                buf.as_mut_ptr().cast(),
                n as u32,
                ctx as *const c_void,
            );
        }
        EventFields {
            ctx,
            copy: Some(buf),
        }
    }

    /// An unsigned field of 1, 2, 4 or 8 bytes; 0 if absent.
    #[inline(always)]
    pub(crate) fn get(&self, loc: FieldLoc) -> u64 {
        let Some(buf) = &self.copy else {
            return btf_arg(self.ctx, loc);
        };
        let off = loc.offset as usize;
        if off + 8 > RECORD_BYTES {
            return 0;
        }
        if loc.size == 8 && off.is_multiple_of(8) {
            return buf[off / 8];
        }
        // SAFETY: in bounds (checked above); unaligned reads of plain integers.
        unsafe {
            let p = buf.as_ptr().cast::<u8>().add(off);
            match loc.size {
                8 => core::ptr::read_unaligned(p as *const u64),
                4 => u64::from(core::ptr::read_unaligned(p as *const u32)),
                2 => u64::from(core::ptr::read_unaligned(p as *const u16)),
                1 => u64::from(*p),
                _ => 0,
            }
        }
    }
}

/// Argument `loc` of a BTF tracepoint (`loc.offset` is 8 × its index), as an unsigned value
/// of `loc.size` bytes; 0 if absent. Every argument is its own constant-offset context load
/// behind its own comparison with the layout, which is a read-only global: the verifier
/// knows the value, keeps the one load it selects and removes the other branches. (The
/// context may not be read at a computed offset; the loads are volatile so that the
/// compiler cannot merge them into one.)
#[inline(always)]
fn btf_arg(ctx: *mut c_void, loc: FieldLoc) -> u64 {
    let args = ctx as *const u64;
    if loc.size == 0 || !loc.offset.is_multiple_of(8) {
        return 0;
    }
    macro_rules! arg {
        ($($i:literal)*) => {
            match loc.offset / 8 {
                $(
                    // SAFETY: argument $i exists: the layout was resolved from this
                    // kernel's prototype of the tracepoint.
                    $i => unsafe { core::ptr::read_volatile(args.add($i)) },
                )*
                _ => 0,
            }
        };
    }
    let v = arg!(0 1 2 3 4 5 6 7 8 9 10 11);
    match loc.size {
        8 => v,
        4 => v & 0xffff_ffff,
        2 => v & 0xffff,
        1 => v & 0xff,
        _ => 0,
    }
}

/// The address a BTF-typed pointer holds, as a plain number, passed through the scratch
/// word of this CPU's tables `t` ([`AllocatorTables::scratch`]; only the program that owns
/// them uses it). The verifier forbids arithmetic on such pointers (a table hash multiplies
/// its key); a word stored into a map value and loaded back is a plain number (storing a
/// pointer there needs CAP_PERFMON, which loading tracing programs needs anyway). 0 without
/// tables.
#[inline(always)]
pub(crate) fn address_of(p: *const u8, t: Option<*mut AllocatorTables>) -> u64 {
    match t {
        // SAFETY: this CPU's scratch word; volatile, so that the compiler keeps the round trip.
        Some(t) => unsafe {
            let w = &raw mut (*t).scratch;
            core::ptr::write_volatile(w, p as u64);
            core::ptr::read_volatile(w)
        },
        None => 0,
    }
}
