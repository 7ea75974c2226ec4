//! The kmalloc workload: setxattr(2).

/// `setxattr(2)` copies the value from userspace with `vmemdup_user(value, size)`, a kmalloc
/// of exactly `size` bytes (kvmalloc above the slab sizes) before the filesystem is asked:
/// a syscall whose kmalloc is known, whatever the filesystem then answers.
pub fn setxattr_kmalloc(path: &std::path::Path, size: usize) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let value = vec![0x5au8; size];
    // SAFETY: valid path, name and buffer; the result does not matter.
    unsafe {
        libc::setxattr(
            c.as_ptr(),
            c"user.memtrace".as_ptr(),
            value.as_ptr().cast(),
            size,
            0,
        );
    }
}
