//! A memory cgroup that makes one thread's kernel allocations fail for real.

use std::path::PathBuf;

use super::worker::Worker;

/// A cgroup-v1 memory cgroup with a tiny limit and the OOM killer off, into which one thread
/// moves itself: its accounted kernel allocations then fail for real (and, with the OOM
/// killer off, fail rather than kill).
pub struct Memcg {
    pub dir: PathBuf,
    parent_tasks: PathBuf,
    v2: bool,
    /// The process's `oom_score_adj` before a v2 cgroup with the OOM killer "off" lowered it.
    oom_score_adj: Option<String>,
}

impl Memcg {
    /// A memory cgroup with `limit_bytes` and the OOM killer off: cgroup v1's
    /// `memory.oom_control`; cgroup v2 has none, so the process is made unkillable
    /// (`oom_score_adj` -1000) while the cgroup exists, and a charge the OOM killer cannot
    /// help then fails instead.
    pub fn new(limit_bytes: u64) -> Memcg {
        let mut m = Self::with_oom_killer(limit_bytes);
        if m.v2 {
            let p = "/proc/self/oom_score_adj";
            m.oom_score_adj = Some(std::fs::read_to_string(p).expect(p).trim().to_string());
            std::fs::write(p, "-1000").expect("make the test process unkillable");
        } else {
            std::fs::write(m.dir.join("memory.oom_control"), "1")
                .expect("disable the memcg OOM killer");
        }
        m
    }

    /// A memory cgroup with `limit_bytes` and the OOM killer on, in the hierarchy that holds
    /// the memory controller (cgroup v1 here; v2 where the kernel has no v1 memory
    /// controller, as Debian's 6.12). On v2 a thread cannot leave its process: entering
    /// ([`Memcg::tasks_paths`]) moves the whole process.
    pub fn with_oom_killer(limit_bytes: u64) -> Memcg {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let (root, version) = memtrace::label::cgroup::memory_hierarchy(&mountinfo)
            .expect("the memory cgroup tests need a mounted hierarchy with the memory controller");
        let v2 = version == memtrace::label::cgroup::Version::V2;
        let own = std::fs::read_to_string("/proc/self/cgroup").expect("/proc/self/cgroup");
        let parent = own
            .lines()
            .find_map(|l| {
                let mut parts = l.splitn(3, ':');
                let (_, ctrl, path) = (parts.next()?, parts.next()?, parts.next()?);
                let ours = if v2 {
                    ctrl.is_empty()
                } else {
                    ctrl.split(',').any(|c| c == "memory")
                };
                ours.then(|| path.to_string())
            })
            .unwrap_or_else(|| "/".into());
        let parent_dir = root.join(parent.trim_start_matches('/'));
        if v2 {
            let _ = std::fs::write(parent_dir.join("cgroup.subtree_control"), "+memory");
        }
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = parent_dir.join(format!("memtrace-test-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let tasks = if v2 { "cgroup.procs" } else { "tasks" };
        let m = Memcg {
            dir,
            parent_tasks: parent_dir.join(tasks),
            v2,
            oom_score_adj: None,
        };
        m.set_limit(limit_bytes);
        m
    }

    /// Moves process `pid` into this cgroup.
    // Only the kernel tests move a whole other process; dead_code is linted per test binary.
    #[allow(dead_code)]
    pub fn add_process(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
    }

    /// Makes `cmd`'s process enter this cgroup before it runs, so that everything it
    /// allocates is charged here.
    #[allow(dead_code)] // the fault tests only
    pub fn enter_on_exec(&self, cmd: &mut std::process::Command) {
        use std::os::unix::process::CommandExt as _;
        let procs = std::ffi::CString::new(
            self.dir
                .join("cgroup.procs")
                .into_os_string()
                .into_encoded_bytes(),
        )
        .unwrap();
        // SAFETY: open, write and close on a buffer made before the fork.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process.
                let w = libc::write(fd, c"0".as_ptr().cast(), 1);
                let err = std::io::Error::last_os_error();
                libc::close(fd);
                if w != 1 {
                    return Err(err);
                }
                Ok(())
            });
        }
    }

    /// The memory charged to this cgroup now.
    #[allow(dead_code)] // the fault tests only
    pub fn usage(&self) -> u64 {
        let file = if self.v2 {
            "memory.current"
        } else {
            "memory.usage_in_bytes"
        };
        let text =
            std::fs::read_to_string(self.dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        text.trim()
            .parse()
            .unwrap_or_else(|e| panic!("{file}: {text:?}: {e}"))
    }

    /// Processes of this cgroup the OOM killer killed (`oom_kill` of `memory.events` on v2,
    /// of `memory.oom_control` on v1).
    #[allow(dead_code)] // the fault tests only
    pub fn oom_kills(&self) -> u64 {
        let file = if self.v2 {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        let text =
            std::fs::read_to_string(self.dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
        text.lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .unwrap_or_else(|| panic!("no oom_kill in {file}: {text}"))
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("{file}: {e}"))
    }

    pub fn set_limit(&self, bytes: u64) {
        let (file, value) = if self.v2 {
            ("memory.max", bytes.min(1 << 62).to_string())
        } else {
            ("memory.limit_in_bytes", bytes.to_string())
        };
        std::fs::write(self.dir.join(file), value).unwrap_or_else(|e| panic!("{file}: {e}"));
    }

    /// NUL-terminated paths of the `tasks` files to enter and to leave this cgroup, for use
    /// from a worker without allocating (`cgroup.procs` on v2).
    pub fn tasks_paths(&self) -> (std::ffi::CString, std::ffi::CString) {
        let c =
            |p: PathBuf| std::ffi::CString::new(p.into_os_string().into_encoded_bytes()).unwrap();
        // Before 5.14 a kernel allocation is charged to the cgroup of the process's memory
        // owner, not of the thread: there the whole process moves, as on v2.
        let whole = self.v2 || !per_thread_kmem_charges();
        let tasks = if whole { "cgroup.procs" } else { "tasks" };
        (
            c(self.dir.join(tasks)),
            c(self.parent_tasks.with_file_name(tasks)),
        )
    }
}

impl Drop for Memcg {
    fn drop(&mut self) {
        self.set_limit(u64::MAX / 2);
        if !self.v2 {
            let _ = std::fs::write(self.dir.join("memory.force_empty"), "0");
        }
        if let Some(adj) = &self.oom_score_adj {
            let _ = std::fs::write("/proc/self/oom_score_adj", adj);
        }
        for _ in 0..50 {
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

/// Moves the calling thread into the cgroup whose `tasks` file is `tasks`, without
/// allocating (safe to call where a page fault could stall).
pub fn enter_tasks(tasks: &std::ffi::CStr) {
    // SAFETY: gettid/open/write/close on valid buffers.
    unsafe {
        let tid = libc::gettid();
        let mut buf = [0u8; 16];
        let mut n = tid as u32;
        let mut i = buf.len();
        loop {
            i -= 1;
            buf[i] = b'0' + (n % 10) as u8;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        let fd = libc::open(tasks.as_ptr(), libc::O_WRONLY);
        assert!(fd >= 0, "open tasks");
        let w = libc::write(fd, buf[i..].as_ptr().cast(), buf.len() - i);
        libc::close(fd);
        assert!(w > 0, "write tasks: {}", std::io::Error::last_os_error());
    }
}

/// Makes real allocation failures: runs on `worker` a job that moves the thread into `memcg`
/// (tiny limit, OOM killer off), fills a pipe with pages until the cgroup is full (page
/// allocations fail), grows the pipe's ring (its slot array's kmalloc fails), and stores
/// `reps` 64 KiB extended attributes on the tmpfs file `file` — since 6.x shmem copies each
/// value with kvmalloc(GFP_KERNEL_ACCOUNT), whose order-5 kmalloc_large cannot be charged (and
/// the vmalloc fallback fails too) — then moves back. The same failures on every kernel of
/// the matrix. Panics if the worker stalls (after unsticking it).
pub fn force_failures(worker: &Worker, memcg: &Memcg, file: &std::path::Path, reps: usize) {
    let (enter, leave) = memcg.tasks_paths();
    let path = std::ffi::CString::new(file.as_os_str().as_encoded_bytes()).unwrap();
    let value = vec![0x5au8; 65536];
    let page = vec![7u8; 4096];
    // A non-blocking pipe with room for 64 pages, made (and charged) outside the cgroup.
    let mut fds = [0i32; 2];
    // SAFETY: pipe2(2) into a valid array; fcntl on its own fd.
    unsafe {
        assert_eq!(libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK), 0, "pipe2");
        assert!(
            libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 64 * 4096) > 0,
            "F_SETPIPE_SZ"
        );
    }
    let finished = worker.run_timeout(
        move || {
            enter_tasks(&enter);
            // SAFETY: write and fcntl on the pipe's own fds with a valid buffer; ENOMEM is
            // the expected result once the cgroup is full.
            unsafe {
                // Pages written to the pipe are charged (GFP_HIGHUSER | __GFP_ACCOUNT) until
                // the cgroup is full: then page allocations fail, on every kernel.
                let mut failed = 0;
                for _ in 0..64 {
                    if libc::write(fds[1], page.as_ptr().cast(), page.len()) < 0 {
                        failed += 1;
                        if failed >= reps {
                            break;
                        }
                    }
                }
                for _ in 0..reps {
                    // Then growing the ring to 256 slots kcallocs a 10 KiB slot array with
                    // GFP_KERNEL_ACCOUNT: a slab kmalloc the full cgroup cannot charge.
                    libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 256 * 4096);
                    // And to 4096 slots: an order-6 kmalloc_large, charged since 5.14-ish.
                    libc::fcntl(fds[1], libc::F_SETPIPE_SZ, 16 << 20);
                }
            }
            for _ in 0..reps {
                // SAFETY: valid path, name and buffer; ENOMEM is the expected result.
                unsafe {
                    libc::setxattr(
                        path.as_ptr(),
                        c"user.memtrace".as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        0,
                    );
                }
            }
            // Closing the pipe frees its pages first: in a full cgroup even opening the
            // `tasks` file to leave would fail (a `struct file` is charged too).
            // SAFETY: our own fds.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
            enter_tasks(&leave);
        },
        std::time::Duration::from_secs(30),
    );
    if !finished {
        memcg.set_limit(u64::MAX / 2); // unstick the worker before failing
        panic!("the worker stalled in the memory cgroup");
    }
}

/// Whether a kernel allocation is charged to the memory cgroup of the allocating thread (5.14
/// and later), not of the process's memory owner (its main thread).
pub fn per_thread_kmem_charges() -> bool {
    !kernel_before(5, 14)
}

/// Whether the running kernel is older than `major.minor`.
pub fn kernel_before(major: u32, minor: u32) -> bool {
    let r = memtrace::kernel::release();
    let mut parts = r.split(|c: char| !c.is_ascii_digit());
    let mut next = || {
        parts
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .unwrap_or(0)
    };
    (next(), next()) < (major, minor)
}
