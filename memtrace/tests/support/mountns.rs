//! Mount namespaces of a test's own, so that a test can take a file system away from a daemon
//! without taking it from the rest of the machine.

use std::{ffi::CString, os::unix::process::CommandExt as _, process::Command};

fn c(s: &str) -> CString {
    CString::new(s).expect("no NUL in a path")
}

/// Makes `cmd` start in a mount namespace of its own, with private propagation (nothing it
/// mounts or unmounts reaches the parent's namespace), and with each `(source, target)` of
/// `binds` bind-mounted there before it runs.
pub fn private_mounts(cmd: &mut Command, binds: &[(&str, &str)]) {
    // Everything allocated before the fork: the child only makes system calls.
    let binds: Vec<(CString, CString)> = binds.iter().map(|(s, t)| (c(s), c(t))).collect();
    // SAFETY: the closure only calls async-signal-safe system calls on buffers made above.
    unsafe {
        cmd.pre_exec(move || {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let flags = libc::MS_REC | libc::MS_PRIVATE;
            if libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                flags,
                std::ptr::null(),
            ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            for (source, target) in &binds {
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
}

/// Runs `f` on a thread of its own inside process `pid`'s mount namespace (the thread first
/// stops sharing its file-system attributes with the test's other threads, which `setns`
/// requires; it ends with `f`, so no other code runs in that namespace).
pub fn in_mount_namespace_of<T: Send>(pid: u32, f: impl FnOnce() -> T + Send) -> T {
    let ns = std::fs::File::open(format!("/proc/{pid}/ns/mnt")).expect("open the mount namespace");
    std::thread::scope(|s| {
        s.spawn(|| {
            use std::os::fd::AsRawFd as _;
            // SAFETY: unshare and setns on a valid descriptor, for this thread only.
            unsafe {
                assert_eq!(
                    libc::unshare(libc::CLONE_FS),
                    0,
                    "unshare(CLONE_FS): {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(
                    libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNS),
                    0,
                    "setns: {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
        .join()
        .expect("the thread in the namespace panicked")
    })
}

/// The mount points of `fstype` file systems in the calling thread's namespace, deepest
/// first.
pub fn mount_points(fstype: &str) -> Vec<String> {
    let text = std::fs::read_to_string("/proc/thread-self/mountinfo").expect("mountinfo");
    let mut points: Vec<String> = text
        .lines()
        .filter_map(|l| {
            // `id parent major:minor root mount-point options ... - fstype source options`
            let (left, right) = l.split_once(" - ")?;
            let point = left.split(' ').nth(4)?;
            (right.split(' ').next()? == fstype).then(|| point.to_string())
        })
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    points
}

/// Bind-mounts `source` over `target` (in the calling thread's namespace).
pub fn bind(source: &str, target: &str) {
    let (s, t) = (c(source), c(target));
    // SAFETY: valid C strings; a bind mount takes no data.
    let rc = unsafe {
        libc::mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        )
    };
    assert_eq!(
        rc,
        0,
        "bind {source} over {target}: {}",
        std::io::Error::last_os_error()
    );
}

/// Unmounts `target` (lazily: a file still open there does not keep it).
pub fn unmount(target: &str) {
    let t = c(target);
    // SAFETY: a valid C string.
    let rc = unsafe { libc::umount2(t.as_ptr(), libc::MNT_DETACH) };
    assert_eq!(
        rc,
        0,
        "umount {target}: {}",
        std::io::Error::last_os_error()
    );
}
