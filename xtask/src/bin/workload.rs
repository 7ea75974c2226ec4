//! The benchmark workload: drives allocation-heavy kernel paths at a steady rate and reports
//! nanoseconds per operation as JSON. One operation is one round of every path:
//!
//! - `setxattr`: `setxattr(2)` of a 1000-byte value on a tmpfs file — `vmemdup_user`
//!   kmallocs 1000 bytes (kmalloc-1k) and kfrees it, plus shmem's own xattr copy;
//! - `open_close`: `open(2)` + `close(2)` of a file — a `filp` slab object and its free
//!   (and a `names_cache` path buffer);
//! - `pipe`: a fresh pipe written with one page and closed — an order-0 page allocation and
//!   free, and the pipe's own kmallocs.
//!
//! Operations run in batches of 100 between clock reads. `ns_per_op` is the median over
//! batches of a batch's time per operation: a batch that a preemption, an interrupt storm or
//! the hypervisor stretched (on a shared VM a run has many) moves the mean, not the median.
//! `mean_ns_per_op` is the plain mean over the run.
//!
//! Usage: `workload --seconds S [--dir DIR]`; prints
//! `{"ops":N,"seconds":S,"ns_per_op":X,"mean_ns_per_op":Y,"paths":{"setxattr":ns,...}}`
//! (paths: mean ns per operation of each path).

use std::{
    ffi::CString,
    time::{Duration, Instant},
};

fn main() {
    let mut seconds = 2.0f64;
    let mut dir = std::path::PathBuf::from("/dev/shm");
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--seconds" => {
                seconds = args
                    .next()
                    .and_then(|s| s.parse().ok())
                    .filter(|s: &f64| s.is_finite() && *s > 0.0)
                    .unwrap_or_else(|| usage("--seconds needs a positive number"))
            }
            "--dir" => {
                dir = args
                    .next()
                    .map(Into::into)
                    .unwrap_or_else(|| usage("--dir needs a path"))
            }
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    let file = dir.join(format!("memtrace-workload-{}", std::process::id()));
    std::fs::write(&file, b"x")
        .unwrap_or_else(|e| usage(&format!("cannot create {}: {e}", file.display())));
    let path = CString::new(file.as_os_str().as_encoded_bytes()).expect("no NUL in path");
    let value = vec![0x5au8; 1000];
    let page = vec![7u8; 4096];

    let mut spent = [Duration::ZERO; 3];
    let mut batches: Vec<f64> = Vec::with_capacity(1 << 16);
    let mut ops = 0u64;
    let budget = Duration::from_secs_f64(seconds);
    let start = Instant::now();
    while start.elapsed() < budget {
        // 100 rounds between clock reads keep timing overhead negligible.
        let batch = Instant::now();
        for _ in 0..BATCH {
            let t0 = Instant::now();
            // SAFETY: valid path, name and buffer.
            unsafe {
                libc::setxattr(
                    path.as_ptr(),
                    c"user.workload".as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                );
            }
            let t1 = Instant::now();
            // SAFETY: valid path; the fd is closed at once.
            unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_RDONLY);
                if fd >= 0 {
                    libc::close(fd);
                }
            }
            let t2 = Instant::now();
            let mut fds = [0i32; 2];
            // SAFETY: a valid array; valid fds and buffer.
            unsafe {
                if libc::pipe(fds.as_mut_ptr()) == 0 {
                    libc::write(fds[1], page.as_ptr().cast(), page.len());
                    libc::close(fds[0]);
                    libc::close(fds[1]);
                }
            }
            let t3 = Instant::now();
            spent[0] += t1 - t0;
            spent[1] += t2 - t1;
            spent[2] += t3 - t2;
            ops += 1;
        }
        batches.push(batch.elapsed().as_nanos() as f64 / BATCH as f64);
    }
    let elapsed = start.elapsed();
    let _ = std::fs::remove_file(&file);
    let ns = |d: Duration| d.as_nanos() as f64 / ops as f64;
    batches.sort_by(f64::total_cmp);
    let median = batches[batches.len() / 2];
    println!(
        "{{\"ops\":{ops},\"seconds\":{:.3},\"ns_per_op\":{median:.1},\"mean_ns_per_op\":{:.1},\"paths\":{{\"setxattr\":{:.1},\"open_close\":{:.1},\"pipe\":{:.1}}}}}",
        elapsed.as_secs_f64(),
        elapsed.as_nanos() as f64 / ops as f64,
        ns(spent[0]),
        ns(spent[1]),
        ns(spent[2]),
    );
}

/// Operations between two clock reads.
const BATCH: u64 = 100;

fn usage(msg: &str) -> ! {
    eprintln!("workload: {msg} (usage: workload --seconds S [--dir DIR])");
    std::process::exit(2);
}
