//! The memtrace binary under test.

use std::process::Command;

/// Runs the memtrace binary under test with `args` and collects its output.
pub fn memtrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memtrace"))
        .args(args)
        .output()
        .expect("run memtrace")
}
