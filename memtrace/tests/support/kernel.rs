//! The privilege gate of the kernel integration tests.

use std::sync::{Mutex, MutexGuard};

/// Kernel state is shared: tests that touch it run one at a time even if the harness is
/// started with several threads.
static KERNEL: Mutex<()> = Mutex::new(());

/// Returns a guard when this machine can load eBPF; otherwise skips loudly, or, when `CI` is
/// set, fails: in CI these tests must run.
pub fn require_kernel() -> Option<MutexGuard<'static, ()>> {
    let guard = KERNEL.lock().unwrap_or_else(|p| p.into_inner());
    let mut why = Vec::new();
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        why.push("not running as root".to_string());
    }
    if !std::path::Path::new(memtrace::kernel::btf::VMLINUX).exists() {
        why.push(format!(
            "{} is missing (no kernel BTF)",
            memtrace::kernel::btf::VMLINUX
        ));
    }
    if why.is_empty() {
        return Some(guard);
    }
    let msg = format!(
        "kernel integration tests cannot run: {}; run `cargo xtask test` as root on a kernel with BPF and BTF",
        why.join(", ")
    );
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set, so this is a failure, not a skip)");
    }
    eprintln!("SKIPPED: {msg}");
    None
}
