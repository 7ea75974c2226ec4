//! `memtrace trace` end to end: a real allocation failure produces exactly the trace events
//! ftrace shows, each with its symbolized stack; Ctrl-C and --duration end it cleanly; no
//! output holds a kernel address.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod cli;
    pub mod ftrace;
    pub mod kernel;
    pub mod memcg;
    pub mod tracefs;
    pub mod worker;
}

use std::{
    io::{BufRead as _, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use support::{
    assert::assert_no_addresses,
    ftrace::{Ftrace, ftrace_gfp_label},
    kernel::require_kernel,
    memcg::{Memcg, force_failures},
    worker::Worker,
};

#[test]
fn a_real_failure_is_one_trace_event_with_its_stack() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_memtrace"))
        .args(["trace", "--json", "--failures-only", "--stacks", "--pid"])
        .arg(std::process::id().to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memtrace trace");
    // Wait until it says its probes are attached.
    let stderr = child.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    let errlog = std::thread::spawn(move || {
        let mut all = String::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("probes attached") {
                let _ = ready_tx.send(());
            }
            all.push_str(&line);
            all.push('\n');
        }
        all
    });
    ready_rx
        .recv_timeout(Duration::from_secs(60))
        .expect("memtrace trace never became ready");

    // The failure workload of the kernel tests: 64 KiB xattrs on tmpfs from a thread in a
    // 64 KiB memory cgroup.
    let file =
        std::path::Path::new("/dev/shm").join(format!("memtrace-trace-{}", std::process::id()));
    std::fs::write(&file, b"x").unwrap();
    let memcg = Memcg::new(64 << 10);
    let worker = Worker::spawn();
    let tid = worker.tid;
    let events = support::ftrace::kernel_events(&[("kmem", "kmalloc"), ("kmem", "mm_page_alloc")]);
    let ftrace = Ftrace::start(&events, tid);
    force_failures(&worker, &memcg, &file, 3);
    let events = ftrace.stop();
    drop(memcg);
    let _ = std::fs::remove_file(&file);
    std::thread::sleep(Duration::from_millis(500)); // let the trace print

    // Ctrl-C ends it cleanly and promptly.
    let t = std::time::Instant::now();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "trace exited with {}", out.status);
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "took {:?} to stop",
        t.elapsed()
    );
    let errlog = errlog.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_no_addresses(&stdout);
    assert_no_addresses(&errlog);

    let mut want: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e.name.as_str() {
            "kmalloc" | "kmalloc_node" if e.is_null("ptr") => {
                Some(("kmalloc".into(), ftrace_gfp_label(e.str("gfp_flags"))))
            }
            "mm_page_alloc" if e.is_null("page") => {
                Some(("page".into(), ftrace_gfp_label(e.str("gfp_flags"))))
            }
            _ => None,
        })
        .collect();
    let records: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad JSON line {l:?}: {e}")))
        .filter(|r: &serde_json::Value| r["tid"] == tid)
        .collect();
    let mut got: Vec<(String, String)> = records
        .iter()
        .filter(|r| matches!(r["allocator"].as_str(), Some("kmalloc" | "page")))
        .map(|r| {
            let gfp = r["gfp"].as_str().unwrap_or("");
            (
                r["allocator"].as_str().unwrap().to_string(),
                ftrace_gfp_label(gfp),
            )
        })
        .collect();
    want.sort();
    got.sort();
    eprintln!("failures ftrace {want:?} trace {got:?}");
    assert!(!want.is_empty(), "the workload failed for real");
    assert_eq!(
        got, want,
        "one trace event per failure, with the kernel's GFP flags"
    );

    for r in &records {
        assert_eq!(r["kind"], "failure");
        assert_eq!(r["comm"], "memtrace-work");
        let stack: Vec<&str> = r["stack"]
            .as_array()
            .expect("--stacks gives a stack")
            .iter()
            .filter_map(|f| f.as_str())
            .collect();
        // The workload's failing syscalls: setxattr on tmpfs, a pipe's write and resize.
        assert!(
            stack
                .iter()
                .any(|f| f.contains("setxattr") || f.contains("pipe_")),
            "{stack:?}"
        );
        if r["allocator"] == "kmalloc" {
            assert!(
                stack
                    .iter()
                    .any(|f| f.contains("kmalloc") || f.contains("kvmalloc")),
                "a failed kmalloc's stack shows the allocator: {stack:?}"
            );
            let site = r["call_site"].as_str().expect("kmalloc has a call site");
            assert!(site.contains("+0x"), "{site}");
        }
        if r["allocator"] == "page" {
            assert!(
                stack
                    .iter()
                    .any(|f| f.contains("alloc_pages") || f.contains("alloc_frozen_pages")),
                "{stack:?}"
            );
        }
    }
}

#[test]
fn trace_stops_after_its_duration() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let t = std::time::Instant::now();
    let out = support::cli::memtrace(&["trace", "--duration", "1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(t.elapsed() < Duration::from_secs(30));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("events shown"), "{err}");
    assert_no_addresses(&String::from_utf8_lossy(&out.stdout));
}

#[test]
fn trace_rejects_bad_flags_in_one_line() {
    for args in [
        &["trace", "--allocator", "slob"][..],
        &["trace", "--pid", "0"],
        &["trace", "--min-order", "x"],
        &["trace", "--duration", "NaN"],
        &["trace", "--duration", "-1"],
    ] {
        let out = support::cli::memtrace(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert_eq!(
            String::from_utf8_lossy(&out.stderr).trim().lines().count(),
            1
        );
    }
}
