//! memtrace: watch the Linux kernel's memory allocators live.
//!
//! The binary is a thin CLI over this library; the integration tests drive the same code.
//! The modules follow the data:
//!
//! - [`kernel`]: the running kernel (release, capabilities, page size, BTF, tracefs);
//! - [`bpf`]: the eBPF object, its layouts, the attach plan, the maps read into a
//!   [`bpf::Snapshot`], and the ring buffer's notable events;
//! - [`label`]: kernel values to bounded, address-free label values (GFP names, symbols,
//!   cgroup paths, top-N plus `other`);
//! - [`export`]: metric families (the one place metrics are named), the notable-event
//!   record, and reading an exposition back;
//! - [`limits`]: what can be allocated now (procfs/sysfs);
//! - [`profile`]: kernel heap profiles (the estimator, live samples, leak suspects, pprof);
//! - [`web`]: the daemon's HTTP endpoint: the exporter-toolkit web config file (TLS, basic
//!   auth, headers, reloads) and the accept loop that bounds connections and their timeouts;
//! - [`sync`]: what every room shares: a poison-tolerant lock and one-line error messages;
//! - [`cmd`]: the subcommands (`check`, `daemon`, `trace`, `limits` with what a daemon has
//!   observed, `top` with its model, `profile`, `leaks`).

pub mod bpf;
pub mod cmd;
pub mod export;
pub mod kernel;
pub mod label;
pub mod limits;
pub mod profile;
pub mod sync;
pub mod web;
