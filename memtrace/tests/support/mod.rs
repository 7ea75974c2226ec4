//! Shared helpers of the kernel integration tests: the privilege gate, a private ftrace
//! instance as the reference, and a worker thread whose syscalls are the workload.
#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, MutexGuard, mpsc},
    thread::JoinHandle,
};

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

/// Runs the memtrace binary under test with `args` and collects its output.
pub fn memtrace(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_memtrace"))
        .args(args)
        .output()
        .expect("run memtrace")
}

/// The path of a program on PATH, or a loud skip (a failure when `CI` is set).
pub fn need(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("{name} is not installed: run `cargo xtask setup`");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}

/// One event line of an ftrace buffer.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    pub pid: u32,
    pub name: String,
    pub fields: HashMap<String, String>,
}

impl TraceEvent {
    pub fn u64(&self, key: &str) -> u64 {
        let v = self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("ftrace event {self:?} has no field {key}"));
        v.parse()
            .unwrap_or_else(|_| panic!("ftrace field {key}={v} is not a number"))
    }

    pub fn str(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }

    /// Whether a `%p` field printed a NULL pointer.
    pub fn is_null(&self, key: &str) -> bool {
        let v = self.str(key);
        v == "(null)" || (!v.is_empty() && v.chars().all(|c| c == '0'))
    }
}

/// A private ftrace instance (its own buffer, leaving the global one alone) recording some
/// events of one thread: the reference memtrace's numbers are compared with.
pub struct Ftrace {
    dir: PathBuf,
    events: Vec<(String, String)>,
}

impl Ftrace {
    pub fn start(events: &[(impl AsRef<str>, impl AsRef<str>)], tid: u32) -> Ftrace {
        let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
        let dir = tracefs
            .join("instances")
            .join(format!("memtrace-test-{}-{tid}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let f = Ftrace {
            dir,
            events: events
                .iter()
                .map(|(c, e)| (c.as_ref().to_string(), e.as_ref().to_string()))
                .collect(),
        };
        f.write("buffer_size_kb", "8192");
        for (c, e) in &f.events {
            f.write(
                &format!("events/{c}/{e}/filter"),
                &format!("common_pid == {tid}"),
            );
            f.write(&format!("events/{c}/{e}/enable"), "1");
        }
        f.write("tracing_on", "1");
        f
    }

    fn write(&self, rel: &str, value: &str) {
        let p = self.dir.join(rel);
        std::fs::write(&p, value)
            .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", p.display()));
    }

    /// Stops recording and returns every event recorded, checking nothing was overwritten.
    pub fn stop(&self) -> Vec<TraceEvent> {
        self.write("tracing_on", "0");
        for (c, e) in &self.events {
            self.write(&format!("events/{c}/{e}/enable"), "0");
        }
        let per_cpu = self.dir.join("per_cpu");
        for cpu in std::fs::read_dir(&per_cpu).expect("per_cpu").flatten() {
            let stats = std::fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
            for line in stats.lines() {
                if let Some(n) = line.strip_prefix("overrun:") {
                    assert_eq!(
                        n.trim(),
                        "0",
                        "ftrace buffer overran: the reference lost events"
                    );
                }
            }
        }
        let text = std::fs::read_to_string(self.dir.join("trace")).expect("read trace");
        text.lines().filter_map(parse_trace_line).collect()
    }
}

impl Drop for Ftrace {
    fn drop(&mut self) {
        for (c, e) in &self.events {
            let _ = std::fs::write(self.dir.join(format!("events/{c}/{e}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Parses `comm-123 [001] ..... 12.34: kmalloc: a=1 b=x ...`.
fn parse_trace_line(line: &str) -> Option<TraceEvent> {
    if line.starts_with('#') {
        return None;
    }
    let bracket = line.find(" [")?;
    let task = line[..bracket].trim();
    let pid: u32 = task.rsplit('-').next()?.parse().ok()?;
    let rest = &line[bracket..];
    // after the timestamp: ": name: fields"
    let colon = rest.find(": ")?;
    let rest = &rest[colon + 2..];
    let (name, fields) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    let fields = fields
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(TraceEvent {
        pid,
        name: name.to_string(),
        fields,
    })
}

type Job = Box<dyn FnOnce() + Send>;

/// A thread that runs workloads on request; its thread id is known before any workload
/// runs, so programs and ftrace can be set to count exactly its events.
pub struct Worker {
    pub tid: u32,
    jobs: Option<mpsc::Sender<(Job, mpsc::Sender<()>)>>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    pub fn spawn() -> Worker {
        let (tid_tx, tid_rx) = mpsc::channel();
        let (jobs_tx, jobs_rx) = mpsc::channel::<(Job, mpsc::Sender<()>)>();
        let handle = std::thread::Builder::new()
            .name("memtrace-work".into())
            .spawn(move || {
                // SAFETY: gettid cannot fail.
                tid_tx.send(unsafe { libc::gettid() } as u32).unwrap();
                for (job, done) in jobs_rx {
                    job();
                    let _ = done.send(());
                }
            })
            .expect("spawn worker");
        Worker {
            tid: tid_rx.recv().expect("worker tid"),
            jobs: Some(jobs_tx),
            handle: Some(handle),
        }
    }

    /// Hands `job` to the worker; the receiver hears when it is done.
    fn submit(&self, job: impl FnOnce() + Send + 'static) -> mpsc::Receiver<()> {
        let (done_tx, done_rx) = mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send((Box::new(job), done_tx))
            .expect("worker alive");
        done_rx
    }

    /// Runs `job` on the worker and waits for it to finish.
    pub fn run(&self, job: impl FnOnce() + Send + 'static) {
        self.submit(job).recv().expect("worker finished the job");
    }

    /// Runs `job` on the worker; returns false if it did not finish within `timeout` (it may
    /// still be running).
    pub fn run_timeout(
        &self,
        job: impl FnOnce() + Send + 'static,
        timeout: std::time::Duration,
    ) -> bool {
        self.submit(job).recv_timeout(timeout).is_ok()
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        drop(self.jobs.take());
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

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

/// Whether this kernel's `category:event` tracepoint has the field `field`.
pub fn event_has_field(category: &str, event: &str, field: &str) -> bool {
    let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
    memtrace::kernel::tracefs::Format::read(&tracefs, category, event)
        .is_ok_and(|f| f.field(field).is_some())
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

/// Whether tracefs has `category:event` on this kernel.
pub fn has_event(category: &str, event: &str) -> bool {
    let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
    memtrace::kernel::tracefs::event_exists(&tracefs, category, event)
}

/// The ftrace events a test observes on this kernel: `events`, each hot allocation event
/// with its `_node` twin where the kernel has one (before 6.1), and without events the
/// kernel lacks.
pub fn kernel_events(events: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (c, e) in events {
        if has_event(c, e) {
            out.push((c.to_string(), e.to_string()));
        }
        let node = format!("{e}_node");
        if matches!(*e, "kmalloc" | "kmem_cache_alloc") && has_event(c, &node) {
            out.push((c.to_string(), node));
        }
    }
    out
}

/// Whether `function` is where setxattr's value copy is allocated: `vmemdup_user` on
/// current kernels; before 6.x's allocation-profiling rework the kmalloc event's call site is
/// the kvmalloc inside it.
pub fn is_vmemdup_site(function: &str) -> bool {
    // 5.10's setxattr calls kvmalloc itself, inlined; elsewhere the kvmalloc behind
    // vmemdup_user is the call site for sizes it sends to kmalloc_node (6.12:
    // __kvmalloc_node_noprof).
    function == "vmemdup_user" || function == "setxattr" || function.contains("kvmalloc_node")
}

/// The ftrace group of the kprobe events the tests define as references where a kernel has
/// no tracepoint (vmalloc before 6.2).
pub const KPROBE_GROUP: &str = "memtrace_test";
/// The kprobe events on `alloc_vmap_area()`: its entry (with `size`) and its return.
pub const VMAP_KPROBES: [&str; 2] = ["alloc_vmap_area", "alloc_vmap_area_ret"];

/// Defines [`VMAP_KPROBES`] (once): the reference for vmalloc on kernels without the
/// vmalloc tracepoints, the function memtrace's fexit program watches.
pub fn define_vmap_kprobes() {
    let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
    if tracefs
        .join("events")
        .join(KPROBE_GROUP)
        .join(VMAP_KPROBES[0])
        .is_dir()
    {
        return;
    }
    let defs = format!(
        "p:{KPROBE_GROUP}/{} alloc_vmap_area size=%di:u64\nr:{KPROBE_GROUP}/{} alloc_vmap_area ret=$retval:x64\n",
        VMAP_KPROBES[0], VMAP_KPROBES[1]
    );
    let path = tracefs.join("kprobe_events");
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    std::io::Write::write_all(&mut f, defs.as_bytes())
        .unwrap_or_else(|e| panic!("define kprobes in {}: {e}", path.display()));
}

/// `events` with each pair of [`VMAP_KPROBES`] events (one thread's, in order) turned into
/// one `alloc_vmap_area` event with the tracepoint's `size` and `failed` fields.
pub fn vmap_events_from_kprobes(events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    let mut out = Vec::new();
    let mut pending: HashMap<u32, Vec<u64>> = HashMap::new();
    for e in events {
        if e.name == VMAP_KPROBES[0] {
            pending.entry(e.pid).or_default().push(e.u64("size"));
        } else if e.name == VMAP_KPROBES[1] {
            let Some(size) = pending.get_mut(&e.pid).and_then(Vec::pop) else {
                continue; // entered before the window opened
            };
            let ret = e.str("ret");
            let ret = u64::from_str_radix(ret.trim_start_matches("0x"), 16)
                .unwrap_or_else(|_| panic!("kretprobe ret={ret} is not hex"));
            let failed = ret == 0 || ret > (-4096i64) as u64;
            out.push(TraceEvent {
                pid: e.pid,
                name: "alloc_vmap_area".into(),
                fields: HashMap::from([
                    ("size".to_string(), size.to_string()),
                    ("failed".to_string(), u64::from(failed).to_string()),
                ]),
            });
        } else {
            out.push(e);
        }
    }
    out
}

/// Checks memtrace's per-cache counts `got` where the kernel's event names no cache (before
/// 6.2): together they equal ftrace's `total` (allocations, bytes requested, bytes allocated),
/// every cache is named, and each cache's bytes per object are that cache's own object size
/// (`/sys/kernel/slab/<name>/slab_size`), so each allocation landed under its own cache.
pub fn assert_caches_without_names(
    got: &std::collections::BTreeMap<String, (u64, u64, u64)>,
    total: &(u64, u64, u64),
) {
    let sum = got
        .values()
        .fold((0, 0, 0), |a, v| (a.0 + v.0, a.1 + v.1, a.2 + v.2));
    assert_eq!(&sum, total, "all caches together differ from ftrace");
    for (name, (n, _, allocated)) in got {
        assert!(
            name != "unknown" && name != "other",
            "unnamed cache: {got:?}"
        );
        let path = format!("/sys/kernel/slab/{name}/slab_size");
        let size: u64 = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("{path}: {e}"))
            .trim()
            .parse()
            .expect("slab_size");
        assert_eq!(allocated / n, size, "{name}: bytes per object vs {path}");
    }
}

/// Opens and closes `path` `n` times: each open takes a `struct file` from the `filp` slab
/// cache (and frees it on close).
pub fn open_close(path: &std::path::Path, n: usize) {
    for _ in 0..n {
        drop(std::fs::File::open(path).expect("open"));
    }
}

/// Fills fresh pipes with `n` pages in all (four per pipe, never read, then closed): each
/// page written is an order-0 page allocation, freed on close.
pub fn pipe_pages(n: usize) {
    let buf = vec![7u8; 4096];
    for _ in 0..n.div_ceil(4) {
        let mut fds = [0i32; 2];
        // SAFETY: a valid array for pipe(2); valid fds and buffer.
        unsafe {
            assert_eq!(libc::pipe(fds.as_mut_ptr()), 0);
            for _ in 0..4 {
                assert_eq!(libc::write(fds[1], buf.as_ptr().cast(), 4096), 4096);
            }
            libc::close(fds[0]);
            libc::close(fds[1]);
        }
    }
}

pub const BPF_MAP_TYPE_ARRAY: u32 = 2;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;

/// Creates and closes a BPF map: an array above 32 KiB is vmalloc'ed (`bpf_map_area_alloc`),
/// a per-CPU array takes one percpu allocation per element.
pub fn bpf_map_create_close(map_type: u32, value_size: u32, max_entries: u32) {
    // Before 5.11 the kernel charges BPF maps against RLIMIT_MEMLOCK (64 KiB by default).
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit; failing leaves the limit as it was.
    unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) };
    let mut attr = [0u32; 32];
    attr[0] = map_type;
    attr[1] = 4; // key size
    attr[2] = value_size;
    attr[3] = max_entries;
    // SAFETY: BPF_MAP_CREATE (0) with a zero-padded bpf_attr.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(
        fd >= 0,
        "BPF_MAP_CREATE: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: our own fd.
    unsafe { libc::close(fd as i32) };
}

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
    pub fn add_process(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string()).expect("cgroup.procs");
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

/// The `gfp` label the kernel's own rendering implies: ftrace prints composite names first,
/// so the first `|`-separated token is the composite, if it is one.
pub fn ftrace_gfp_label(printed: &str) -> String {
    match printed.split('|').next() {
        Some(t) if t.starts_with("GFP_") => t.to_string(),
        _ => "other".to_string(),
    }
}

/// Fails if `text` holds something that looks like a kernel address: `0xffff…`, a bare
/// hex word starting with ffff, or a decimal at or above the kernel half of the address space.
pub fn assert_no_addresses(text: &str) {
    assert!(!text.contains("0xffff"), "kernel address in output");
    for word in text.split(|c: char| !c.is_ascii_hexdigit()) {
        assert!(
            !(word.len() >= 12 && word.to_ascii_lowercase().starts_with("ffff")),
            "kernel address {word} in output"
        );
    }
    for word in text.split(|c: char| !c.is_ascii_digit()) {
        if word.len() >= 19 {
            if let Ok(v) = word.parse::<u64>() {
                assert!(
                    v < 0xffff_8000_0000_0000,
                    "kernel address {v} (decimal) in output"
                );
            }
        }
    }
}

/// Asks the kernel to compact memory, so that the tests' order-4 allocations (which the
/// kernel tries without retrying) find free blocks even on a fragmented machine.
pub fn compact_memory() {
    let _ = std::fs::write("/proc/sys/vm/compact_memory", "1");
}

// ---------------------------------------------------------------------------------------
// HTTP and the daemon, for end-to-end tests

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// GET `http://127.0.0.1:{port}{path}`: status code and body (memtrace's own HTTP reader).
pub fn get(port: u16, path: &str) -> Result<(u16, String), memtrace::export::scrape::ScrapeError> {
    memtrace::export::scrape::get_response(
        &format!("http://127.0.0.1:{port}{path}"),
        Duration::from_secs(10),
    )
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
}

impl Daemon {
    pub fn start(port: u16) -> Daemon {
        Self::start_with(port, &[])
    }

    /// A daemon with `extra` flags.
    pub fn start_with(port: u16, extra: &[&str]) -> Daemon {
        let child = Command::new(env!("CARGO_BIN_EXE_memtrace"))
            .args([
                "daemon",
                "--web.listen-address",
                &format!("127.0.0.1:{port}"),
            ])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start memtrace daemon");
        let mut d = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok((200, body)) = get(port, "/healthz") {
                assert_eq!(body.trim(), "ok");
                return d;
            }
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("memtrace daemon exited early with {st}");
            }
            assert!(Instant::now() < deadline, "daemon not healthy after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The raw text of /metrics.
    pub fn scrape_text(&self) -> String {
        let (code, body) = get(self.port, "/metrics").expect("scrape");
        assert_eq!(code, 200, "{body}");
        assert_no_addresses(&body);
        body
    }

    /// /metrics as series → value.
    pub fn scrape(&self) -> HashMap<String, f64> {
        self.scrape_text()
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
            .filter_map(|l| {
                let (k, v) = l.rsplit_once(' ')?;
                Some((k.to_string(), v.parse().ok()?))
            })
            .collect()
    }

    /// Sends SIGTERM and returns how long the daemon took to exit, asserting exit status 0.
    pub fn terminate(mut self) -> Duration {
        let t = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = t + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exited with {st} after SIGTERM");
                return t.elapsed();
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM for 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes `s` for a URL query component.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server (Debian's `prometheus`) on loopback, scraping `targets` every
/// second as job `memtrace`, with its storage in a private directory removed on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(binary: &std::path::Path, targets: &[String]) -> Prometheus {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("memtrace-prometheus-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    /// GET an API path: the JSON answer, or `Null` if the server does not answer (yet).
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        match get(self.port, path_and_query) {
            Ok((_, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// An instant query through `/api/v1/query`.
    pub fn query(&self, promql: &str) -> serde_json::Value {
        self.api(&format!("/api/v1/query?query={}", urlencode(promql)))
    }

    /// Waits until every target of the job has been scraped successfully.
    pub fn wait_up(&self, targets: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.query("up{job=\"memtrace\"} == 1");
            if v["data"]["result"].as_array().map(Vec::len) == Some(targets) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped the daemon successfully: {v}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_lines() {
        let l = "           <...>-7194    [000] .....  1063.053932: kmalloc: call_site=vmemdup_user+0x2e/0xb0 ptr=000000008cf313d4 bytes_req=100 bytes_alloc=128 gfp_flags=GFP_USER node=-1 accounted=false";
        let e = parse_trace_line(l).unwrap();
        assert_eq!(e.pid, 7194);
        assert_eq!(e.name, "kmalloc");
        assert_eq!(e.u64("bytes_alloc"), 128);
        assert!(!e.is_null("ptr"));
    }
}
