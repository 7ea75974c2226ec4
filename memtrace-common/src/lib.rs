//! The one definition of everything memtrace's eBPF programs and its userspace share:
//! map names and layouts, keys, values, load-time globals and the ring-buffer event.
//!
//! Every type is `#[repr(C)]` with explicit padding so both sides agree byte for byte.
//! `aya::Pod` is implemented only under the `user` feature (the eBPF side has no aya).
//!
//! The modules are private; everything is used from the crate root.
#![no_std]

mod allocator;
mod event;
mod histogram;
mod keys;
mod layout;
mod names;
mod probes;
mod profile;
mod tables;

pub use allocator::*;
pub use event::*;
pub use histogram::*;
pub use keys::*;
pub use layout::*;
pub use names::*;
pub use probes::*;
pub use profile::*;
pub use tables::*;
