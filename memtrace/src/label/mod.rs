//! Kernel values to bounded, address-free label values: GFP flags with the running kernel's
//! names ([`gfp`]), call sites and stacks to symbols ([`symbolize`]), memory cgroup ids to
//! paths ([`cgroup`]), and the top-N-plus-`other` bound on every attribution label
//! ([`cardinality`]).

pub mod cardinality;
pub mod cgroup;
pub mod gfp;
pub mod symbolize;

/// The label value of everything that did not fit: a full kernel map's overflow slot, the
/// values beyond a label's top N, GFP values without a composite name.
pub const OTHER: &str = "other";

/// The label value of what memtrace could not name: a call site kallsyms does not cover, a
/// deleted cgroup, a slab cache whose name was unreadable, an event without GFP flags.
pub const UNKNOWN: &str = "unknown";
