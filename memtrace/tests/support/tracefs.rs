//! What this kernel's tracefs offers.

/// Whether tracefs has `category:event` on this kernel.
pub fn has_event(category: &str, event: &str) -> bool {
    let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
    memtrace::kernel::tracefs::event_exists(&tracefs, category, event)
}
