//! Memory compaction before high-order allocations.

/// Asks the kernel to compact memory, so that the tests' order-4 allocations (which the
/// kernel tries without retrying) find free blocks even on a fragmented machine.
pub fn compact_memory() {
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
}
