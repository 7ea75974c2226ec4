//! Workloads of the other allocators: slab, page, vmalloc and percpu.

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
