//! memtrace: watch the Linux kernel's memory allocators live.
//!
//! The binary is a thin CLI over this library; the integration tests drive the same code.

pub mod btf;
pub mod cardinality;
pub mod cgroup;
pub mod check;
pub mod config;
pub mod daemon;
pub mod events;
pub mod gfp;
pub mod kernel;
pub mod layout;
pub mod limits;
pub mod metrics;
pub mod model;
pub mod observed;
pub mod probes;
pub mod scrape;
pub mod symbolize;
pub mod top;
pub mod trace;
pub mod tracefs;
