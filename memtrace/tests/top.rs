//! `memtrace top` on the real kernel: the full screen in tmux (keys, views, filter, resize,
//! every exit path restoring the terminal) and the batch mode, standalone and from a daemon,
//! each finding a workload this test drives.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod cli;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod memcg;
    pub mod tools;
    pub mod worker;
    pub mod xattr;
}

use std::{
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use support::{
    assert::assert_no_addresses,
    daemon::Daemon,
    http::{free_port, get},
    kernel::require_kernel,
    memcg::{Memcg, force_failures},
    tools::need,
    worker::Worker,
    xattr::setxattr_kmalloc,
};

const BIN: &str = env!("CARGO_BIN_EXE_memtrace");

/// A tmux server of its own (a private socket) with one session running `command`.
struct Tmux {
    tmux: PathBuf,
    socket: String,
}

impl Tmux {
    fn start(tmux: &Path, name: &str, command: &str) -> Tmux {
        let t = Tmux {
            tmux: tmux.to_path_buf(),
            socket: format!("memtrace-{name}-{}", std::process::id()),
        };
        t.run(&[
            "new-session",
            "-d",
            "-s",
            "top",
            "-x",
            "160",
            "-y",
            "50",
            command,
        ]);
        t
    }

    fn run(&self, args: &[&str]) -> String {
        let out = Command::new(&self.tmux)
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .output()
            .expect("run tmux");
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", "top"];
        args.extend_from_slice(keys);
        self.run(&args);
    }

    /// Waits until the screen satisfies `ok`; panics with the last screen otherwise.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "waited 60 s for {what}; the screen:\n{s}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn wait_for(&self, needle: &str) -> String {
        self.wait(&format!("{needle:?}"), |s| s.contains(needle))
    }

    /// The pid of the command running in the pane (the child of the pane's shell).
    fn command_pid(&self) -> i32 {
        let shell = self.run(&["display-message", "-p", "-t", "top", "#{pane_pid}"]);
        let shell = shell.trim();
        let children =
            std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children")).unwrap();
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no child of the pane's shell {shell}"))
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new(&self.tmux)
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

/// A thread named `name` that makes kmallocs through setxattr (call site `vmemdup_user`)
/// until dropped.
struct Load {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
    dir: PathBuf,
}

impl Load {
    fn start(name: &str) -> Load {
        let dir = std::env::temp_dir().join(format!("memtrace-top-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("f");
        std::fs::write(&file, b"x").unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || {
                while !flag.load(Ordering::SeqCst) {
                    for _ in 0..50 {
                        setxattr_kmalloc(&file, 1000);
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })
            .unwrap();
        Load {
            stop,
            handle: Some(handle),
            dir,
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shell command for a pane: memtrace top, then its exit status and whether the
/// terminal is back in canonical mode (`icanon`, not raw mode's `-icanon`).
fn pane_command(top_args: &str) -> String {
    format!(
        "{BIN} top {top_args} 2>/tmp/memtrace-top-stderr-$$; echo MEMTRACE-EXIT=$?; \
         stty -a | grep -o -- '-*icanon' | sed 's/^/TTY-/'; cat /tmp/memtrace-top-stderr-$$; sleep 600"
    )
}

/// After memtrace top has exited in the pane: its status, and the terminal restored.
fn assert_exited_restored(t: &Tmux, status: &str) -> String {
    let s = t.wait_for("TTY-");
    assert!(
        s.contains(&format!("MEMTRACE-EXIT={status}")),
        "exit status {status} expected:\n{s}"
    );
    assert!(
        s.contains("TTY-icanon") && !s.contains("TTY--icanon"),
        "the terminal is left in raw mode:\n{s}"
    );
    assert!(
        !s.contains("ALLOCS/S"),
        "the alternate screen was not left:\n{s}"
    );
    s
}

#[test]
fn top_in_tmux_shows_a_known_workload_and_restores_the_terminal() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let Some(tmux) = need("tmux") else {
        return;
    };
    let _load = Load::start("mt-top-work");

    let t = Tmux::start(&tmux, "keys", &pane_command("--interval 0.5"));
    // The call-sites view finds setxattr's kmalloc with a rate.
    let s = t.wait("vmemdup_user with a rate", |s| {
        s.lines()
            .any(|l| l.contains("vmemdup_user") && rate_of(l, "vmemdup_user") > 0.0)
    });
    assert!(s.contains("Call sites — sorted by allocations/s"), "{s}");
    assert!(s.contains("Latest failures"), "{s}");
    assert_no_addresses(&s);

    // `/` filters the rows.
    t.keys(&["/"]);
    t.wait_for("filter: ");
    t.keys(&["vmemdup", "Enter"]);
    let s = t.wait_for("filter \"vmemdup\"");
    let rows: Vec<&str> = s.lines().filter(|l| l.contains("vmemdup_user")).collect();
    assert_eq!(rows.len(), 1, "only the matching row is left:\n{s}");
    assert!(
        !s.contains("alloc_empty_file"),
        "other rows are filtered out:\n{s}"
    );
    // The selected row's histogram: kmalloc sizes, where setxattr's 1000 B land in ≤ 1 KiB.
    assert!(s.contains("kmalloc sizes/s"), "the histogram pane:\n{s}");
    assert!(
        s.lines().any(|l| l.contains("≤ 1.0 KiB █")),
        "the histogram pane:\n{s}"
    );
    std::thread::sleep(Duration::from_millis(600)); // tmux's escape-time
    t.keys(&["Escape"]);
    t.wait("the filter cleared", |s| !s.contains("filter \""));

    // Tab switches to the processes view, where the worker's name shows with its kmallocs.
    std::thread::sleep(Duration::from_millis(600));
    t.keys(&["Tab", "Tab"]);
    let s = t.wait("the worker in the processes view", |s| {
        s.contains("Processes — sorted") && s.lines().any(|l| rate_of(l, "mt-top-work") > 0.0)
    });
    assert!(
        s.lines()
            .any(|l| l.contains("kmalloc") && l.contains("mt-top-work")),
        "{s}"
    );

    // `s` sorts by bytes, `?` shows help (any key closes it), digits pick views, `p` pauses.
    t.keys(&["s"]);
    t.wait_for("Processes — sorted by bytes/s");
    t.keys(&["?"]);
    t.wait_for("memtrace top: keys");
    t.keys(&["x"]);
    t.wait("the help closed", |s| !s.contains("memtrace top: keys"));
    for (key, title) in [
        ("4", "Page orders × migrate type"),
        ("5", "vmalloc — sorted"),
        ("2", "Slab caches — sorted"),
        ("1", "Call sites — sorted"),
    ] {
        t.keys(&[key]);
        t.wait_for(title);
    }
    t.keys(&["p"]);
    t.wait_for("PAUSED");
    t.keys(&["p"]);
    t.wait("resumed", |s| !s.contains("PAUSED"));

    // A tiny terminal says so; the full size comes back.
    t.run(&["resize-window", "-t", "top", "-x", "30", "-y", "8"]);
    t.wait_for("too small");
    t.run(&["resize-window", "-t", "top", "-x", "160", "-y", "50"]);
    t.wait_for("ALLOCS/S");

    t.keys(&["q"]);
    assert_exited_restored(&t, "0");
    drop(t);

    // Ctrl-C, SIGTERM and a panic restore the terminal too.
    let t = Tmux::start(&tmux, "ctrlc", &pane_command("--interval 0.5"));
    t.wait_for("ALLOCS/S");
    t.keys(&["C-c"]);
    assert_exited_restored(&t, "0");
    drop(t);

    let t = Tmux::start(&tmux, "term", &pane_command("--interval 0.5 --view pages"));
    t.wait_for("Page orders");
    // SAFETY: signalling the memtrace process this test started.
    unsafe { libc::kill(t.command_pid(), libc::SIGTERM) };
    assert_exited_restored(&t, "0");
    drop(t);

    // The terminal going away (tmux killed, an SSH session dropped) ends it too, promptly,
    // instead of leaving it spinning on a dead terminal with its programs attached.
    let t = Tmux::start(&tmux, "hangup", &pane_command("--interval 0.5"));
    t.wait_for("ALLOCS/S");
    let pid = t.command_pid();
    drop(t); // kills the tmux server: the pane's terminal hangs up
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        // Gone, or a zombie nobody reaps (its shell died with the terminal).
        let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit(')').next().map(|r| r.trim().chars().next()))
            .flatten();
        if matches!(state, None | Some('Z' | 'X')) {
            break;
        }
        if Instant::now() > deadline {
            // SAFETY: killing the process this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            panic!("memtrace top still runs (state {state:?}) 10 s after its terminal hung up");
        }
        std::thread::sleep(Duration::from_millis(100));
    }

    let t = Tmux::start(
        &tmux,
        "panic",
        &format!("MEMTRACE_TOP_TEST_PANIC=1 {}", pane_command("")),
    );
    let s = assert_exited_restored(&t, "101");
    assert!(s.contains("MEMTRACE_TOP_TEST_PANIC is set"), "{s}");
}

/// The allocations/s of the first row mentioning `name` (0 if none): the number after the
/// name, in `1.5k`-style units.
fn rate_of(line: &str, name: &str) -> f64 {
    let Some(i) = line.find(name) else {
        return 0.0;
    };
    line[i + name.len()..]
        .split_whitespace()
        .next()
        .map_or(0.0, parse_count)
}

fn parse_count(s: &str) -> f64 {
    let (num, mult) = match s.chars().last() {
        Some('k') => (&s[..s.len() - 1], 1e3),
        Some('M') => (&s[..s.len() - 1], 1e6),
        Some('G') => (&s[..s.len() - 1], 1e9),
        _ => (s, 1.0),
    };
    num.parse::<f64>().map_or(0.0, |v| v * mult)
}

/// The row of a batch snapshot whose first two cells are `allocator` and `name`: its
/// cells (numbers keep their units, e.g. `5.7 KiB/s` is two cells).
fn batch_row<'a>(snapshot: &'a str, allocator: &str, name: &str) -> Option<Vec<&'a str>> {
    snapshot.lines().find_map(|l| {
        let cells: Vec<&str> = l.split_whitespace().collect();
        (cells.first() == Some(&allocator) && cells.get(1) == Some(&name)).then_some(cells)
    })
}

/// Runs `memtrace top args…` in batch mode; calls `during` once the first snapshot is out
/// (its programs attached, or its daemon read), and returns the snapshots.
fn batch(args: &[&str], during: impl FnOnce()) -> Vec<String> {
    let mut child = Command::new(BIN)
        .arg("top")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start memtrace top");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    let mut line = String::new();
    // The first snapshot ends with its failures list: read until the next one starts.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        line.clear();
        let n = out.read_line(&mut line).unwrap();
        assert!(
            n > 0,
            "memtrace top ended before its first snapshot: {first}"
        );
        first.push_str(&line);
        if line.starts_with("Latest failures") {
            break;
        }
        assert!(Instant::now() < deadline, "no first snapshot in 60 s");
    }
    during();
    let mut rest = String::new();
    out.read_to_string(&mut rest).unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "memtrace top {args:?}: {status}\n{err}");
    let all = format!("{first}{rest}");
    assert_no_addresses(&all);
    all.split("memtrace top — ")
        .filter(|s| !s.trim().is_empty())
        .map(str::to_string)
        .collect()
}

#[test]
fn batch_mode_finds_a_known_workload_standalone_and_from_a_daemon() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("memtrace-top-batch-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("f");
    std::fs::write(&file, b"x").unwrap();
    let worker = Worker::spawn(); // its task name is "memtrace-work"
    const CALLS: usize = 400;
    let drive = |worker: &Worker| {
        let file = file.clone();
        worker.run(move || {
            for _ in 0..CALLS {
                setxattr_kmalloc(&file, 1000);
            }
        });
    };

    // Standalone: the second snapshot counts every kmalloc the worker made after the first.
    let snaps = batch(
        &[
            "--batch",
            "--iterations",
            "2",
            "--interval",
            "2",
            "--view",
            "processes",
            "--filter",
            "memtrace-work",
        ],
        || drive(&worker),
    );
    assert_eq!(snaps.len(), 2, "{snaps:?}");
    assert!(snaps[1].contains("this process's probes"), "{}", snaps[1]);
    let row = batch_row(&snaps[1], "kmalloc", "memtrace-work")
        .unwrap_or_else(|| panic!("no kmalloc row for the worker:\n{}", snaps[1]));
    // ALLOCATOR COMM ALLOCS/S BYTES/S(2) ALLOCS …
    assert!(parse_count(row[2]) > 0.0, "a rate: {row:?}");
    assert!(
        parse_count(row[5]) >= CALLS as f64,
        "at least the worker's {CALLS} setxattr kmallocs: {row:?}"
    );

    // From a daemon: the same model, read from /metrics. Every call site gets its own series:
    // on a busy machine more than the default 50 kmalloc call sites can take the slots before
    // the worker's first setxattr, and vmemdup_user would then count in `other`.
    let daemon = Daemon::start_with(free_port(), &["--callsites.max", "1000"]);
    let url = format!("http://127.0.0.1:{}", daemon.port);
    let snaps = batch(
        &[
            "--from",
            &url,
            "--batch",
            "--iterations",
            "2",
            "--interval",
            "2",
            "--view",
            "callsites",
            "--filter",
            "vmemdup",
        ],
        || drive(&worker),
    );
    let row = batch_row(&snaps[1], "kmalloc", "vmemdup_user")
        .unwrap_or_else(|| panic!("no vmemdup_user row:\n{}", snaps[1]));
    assert!(snaps[1].contains(&format!("{url}/metrics")), "{}", snaps[1]);
    assert!(
        parse_count(row[2]) * 2.0 >= CALLS as f64 * 0.9,
        "about {CALLS} calls in 2 s: {row:?}"
    );

    // A real failure shows in the latest failures with its call site, in both modes, and
    // the daemon serves it at /api/failures.
    let memcg = Memcg::new(64 << 10);
    let shm = Path::new("/dev/shm").join(format!("memtrace-top-{}", std::process::id()));
    std::fs::write(&shm, b"x").unwrap();
    let pid = std::process::id();
    for from in [Some(url.as_str()), None] {
        let mut args = vec!["--batch", "--iterations", "2", "--interval", "3"];
        if let Some(u) = from {
            args.extend(["--from", u]);
        }
        let snaps = batch(&args, || force_failures(&worker, &memcg, &shm, 2));
        assert_eq!(snaps.len(), 2, "{snaps:?}");
        let s = &snaps[1];
        eprintln!("{from:?}: {s}");
        let failures = s.split("Latest failures").nth(1).unwrap_or("");
        assert!(
            failures
                .lines()
                .any(|l| l.contains(&format!("memtrace-work[{pid}] kmalloc")) && l.contains("+0x")),
            "{from:?}: the worker's failed kmalloc with its call site:\n{s}"
        );
        let kmalloc = s
            .lines()
            .find(|l| l.starts_with("kmalloc "))
            .and_then(|l| l.split_whitespace().last())
            .map_or(0.0, parse_count);
        assert!(
            kmalloc >= 1.0,
            "{from:?}: kmalloc failures in the header:\n{s}"
        );
    }
    let (code, body) = get(daemon.port, "/api/failures").unwrap();
    assert_eq!(code, 200);
    assert_no_addresses(&body);
    let list: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let mine: Vec<&serde_json::Value> = list
        .iter()
        .filter(|r| r["tid"] == worker.tid && r["kind"] == "failure")
        .collect();
    assert!(!mine.is_empty(), "{body}");
    let seqs: Vec<u64> = list.iter().map(|r| r["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    assert!(mine.iter().all(|r| r["comm"] == "memtrace-work"));
    drop(memcg);
    let _ = std::fs::remove_file(&shm);
    let _ = std::fs::remove_dir_all(&dir);

    // Errors: one line, non-zero exit.
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let out = support::cli::memtrace(&["top", "--from", &nobody, "--once"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains("no memtrace daemon answered"), "{err}");
    let out = support::cli::memtrace(&["top"]);
    assert_eq!(out.status.code(), Some(1), "stdout is a pipe here");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("use --batch or --once"), "{err}");
}
