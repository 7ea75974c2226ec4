//! The subcommands: each reads the layers below it (kernel, bpf, label, export, limits) and
//! none reads another subcommand ([`serial`] and [`units`] are helpers, not subcommands).

pub mod check;
pub mod config;
pub mod daemon;
pub mod limits;
pub mod profile;
pub mod serial;
pub mod top;
pub mod trace;
pub mod units;
