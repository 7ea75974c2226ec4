//! Host-side stub: the programs live in `main.rs` and its modules and are built for the BPF
//! target only. memtrace's build script depends on this library so that cargo rebuilds the
//! embedded object when the eBPF sources change.
#![no_std]
