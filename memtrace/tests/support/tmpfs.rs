//! Kernel memory held on purpose: xattrs in a tmpfs of the test's own.

/// A tmpfs mounted on a fresh directory, unmounted when dropped: its xattrs live in kernel
/// memory (`simple_xattr_alloc`, a kvmalloc of the value plus a header) until removed.
pub struct Tmpfs(pub std::path::PathBuf);

impl Tmpfs {
    pub fn mount(tag: &str) -> Tmpfs {
        let dir = std::env::temp_dir().join(format!("memtrace-tmpfs-{}-{tag}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("tmpfs mount point");
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: valid C strings; a plain tmpfs mount.
        let rc = unsafe {
            libc::mount(
                c"memtrace-test".as_ptr(),
                c.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(rc, 0, "mount tmpfs: {}", std::io::Error::last_os_error());
        Tmpfs(dir)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let c = std::ffi::CString::new(self.0.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Sets the xattrs `trusted.memtrace.<i>` for `range` on `path` (a tmpfs file), each with a
/// value of `size` bytes: kernel memory held until the file is removed.
pub fn hold_xattrs(path: &std::path::Path, range: std::ops::Range<usize>, size: usize) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let value = vec![0x5au8; size];
    for i in range {
        let name = std::ffi::CString::new(format!("trusted.memtrace.{i}")).unwrap();
        // SAFETY: valid path, name and buffer.
        let rc = unsafe {
            libc::setxattr(
                c.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            )
        };
        assert_eq!(rc, 0, "setxattr: {}", std::io::Error::last_os_error());
    }
}
