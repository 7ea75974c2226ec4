//! Heap profiles end to end on the real kernel, read back by the real pprof tool: the
//! daemon's /debug/pprof/heap, /api/leaks and memtrace_live_bytes while the test holds
//! tmpfs xattrs in kernel memory; `memtrace profile` as pprof and as folded stacks;
//! `memtrace leaks` finding a steadily growing stack. `go tool pprof` comes from Debian's
//! golang-go (installed by `cargo xtask setup`); without it these tests fail.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod cli;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod tmpfs;
}

use std::{
    io::{Read as _, Write as _},
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use support::{
    assert::assert_no_addresses,
    cli::memtrace,
    daemon::Daemon,
    http::{free_port, get},
    kernel::require_kernel,
    tmpfs::{Tmpfs, hold_xattrs},
};

/// xattrs held, and each one's value: about 4 MiB of kmalloc in `simple_xattr_alloc`.
const XATTRS: usize = 1000;
const VALUE: usize = 3000;

/// `go tool pprof ARGS FILE`'s standard output; fails the test if pprof cannot run or
/// complains.
fn pprof(args: &[&str], file: &Path) -> String {
    let home = std::env::temp_dir().join(format!("memtrace-go-{}", std::process::id()));
    std::fs::create_dir_all(&home).unwrap();
    let out = Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .arg(file)
        .env("HOME", &home)
        .env("GOCACHE", home.join("cache"))
        .env("GOPATH", home.join("gopath"))
        .env("PPROF_TMPDIR", &home)
        .env("GOTOOLCHAIN", "local")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "running `go tool pprof` failed ({e}): run cargo xtask setup (installs golang-go)"
            )
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "go tool pprof {args:?}: {stderr}");
    String::from_utf8(out.stdout).expect("pprof prints text")
}

/// The raw body of `GET path` on the daemon (the pprof profile is binary).
fn get_bytes(port: u16, path: &str) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a header");
    let head = String::from_utf8_lossy(&raw[..end]).to_string();
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code");
    (code, raw[end + 4..].to_vec())
}

/// Checks a pprof heap profile with pprof itself: Go's four sample types, a stack from
/// setxattr to `simple_xattr_alloc` holding most of the live bytes, no kernel address.
fn check_heap_profile(file: &Path, min_live: f64) {
    let raw = pprof(&["-raw"], file);
    assert!(
        raw.contains(
            "alloc_objects/count alloc_space/bytes inuse_objects/count inuse_space/bytes[dflt]"
        ),
        "{raw}"
    );
    assert!(raw.contains("simple_xattr_alloc"), "{raw}");
    assert!(raw.contains("setxattr"), "{raw}");
    assert!(raw.contains("allocator:[kmalloc]"), "{raw}");
    for word in raw.split(|c: char| !c.is_ascii_hexdigit() && c != 'x') {
        if let Some(hex) = word.strip_prefix("0x") {
            assert!(
                hex.chars().all(|c| c == '0'),
                "pprof shows an address: {word}"
            );
        }
    }
    // `-top` in bytes: simple_xattr_alloc's cumulative live bytes.
    let top = pprof(
        &[
            "-top",
            "-sample_index=inuse_space",
            "-unit=B",
            "-nodecount=200",
        ],
        file,
    );
    let line = top
        .lines()
        .find(|l| l.trim_end().ends_with(" simple_xattr_alloc"))
        .unwrap_or_else(|| panic!("no simple_xattr_alloc in pprof -top:\n{top}"));
    let cum: f64 = line
        .split_whitespace()
        .nth(3)
        .and_then(|v| v.trim_end_matches('B').parse().ok())
        .unwrap_or_else(|| panic!("cum of {line:?}"));
    assert!(
        cum >= min_live,
        "simple_xattr_alloc holds {cum} B live, want ≥ {min_live}: {line}"
    );
}

#[test]
fn daemon_serves_a_heap_profile_that_pprof_reads_and_live_bytes() {
    let Some(_kernel) = require_kernel() else {
        return;
    };
    let fs = Tmpfs::mount("daemon");
    let file = fs.0.join("held");
    std::fs::write(&file, b"x").unwrap();
    let port = free_port();
    let d = Daemon::start_with(
        port,
        &[
            "--profile.enabled",
            "true",
            "--profile.sample-bytes",
            "8192",
        ],
    );
    hold_xattrs(&file, 0..XATTRS, VALUE);
    let held = (XATTRS * 4096) as f64;
    // The live bytes appear once the ring buffer is drained (at once: it is polled).
    let key = "memtrace_live_bytes{allocator=\"kmalloc\",function=\"simple_xattr_alloc\"}";
    let deadline = Instant::now() + Duration::from_secs(20);
    let live = loop {
        let m = d.scrape();
        let v = m.get(key).copied().unwrap_or(0.0);
        if v > 0.7 * held || Instant::now() > deadline {
            assert!(
                m.get("memtrace_profile_samples_total{allocator=\"kmalloc\"}")
                    .is_some_and(|&n| n > 100.0),
                "{m:?}"
            );
            assert!(m.contains_key("memtrace_profile_live_samples"));
            assert!(
                m.contains_key("memtrace_profile_phantom_samples_total{reason=\"address_reused\"}")
            );
            assert!(m.contains_key("memtrace_events_lost_total{reason=\"profile_stacks_full\"}"));
            break v;
        }
        std::thread::sleep(Duration::from_millis(300));
    };
    // ~500 samples at 8 KiB: within 25 % (5 standard errors).
    assert!(
        (live / held - 1.0).abs() < 0.25,
        "memtrace_live_bytes for simple_xattr_alloc {live}, held {held}"
    );

    let (code, body) = get_bytes(port, "/debug/pprof/heap");
    assert_eq!(code, 200);
    assert_eq!(&body[..2], &[0x1f, 0x8b], "a gzip stream");
    let path = fs.0.join("heap.pb.gz");
    std::fs::write(&path, &body).unwrap();
    check_heap_profile(&path, 0.7 * held);

    let (code, leaks) = get(port, "/api/leaks").expect("leaks");
    assert_eq!(code, 200, "{leaks}");
    assert_no_addresses(&leaks);
    let parsed: serde_json::Value = serde_json::from_str(&leaks).expect("JSON");
    assert!(parsed.is_array(), "{leaks}");
    // `memtrace leaks --from` reads the same list (too short a window for suspects yet).
    let out = memtrace(&["leaks", "--from", &format!("http://127.0.0.1:{port}")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Removing the file frees the xattrs: their live bytes go.
    std::fs::remove_file(&file).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = d.scrape().get(key).copied().unwrap_or(0.0);
        if v < 0.05 * held {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "live bytes stayed at {v} after the release"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    d.terminate();

    // Off, the path says how to turn it on.
    let port = free_port();
    let d = Daemon::start_with(port, &[]);
    let (code, body) = get(port, "/debug/pprof/heap").expect("heap");
    assert_eq!(code, 404);
    assert!(body.contains("--profile.enabled true"), "{body}");
    assert!(!d.scrape_text().contains("memtrace_live_bytes"));
    d.terminate();
}

#[test]
fn profile_command_writes_pprof_and_folded_stacks() {
    let Some(_kernel) = require_kernel() else {
        return;
    };
    let fs = Tmpfs::mount("command");
    let file = fs.0.join("held");
    std::fs::write(&file, b"x").unwrap();
    let out_file = fs.0.join("heap.pb.gz");
    for format in ["pprof", "folded"] {
        let target = file.clone();
        let offset = if format == "pprof" { 0 } else { XATTRS };
        // The xattrs are set while the profile runs (after its programs attach).
        let holder = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_secs(2));
            hold_xattrs(&target, offset..offset + XATTRS, VALUE);
        });
        let mut args = vec![
            "profile",
            "--duration",
            "4",
            "--profile.sample-bytes",
            "8192",
            "--format",
            format,
        ];
        let out_path = out_file.to_str().unwrap().to_string();
        if format == "pprof" {
            args.extend(["-o", &out_path]);
        }
        let out = memtrace(&args);
        holder.join().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "memtrace {args:?}: {stderr}");
        assert!(stderr.contains("samples"), "{stderr}");
        if format == "pprof" {
            check_heap_profile(&out_file, 0.7 * (XATTRS * 4096) as f64);
            continue;
        }
        let text = String::from_utf8(out.stdout).unwrap();
        assert_no_addresses(&text);
        let xattr: u64 = text
            .lines()
            .filter(|l| l.starts_with("kmalloc;") && l.contains(";simple_xattr_alloc;"))
            .map(|l| l.rsplit_once(' ').unwrap().1.parse::<u64>().unwrap())
            .sum();
        assert!(
            xattr as f64 > 0.7 * (XATTRS * 4096) as f64,
            "folded stacks hold {xattr} B in simple_xattr_alloc:\n{text}"
        );
        // Root first: the syscall entry before the allocator.
        let line = text
            .lines()
            .find(|l| l.contains(";simple_xattr_alloc;"))
            .unwrap();
        let frames: Vec<&str> = line.rsplit_once(' ').unwrap().0.split(';').collect();
        let at = |name: &str| frames.iter().position(|f| f.contains(name));
        assert!(at("setxattr") < at("simple_xattr_alloc"), "{line}");
    }
    // A binary profile is never written to a terminal, and bad flags are one line.
    let out = memtrace(&["profile", "--duration", "0"]);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn leaks_finds_a_steadily_growing_stack() {
    let Some(_kernel) = require_kernel() else {
        return;
    };
    let fs = Tmpfs::mount("leaks");
    let file = fs.0.join("held");
    std::fs::write(&file, b"x").unwrap();
    let target = file.clone();
    // 200 xattrs more every half second, from 1.5 s on, for 6 s.
    let holder = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        for step in 0..12 {
            hold_xattrs(&target, step * 200..(step + 1) * 200, VALUE);
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let out = memtrace(&[
        "leaks",
        "--duration",
        "9",
        "--interval",
        "1",
        "--profile.sample-bytes",
        "8192",
        "--json",
    ]);
    holder.join().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_no_addresses(&text);
    let suspects: serde_json::Value = serde_json::from_str(&text).expect("JSON");
    let xattr = suspects
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["function"] == "simple_xattr_alloc" && s["allocator"] == "kmalloc")
        .unwrap_or_else(|| panic!("simple_xattr_alloc is not a suspect: {text}"));
    assert!(
        xattr["growth_bytes_per_second"].as_f64().unwrap() > 100_000.0,
        "{xattr}"
    );
    assert!(
        xattr["oldest_age_seconds"].as_f64().unwrap() > 3.0,
        "{xattr}"
    );
    assert!(xattr["live_bytes"].as_f64().unwrap() > 5e6, "{xattr}");
}
