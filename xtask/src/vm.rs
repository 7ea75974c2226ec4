//! `cargo xtask vm-test`: the kernel integration tests (`kernel`, `trace`, `daemon`, `limits`,
//! `faults`) on other kernels, each booted in qemu from a gzip'd initramfs.
//!
//! Per kernel series: Debian's newest `linux-image-*` package of that series is fetched with a
//! private apt configuration (its own sources, lists and cache under
//! `$XDG_CACHE_HOME/memtrace-vm`, the mirrors read from the system's sources; the system's apt
//! state is never touched), and its `boot/vmlinuz-*` and one module without dependencies
//! ([`TEST_MODULE`], decompressed) are kept there. The test binaries are built once; the
//! initramfs holds busybox, bpftool, the memtrace binary and the test binaries at the absolute
//! paths cargo built them at (the tests name the binary by its compiled-in path), their shared
//! libraries, and an `/init` that mounts what the tests need, runs every test binary with
//! markers around its output on the serial console, and powers off. Each kernel's module is a
//! second, small archive appended to that initramfs (the kernel unpacks concatenated
//! archives), at [`MODULE_IN_VM`], named to the tests by `MEMTRACE_TEST_MODULE`. The console goes to
//! stdout and to `target/vm-test/<series>/console.log`; the markers and libtest's summary lines
//! give one verdict line per kernel.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context as _, anyhow, bail};

/// A kernel series: Debian's image packages of it are named `prefix` + a number + `suffix`
/// (the ABI number for 5.10 and 6.1, the upstream patch level for 6.12).
pub struct Series {
    pub name: &'static str,
    prefix: &'static str,
    suffix: &'static str,
    /// The same names as an apt regular expression, for `apt-cache search --names-only`.
    search: &'static str,
}

pub const SERIES: &[Series] = &[
    Series {
        name: "5.10",
        prefix: "linux-image-5.10.0-",
        suffix: "-amd64",
        search: r"^linux-image-5\.10\.0-[0-9]+-amd64$",
    },
    Series {
        name: "6.1",
        prefix: "linux-image-6.1.0-",
        suffix: "-amd64",
        search: r"^linux-image-6\.1\.0-[0-9]+-amd64$",
    },
    Series {
        name: "6.12",
        prefix: "linux-image-6.12.",
        suffix: "+deb12-amd64",
        search: r"^linux-image-6\.12\.[0-9]+\+deb12-amd64$",
    },
];

/// The integration test binaries run in the VM (`memtrace/tests/<name>.rs`). The others need
/// programs the VM does not have (prometheus, promtool, tmux, systemd-analyze,
/// kubernetes-validate) or test no kernel.
const TEST_BINARIES: &[&str] = &["kernel", "trace", "daemon", "limits", "faults"];

/// The module the fault tests load and unload in the VM (the host may have no module
/// support): `dummy`, a network driver with no dependency, in every Debian kernel, under
/// `lib/modules/<release>/` of the image package (compressed or not).
const TEST_MODULE: &str = "kernel/drivers/net/dummy.ko";
/// Where the module is in the VM (uncompressed: busybox cannot insmod an xz'd module, nor
/// the kernel take one through `finit_module` before 6.x's in-kernel decompression).
const MODULE_IN_VM: &str = "/lib/modules/memtrace-test/dummy.ko";

/// The suites the private sources list names: 6.1 and 6.12 are in bookworm(-security), 5.10 in
/// bullseye(-security).
const ARCHIVE_SUITES: &[&str] = &["bookworm", "bullseye"];
const SECURITY_SUITES: &[&str] = &["bookworm-security", "bullseye-security"];
const KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// busybox applets the initramfs links: what `/init` uses, and `sh` and `tail`, which the
/// OOM test runs.
const APPLETS: &[&str] = &[
    "sh", "mount", "umount", "mkdir", "rmdir", "cat", "echo", "grep", "ip", "uname", "poweroff",
    "sleep", "tail", "head", "ls", "ps", "kill", "dmesg", "env", "free", "true", "false", "test",
    "[",
];

const MARK: &str = "=== memtrace-vm: ";
const KERNEL_CMDLINE: &str = "console=ttyS0 quiet panic=-1 rdinit=/init";

pub struct Options {
    /// Series names (of [`SERIES`]); empty: all.
    pub kernels: Vec<String>,
    /// Extra arguments for every test binary.
    pub test_args: Vec<String>,
    /// Wall-clock limit per kernel, boot to power-off.
    pub timeout: Duration,
}

pub fn run(target_dir: &Path, opts: &Options) -> anyhow::Result<()> {
    let mut series: Vec<&Series> = Vec::new();
    for name in &opts.kernels {
        let s = SERIES
            .iter()
            .find(|s| s.name == name.as_str())
            .ok_or_else(|| anyhow!("unknown kernel series {name}"))?;
        if !series.iter().any(|x| x.name == s.name) {
            series.push(s);
        }
    }
    if series.is_empty() {
        series = SERIES.iter().collect();
    }

    let built = build()?;
    let out = target_dir.join("vm-test");
    std::fs::create_dir_all(&out).with_context(|| format!("create {}", out.display()))?;
    let base_initrd = out.join("initramfs.cpio.gz");
    write_initramfs(&built, &opts.test_args, &base_initrd)?;
    let names: Vec<String> = built.tests.iter().map(|(n, _)| n.clone()).collect();

    let cache = cache_dir()?;
    // The package lists are needed by every kernel: without them none can run.
    let apt = Apt::prepare(&cache.join("apt"))?;
    let accel = if kvm_usable() {
        ["-accel", "kvm", "-cpu", "host"]
    } else {
        // Single-threaded TCG: multi-threaded TCG once ran a stale breakpoint of the kernel's
        // live text patching (tracepoint static keys flip at every attach) and 6.12 oopsed
        // ("Oops: int3" in ttwu_do_activate).
        ["-accel", "tcg,thread=single", "-cpu", "max"]
    };

    let mut runs = Vec::new();
    for s in series {
        let console = out.join(s.name).join("console.log");
        let mut run = KernelRun {
            series: s.name,
            package: String::new(),
            outcome: Outcome::Error(String::new()),
            check: None,
            elapsed: Duration::ZERO,
            console,
        };
        let fetched = apt
            .kernel(s, &cache.join("kernels"))
            .and_then(|(p, v, module)| {
                let initrd = out.join(s.name).join("initramfs.cpio.gz");
                with_module(&base_initrd, &module, &initrd)?;
                Ok((p, v, initrd))
            });
        match fetched {
            Err(e) => run.outcome = Outcome::Error(format!("{e:#}")),
            Ok((package, vmlinuz, initrd)) => {
                run.package = package;
                eprintln!(
                    "xtask: vm-test {}: booting {} ({}), console in {}",
                    s.name,
                    vmlinuz.display(),
                    accel[1],
                    run.console.display()
                );
                let started = Instant::now();
                run.outcome = match boot(&vmlinuz, &initrd, &accel, &run.console, opts.timeout) {
                    Ok((text, timed_out)) => {
                        run.check = check_report(&text);
                        Outcome::Ran {
                            timed_out,
                            console: parse_console(&text),
                        }
                    }
                    Err(e) => Outcome::Error(format!("{e:#}")),
                };
                run.elapsed = started.elapsed();
            }
        }
        eprintln!("xtask: {}", run.verdict(&names).1);
        runs.push(run);
    }

    println!();
    let (mut passed, mut failed, mut all_ok) = (0, 0, true);
    for run in &runs {
        let (ok, line) = run.verdict(&names);
        let (p, f) = run.totals(&names);
        passed += p;
        failed += f;
        all_ok &= ok;
        println!("{line}");
    }
    let report = out.join("supported-kernels.md");
    std::fs::write(&report, supported_kernels(&runs))
        .with_context(|| format!("write {}", report.display()))?;
    println!(
        "what memtrace check says of each kernel: {}",
        report.display()
    );
    println!("{passed} passed, {failed} failed");
    if !all_ok {
        bail!("vm-test failed");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The supported-kernels report

/// The `memtrace check --json` object between the CHECK markers of a console.
fn check_report(console: &str) -> Option<serde_json::Value> {
    let begin = format!("{MARK}CHECK-BEGIN");
    let end = format!("{MARK}CHECK-END");
    let start = console.find(&begin)? + begin.len();
    let stop = start + console[start..].find(&end)?;
    // The pretty-printed object, without the kernel messages the console may interleave.
    let text: String = console[start..stop]
        .lines()
        .map(|l| l.trim_end_matches('\r'))
        .filter(|l| !l.trim_start().starts_with('['))
        .collect::<Vec<_>>()
        .join("\n");
    let (from, to) = (text.find('{')?, text.rfind('}')?);
    serde_json::from_str(text.get(from..=to)?).ok()
}

/// A Markdown section per kernel: how each probe attaches and what the kernel lacks, from
/// `memtrace check` inside it.
fn supported_kernels(runs: &[KernelRun]) -> String {
    let mut out = String::from(
        "# memtrace on each kernel (from `memtrace check` inside `cargo xtask vm-test`)\n",
    );
    for run in runs {
        let Some(check) = &run.check else {
            out.push_str(&format!(
                "\n## {} ({}): no check report\n",
                run.series, run.package
            ));
            continue;
        };
        out.push_str(&format!(
            "\n## Linux {} ({})\n\n| probe | attached as |\n| --- | --- |\n",
            check["kernel"].as_str().unwrap_or("?"),
            run.package
        ));
        for p in check["probes"].as_array().into_iter().flatten() {
            let probe = p["probe"].as_str().unwrap_or("?");
            let uses = match (p["will_use"].as_str(), p["program"].as_str()) {
                _ if !p["not_in_this_kernel"].is_null() => "not in this kernel".to_string(),
                (Some(mode), Some(program)) => {
                    // memtrace's own names for the attach modes (its JSON says btf, raw).
                    let mode = match mode {
                        "btf" => "tp_btf",
                        "raw" => "raw_tp",
                        other => other,
                    };
                    format!("{mode} (`{program}`)")
                }
                _ => "**missing**".to_string(),
            };
            out.push_str(&format!("| `{probe}` | {uses} |\n"));
        }
        let missing: Vec<&str> = check["missing"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m.as_str())
            .collect();
        if missing.is_empty() {
            out.push_str("\nNothing is missing.\n");
        } else {
            out.push_str("\nOn this kernel memtrace lacks:\n\n");
            for m in missing {
                out.push_str(&format!("- {m}\n"));
            }
        }
    }
    out
}

// ---------------------------------------------------------------------------------------
// Building

struct Built {
    /// The memtrace binary, at the path the tests have compiled in.
    memtrace: PathBuf,
    /// (name, path) of each test binary, in [`TEST_BINARIES`] order.
    tests: Vec<(String, PathBuf)>,
    /// memtrace's package directory: cargo runs test binaries there.
    package_dir: PathBuf,
}

/// One `compiler-artifact` message of cargo's JSON output.
#[derive(Debug, PartialEq)]
struct Artifact {
    name: String,
    kind: Vec<String>,
    test: bool,
    executable: PathBuf,
    manifest_path: PathBuf,
}

/// The executables among cargo's `--message-format=json` lines.
fn parse_artifacts(json_lines: &str) -> Vec<Artifact> {
    json_lines
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact")
        .filter_map(|v| {
            Some(Artifact {
                name: v["target"]["name"].as_str()?.to_string(),
                kind: v["target"]["kind"]
                    .as_array()?
                    .iter()
                    .filter_map(|k| Some(k.as_str()?.to_string()))
                    .collect(),
                test: v["profile"]["test"].as_bool().unwrap_or(false),
                executable: PathBuf::from(v["executable"].as_str()?),
                manifest_path: PathBuf::from(v["manifest_path"].as_str()?),
            })
        })
        .collect()
}

fn cargo_json(args: &[&str]) -> anyhow::Result<Vec<Artifact>> {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args)
        .arg("--message-format=json-render-diagnostics")
        .current_dir(crate::workspace_root())
        .stderr(Stdio::inherit());
    eprintln!("xtask: running {cmd:?}");
    let out = cmd.output().context("cannot start cargo")?;
    if !out.status.success() {
        bail!("{cmd:?} failed with {}", out.status);
    }
    Ok(parse_artifacts(&String::from_utf8_lossy(&out.stdout)))
}

fn build() -> anyhow::Result<Built> {
    let bins = cargo_json(&["build", "--release", "--package", "memtrace"])?;
    let memtrace = bins
        .iter()
        .find(|a| a.name == "memtrace" && a.kind.iter().any(|k| k == "bin"))
        .context("cargo built no memtrace binary")?;
    let mut args = vec!["test", "--release", "--package", "memtrace", "--no-run"];
    for t in TEST_BINARIES {
        args.extend(["--test", t]);
    }
    let arts = cargo_json(&args)?;
    let mut tests = Vec::new();
    for t in TEST_BINARIES {
        let a = arts
            .iter()
            .find(|a| a.test && a.name == *t && a.kind.iter().any(|k| k == "test"))
            .with_context(|| format!("cargo built no `{t}` test binary"))?;
        tests.push((t.to_string(), a.executable.clone()));
    }
    Ok(Built {
        memtrace: memtrace.executable.clone(),
        tests,
        package_dir: memtrace
            .manifest_path
            .parent()
            .context("a manifest has a directory")?
            .to_path_buf(),
    })
}

// ---------------------------------------------------------------------------------------
// The initramfs

/// A newc ("070701") cpio archive, the format the kernel unpacks an initramfs from.
#[derive(Default)]
struct Cpio {
    buf: Vec<u8>,
    ino: u32,
    dirs: BTreeSet<String>,
}

impl Cpio {
    fn entry(&mut self, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        self.ino += 1;
        self.raw_entry(self.ino, path, mode, rdev, data);
    }

    fn raw_entry(&mut self, ino: u32, path: &str, mode: u32, rdev: (u32, u32), data: &[u8]) {
        let name = path.trim_start_matches('/');
        let nlink = if mode & 0o170000 == 0o040000 { 2 } else { 1 };
        let header = format!(
            "070701{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}{:08X}",
            ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime
            data.len(),
            0, // devmajor
            0, // devminor
            rdev.0,
            rdev.1,
            name.len() + 1,
            0, // check
        );
        self.buf.extend_from_slice(header.as_bytes());
        self.buf.extend_from_slice(name.as_bytes());
        self.buf.push(0);
        self.pad();
        self.buf.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        self.buf.resize(self.buf.len().next_multiple_of(4), 0);
    }

    /// A directory and its missing parents.
    fn dir(&mut self, path: &str) {
        let path = path.trim_matches('/');
        if path.is_empty() || self.dirs.contains(path) {
            return;
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent);
        }
        self.dirs.insert(path.to_string());
        self.entry(path, 0o040755, (0, 0), &[]);
    }

    fn parent(&mut self, path: &str) {
        if let Some((parent, _)) = path.trim_start_matches('/').rsplit_once('/') {
            self.dir(parent);
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) {
        self.parent(path);
        self.entry(path, 0o100000 | mode, (0, 0), data);
    }

    fn symlink(&mut self, path: &str, target: &str) {
        self.parent(path);
        self.entry(path, 0o120777, (0, 0), target.as_bytes());
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) {
        self.parent(path);
        self.entry(path, 0o020000 | mode, (major, minor), &[]);
    }

    /// The archive, ended by its trailer entry.
    fn finish(mut self) -> Vec<u8> {
        self.raw_entry(0, "TRAILER!!!", 0, (0, 0), &[]);
        self.buf
    }
}

/// The shared libraries `ldd` lists for `binary` (and the dynamic loader); none for a static
/// binary.
fn shared_libraries(binary: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let out = Command::new("ldd")
        .arg(binary)
        .output()
        .context("cannot start ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // "not a dynamic executable": a static binary needs nothing.
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
            || text.contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!(
            "ldd {} failed: {}",
            binary.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", binary.display()))
}

fn parse_ldd(text: &str) -> anyhow::Result<Vec<PathBuf>> {
    let mut libs = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.contains("=> not found") {
            bail!("a library is missing: {line}");
        }
        // `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)`, or the loader
        // `/lib64/ld-linux-x86-64.so.2 (0x...)`; the vDSO has no path.
        let path = match line.split_once("=>") {
            Some((_, rest)) => rest.trim(),
            None => line,
        };
        let path = path.split(" (").next().unwrap_or("").trim();
        if path.starts_with('/') {
            libs.push(PathBuf::from(path));
        }
    }
    Ok(libs)
}

fn busybox() -> anyhow::Result<PathBuf> {
    ["/bin/busybox", "/usr/bin/busybox"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("busybox is missing: run `cargo xtask setup` (it installs busybox-static)")
}

fn bpftool() -> anyhow::Result<PathBuf> {
    ["/usr/sbin/bpftool", "/sbin/bpftool", "/usr/bin/bpftool"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
        .context("bpftool is missing: run `cargo xtask setup` (it installs bpftool)")
}

/// Writes to `dest` the initramfs `base` followed by a second archive holding `module` at
/// [`MODULE_IN_VM`] (the kernel unpacks both, one after the other).
fn with_module(base: &Path, module: &Path, dest: &Path) -> anyhow::Result<()> {
    let mut cpio = Cpio::default();
    let data = std::fs::read(module).with_context(|| format!("read {}", module.display()))?;
    cpio.file(MODULE_IN_VM, 0o644, &data);
    let extra = gzip(&cpio.finish())?;
    let mut all = std::fs::read(base).with_context(|| format!("read {}", base.display()))?;
    all.extend_from_slice(&extra);
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(dest, all).with_context(|| format!("write {}", dest.display()))
}

/// `data` through `gzip -1`.
fn gzip(data: &[u8]) -> anyhow::Result<Vec<u8>> {
    let mut child = Command::new("gzip")
        .arg("-1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start gzip")?;
    let mut stdin = child.stdin.take().context("gzip's stdin")?;
    let data = data.to_vec();
    // Written from a thread: gzip's output fills its pipe while the input is still coming.
    let writer = std::thread::spawn(move || stdin.write_all(&data));
    let out = child.wait_with_output().context("gzip")?;
    writer
        .join()
        .map_err(|_| anyhow!("the gzip writer panicked"))?
        .context("write to gzip")?;
    if !out.status.success() {
        bail!("gzip failed with {}", out.status);
    }
    Ok(out.stdout)
}

/// `s` as one shell word.
fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b))
    {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The initramfs's `/init`: mounts, loopback, then every test binary between markers. A
/// workspace under /tmp would be hidden by a tmpfs there: then /tmp stays on the root file
/// system (itself in memory, and writable).
fn init_script(
    tests: &[(String, PathBuf)],
    cwd: &Path,
    args: &[String],
    memtrace: &Path,
) -> String {
    let tmpfs = if cwd.starts_with("/tmp") || tests.iter().any(|(_, p)| p.starts_with("/tmp")) {
        ""
    } else {
        "mount -t tmpfs tmpfs /tmp\n"
    };
    let mut s = format!(
        r#"#!/bin/sh
# Generated by `cargo xtask vm-test` (xtask/src/vm.rs).
export PATH=/bin
set -o pipefail
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/shm
mount -t tmpfs tmpfs /dev/shm
{tmpfs}mount -t tracefs tracefs /sys/kernel/tracing
mount -t debugfs debugfs /sys/kernel/debug
mount -t bpf bpf /sys/fs/bpf
mount -t tmpfs cgroup /sys/fs/cgroup
mkdir /sys/fs/cgroup/memory
if grep -q '^memory[[:space:]]' /proc/cgroups &&
    mount -t cgroup -o memory memory /sys/fs/cgroup/memory 2>/dev/null; then
    echo "=== memtrace-vm: CGROUP v1 memory controller at /sys/fs/cgroup/memory"
else
    # No cgroup-v1 memory controller (6.12: CONFIG_MEMCG_V1 is off): cgroup2 instead.
    rmdir /sys/fs/cgroup/memory
    mkdir /sys/fs/cgroup/unified
    mount -t cgroup2 cgroup2 /sys/fs/cgroup/unified
    echo +memory > /sys/fs/cgroup/unified/cgroup.subtree_control
    echo "=== memtrace-vm: CGROUP v2 at /sys/fs/cgroup/unified (no v1 memory controller)"
fi
ip link set lo up
export CI=1 RUST_BACKTRACE=1 RUST_LOG=info HOME=/root TMPDIR=/tmp
# The fault tests: they run under emulation (looser time bounds), and load this module.
export MEMTRACE_VM=1 MEMTRACE_TEST_MODULE={MODULE_IN_VM}
echo "=== memtrace-vm: UNAME $(uname -r)"
"#
    );
    s.push_str(&format!("cd {}\n", shell_quote(&cwd.to_string_lossy())));
    // What memtrace itself says of this kernel, for the supported-kernels report.
    s.push_str(&format!(
        "echo \"{MARK}CHECK-BEGIN\"\n{} check --json 2>/dev/null | cat\necho\necho \"{MARK}CHECK-END\"\n",
        shell_quote(&memtrace.to_string_lossy())
    ));
    let extra: String = args
        .iter()
        .map(|a| format!(" {}", shell_quote(a)))
        .collect();
    // Output through a pipe, as in CI: memtrace colours its logs on a terminal, and the
    // console is one.
    for (name, path) in tests {
        s.push_str(&format!(
            "echo \"{MARK}BEGIN {name}\"\n{} --test-threads=1{extra} 2>&1 | cat\necho \"{MARK}END {name} rc=$?\"\n",
            shell_quote(&path.to_string_lossy())
        ));
    }
    s.push_str(&format!("echo \"{MARK}DONE\"\npoweroff -f\n"));
    s
}

fn write_initramfs(built: &Built, args: &[String], dest: &Path) -> anyhow::Result<()> {
    let mut cpio = Cpio::default();
    for d in ["proc", "sys", "dev", "tmp", "root", "etc"] {
        cpio.dir(d);
    }
    cpio.char_device("dev/console", 0o600, 5, 1);
    cpio.file("etc/hosts", 0o644, b"127.0.0.1 localhost\n::1 localhost\n");
    cpio.file("etc/passwd", 0o644, b"root:x:0:0:root:/root:/bin/sh\n");
    cpio.file("etc/group", 0o644, b"root:x:0:\n");

    let busybox = busybox()?;
    let mut files: BTreeMap<PathBuf, PathBuf> = BTreeMap::new();
    files.insert("/bin/busybox".into(), busybox.clone());
    // The SIGKILL fault test lists programs and links with it.
    files.insert("/bin/bpftool".into(), bpftool()?);
    files.insert(built.memtrace.clone(), built.memtrace.clone());
    for (_, t) in &built.tests {
        files.insert(t.clone(), t.clone());
    }
    let mut libs = BTreeSet::new();
    for source in files.values() {
        libs.extend(shared_libraries(source)?);
    }
    for l in libs {
        files.insert(l.clone(), l);
    }
    for (dest_path, source) in &files {
        let data = std::fs::read(source).with_context(|| format!("read {}", source.display()))?;
        cpio.file(&dest_path.to_string_lossy(), 0o755, &data);
    }
    for a in APPLETS {
        cpio.symlink(&format!("bin/{a}"), "busybox");
    }
    cpio.dir(&built.package_dir.to_string_lossy());
    let init = init_script(&built.tests, &built.package_dir, args, &built.memtrace);
    cpio.file("init", 0o755, init.as_bytes());
    let archive = cpio.finish();

    std::fs::write(dest, gzip(&archive)?).with_context(|| format!("write {}", dest.display()))?;
    eprintln!(
        "xtask: vm-test: wrote {} ({} MiB uncompressed)",
        dest.display(),
        archive.len() >> 20
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Kernels from Debian's archive, through a private apt configuration

fn cache_dir() -> anyhow::Result<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .context("neither XDG_CACHE_HOME nor HOME is set")?;
    Ok(base.join("memtrace-vm"))
}

/// One `deb` source: a URI, a suite and its components.
#[derive(Debug, PartialEq)]
struct Source {
    uri: String,
    suite: String,
    components: Vec<String>,
}

/// The `deb` entries of a deb822 `.sources` file.
fn parse_deb822(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    let mut stanza: Vec<(String, String)> = Vec::new();
    let mut flush = |stanza: &mut Vec<(String, String)>| {
        let get = |k: &str| {
            stanza
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case(k))
                .map(|(_, v)| v.as_str())
        };
        let enabled = get("Enabled").is_none_or(|v| !v.trim().eq_ignore_ascii_case("no"));
        let deb = get("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if enabled && deb {
            let components: Vec<String> = get("Components")
                .unwrap_or("")
                .split_whitespace()
                .map(String::from)
                .collect();
            for uri in get("URIs").unwrap_or("").split_whitespace() {
                for suite in get("Suites").unwrap_or("").split_whitespace() {
                    out.push(Source {
                        uri: uri.trim_end_matches('/').to_string(),
                        suite: suite.to_string(),
                        components: components.clone(),
                    });
                }
            }
        }
        stanza.clear();
    };
    for line in text.lines() {
        if line.trim().is_empty() {
            flush(&mut stanza);
        } else if line.starts_with('#') {
            continue;
        } else if line.starts_with([' ', '\t']) {
            if let Some((_, v)) = stanza.last_mut() {
                v.push(' ');
                v.push_str(line.trim());
            }
        } else if let Some((k, v)) = line.split_once(':') {
            stanza.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    flush(&mut stanza);
    out
}

/// The `deb` entries of a one-line `sources.list`.
fn parse_one_line(text: &str) -> Vec<Source> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(rest) = line
            .strip_prefix("deb ")
            .or_else(|| line.strip_prefix("deb\t"))
        else {
            continue;
        };
        let mut rest = rest.trim_start();
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(end) => rest = rest[end + 1..].trim_start(),
                None => continue,
            }
        }
        let mut words = rest.split_whitespace();
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        out.push(Source {
            uri: uri.trim_end_matches('/').to_string(),
            suite: suite.to_string(),
            components: words.map(String::from).collect(),
        });
    }
    out
}

/// The archive and security mirrors: the URIs whose suites include `bookworm` and
/// `bookworm-security`, with the `main` component.
fn mirrors(sources: &[Source]) -> anyhow::Result<(String, Option<String>)> {
    let find = |suite: &str| {
        sources
            .iter()
            .find(|s| s.suite == suite && s.components.iter().any(|c| c == "main"))
            .map(|s| s.uri.clone())
    };
    let archive = find("bookworm").context(
        "no `bookworm main` source in /etc/apt/sources.list.d/debian.sources or \
         /etc/apt/sources.list: vm-test fetches its kernels from that Debian mirror",
    )?;
    Ok((archive, find("bookworm-security")))
}

fn private_sources_list(archive: &str, security: Option<&str>) -> String {
    let mut s = String::new();
    let mut line = |uri: &str, suite: &str| {
        s.push_str(&format!("deb [signed-by={KEYRING}] {uri} {suite} main\n"));
    };
    for suite in ARCHIVE_SUITES {
        line(archive, suite);
    }
    if let Some(sec) = security {
        for suite in SECURITY_SUITES {
            line(sec, suite);
        }
    }
    s
}

/// The number in a package name of `series` (see [`Series`]), if the name is one.
fn package_number(series: &Series, name: &str) -> Option<u64> {
    let n = name
        .strip_prefix(series.prefix)?
        .strip_suffix(series.suffix)?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// The newest package of `series` among `apt-cache search` output lines (`name - summary`).
fn newest_package(series: &Series, search_output: &str) -> Option<String> {
    search_output
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter_map(|name| Some((package_number(series, name)?, name)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, name)| name.to_string())
}

struct Apt {
    dir: PathBuf,
}

impl Apt {
    /// The private configuration: sources from the system's mirrors, lists at most a day old.
    fn prepare(dir: &Path) -> anyhow::Result<Apt> {
        let mut sources = Vec::new();
        let deb822 = Path::new("/etc/apt/sources.list.d/debian.sources");
        if let Ok(text) = std::fs::read_to_string(deb822) {
            sources.extend(parse_deb822(&text));
        }
        if let Ok(text) = std::fs::read_to_string("/etc/apt/sources.list") {
            sources.extend(parse_one_line(&text));
        }
        let (archive, security) = mirrors(&sources)?;
        if security.is_none() {
            eprintln!(
                "xtask: vm-test: warning: no `bookworm-security` source on this system; \
                 the newest kernels of a series may be missing"
            );
        }
        let apt = Apt {
            dir: dir.to_path_buf(),
        };
        for d in ["lists/partial", "cache/archives/partial", "debs"] {
            let d = dir.join(d);
            std::fs::create_dir_all(&d).with_context(|| format!("create {}", d.display()))?;
        }
        let list = private_sources_list(&archive, security.as_deref());
        let list_path = dir.join("sources.list");
        let stamp = dir.join("updated");
        if std::fs::read_to_string(&list_path).ok().as_deref() != Some(list.as_str()) {
            std::fs::write(&list_path, &list)
                .with_context(|| format!("write {}", list_path.display()))?;
            let _ = std::fs::remove_file(&stamp);
        }
        let age = std::fs::metadata(&stamp)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| SystemTime::now().duration_since(t).ok());
        if age.is_none_or(|a| a > Duration::from_secs(24 * 3600)) {
            let res = crate::status(Command::new("apt-get").args(apt.options()).arg("update"));
            match res {
                Ok(()) => std::fs::write(&stamp, b"")?,
                Err(e) if age.is_some() => eprintln!(
                    "xtask: vm-test: warning: {e:#}; using the package lists of the last update"
                ),
                Err(e) => return Err(e),
            }
        }
        Ok(apt)
    }

    fn options(&self) -> Vec<String> {
        let d = |p: &str| self.dir.join(p).to_string_lossy().into_owned();
        [
            format!("Dir::Etc::SourceList={}", d("sources.list")),
            "Dir::Etc::SourceParts=/dev/null".into(),
            format!("Dir::State::Lists={}", d("lists")),
            format!("Dir::Cache={}", d("cache")),
            // The packages installed here are irrelevant to which kernels exist.
            "Dir::State::status=/dev/null".into(),
        ]
        .into_iter()
        .flat_map(|o| ["-o".to_string(), o])
        .collect()
    }

    /// The newest image package of `series`, its vmlinuz and its [`TEST_MODULE`]
    /// (decompressed), downloaded into `kernels` unless they are there already.
    fn kernel(
        &self,
        series: &Series,
        kernels: &Path,
    ) -> anyhow::Result<(String, PathBuf, PathBuf)> {
        let found = crate::output(Command::new("apt-cache").args(self.options()).args([
            "search",
            "--names-only",
            series.search,
        ]))?;
        let package = newest_package(series, &found)
            .with_context(|| format!("no package matches {} in the archive", series.search))?;
        let dir = kernels.join(&package);
        let module = dir.join("dummy.ko");
        if let (Some(v), true) = (find_vmlinuz(&dir), module.is_file()) {
            eprintln!(
                "xtask: vm-test {}: {package} is cached in {}",
                series.name,
                dir.display()
            );
            return Ok((package, v, module));
        }
        let debs = self.dir.join("debs");
        crate::status(
            Command::new("apt-get")
                .args(self.options())
                .args(["download", &package])
                .current_dir(&debs),
        )?;
        let deb = std::fs::read_dir(&debs)?
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| {
                p.file_name().is_some_and(|n| {
                    let n = n.to_string_lossy();
                    n.starts_with(&format!("{package}_")) && n.ends_with(".deb")
                })
            })
            .with_context(|| format!("apt-get download left no {package}_*.deb"))?;
        let tmp = kernels.join(format!("{package}.extract"));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp)?;
        crate::status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tmp))?;
        let extracted = find_vmlinuz(&tmp.join("boot"))
            .with_context(|| format!("{} has no boot/vmlinuz-*", deb.display()))?;
        let packed =
            find_module(&tmp).with_context(|| format!("{} has no {TEST_MODULE}", deb.display()))?;
        std::fs::create_dir_all(&dir)?;
        let dest = dir.join(extracted.file_name().context("vmlinuz has a name")?);
        std::fs::copy(&extracted, &dest)
            .with_context(|| format!("copy {} to {}", extracted.display(), dest.display()))?;
        let data = decompress_module(&packed)?;
        std::fs::write(&module, data).with_context(|| format!("write {}", module.display()))?;
        std::fs::remove_dir_all(&tmp)?;
        std::fs::remove_file(&deb)?;
        Ok((package, dest, module))
    }
}

/// [`TEST_MODULE`] (perhaps `.xz` or `.zst`) under the `lib/modules/<release>/` of an
/// extracted image package (`usr/lib/modules` on a merged /usr).
fn find_module(root: &Path) -> Option<PathBuf> {
    for base in ["lib/modules", "usr/lib/modules"] {
        let Ok(releases) = std::fs::read_dir(root.join(base)) else {
            continue;
        };
        for r in releases.filter_map(Result::ok) {
            for ext in ["", ".xz", ".zst"] {
                let p = r.path().join(format!("{TEST_MODULE}{ext}"));
                if p.is_file() {
                    return Some(p);
                }
            }
        }
    }
    None
}

/// A module file's ELF bytes: as is, or through `xz -dc` / `zstd -dc`.
fn decompress_module(path: &Path) -> anyhow::Result<Vec<u8>> {
    let tool = match path.extension().and_then(|e| e.to_str()) {
        Some("xz") => "xz",
        Some("zst") => "zstd",
        _ => return std::fs::read(path).with_context(|| format!("read {}", path.display())),
    };
    let out = Command::new(tool)
        .arg("-dc")
        .arg(path)
        .output()
        .with_context(|| format!("cannot start {tool} to decompress {}", path.display()))?;
    if !out.status.success() || !out.stdout.starts_with(b"\x7fELF") {
        bail!(
            "{tool} -dc {} failed: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out.stdout)
}

fn find_vmlinuz(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .find(|p| {
            p.is_file()
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("vmlinuz-"))
        })
}

// ---------------------------------------------------------------------------------------
// Booting

/// Hardware virtualisation, where it can run a stock kernel: /dev/kvm opens, and it is not
/// the paravirtual KVM (`kvm_pvm`), which cannot.
fn kvm_usable() -> bool {
    !Path::new("/sys/module/kvm_pvm").exists()
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_ok()
}

/// Boots `vmlinuz` with `initrd`; the serial console is streamed to stdout and to `log`.
/// Returns the console's text and whether the timeout killed qemu.
fn boot(
    vmlinuz: &Path,
    initrd: &Path,
    accel: &[&str],
    log: &Path,
    timeout: Duration,
) -> anyhow::Result<(String, bool)> {
    if let Some(parent) = log.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let mut file =
        std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
    let mut cmd = Command::new("qemu-system-x86_64");
    cmd.args(["-nographic", "-monitor", "none", "-serial", "stdio"])
        .args(["-no-reboot", "-m", "2G", "-smp", "2", "-nic", "none"])
        .args(accel)
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initrd)
        .args(["-append", KERNEL_CMDLINE])
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .spawn()
        .context("cannot start qemu-system-x86_64: run `cargo xtask setup`")?;
    let mut stdout = child.stdout.take().context("qemu's stdout")?;
    let reader = std::thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        let mut filter = EscapeFilter::default();
        let mut clean = Vec::new();
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    clean.clear();
                    filter.filter(&buf[..n], &mut clean);
                    let _ = file.write_all(&clean);
                    let mut out = std::io::stdout().lock();
                    let _ = out.write_all(&clean);
                    let _ = out.flush();
                    all.extend_from_slice(&clean);
                }
            }
        }
        all
    });
    let deadline = Instant::now() + timeout;
    let mut timed_out = false;
    loop {
        if child.try_wait()?.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            let _ = child.kill();
            let _ = child.wait();
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let all = reader
        .join()
        .map_err(|_| anyhow!("the console reader panicked"))?;
    Ok((String::from_utf8_lossy(&all).into_owned(), timed_out))
}

/// Drops terminal escape sequences from a byte stream: the firmware resets and clears the
/// terminal (`ESC c`, `ESC [2J`) and turns line wrapping off (`ESC [?7l`) on the serial
/// console, which would garble the terminal of whoever runs vm-test.
#[derive(Default)]
struct EscapeFilter {
    state: EscapeState,
}

#[derive(Default, Clone, Copy)]
enum EscapeState {
    #[default]
    Text,
    /// After ESC.
    Escape,
    /// Inside `ESC [`, up to its final byte.
    Csi,
}

impl EscapeFilter {
    fn filter(&mut self, input: &[u8], out: &mut Vec<u8>) {
        for &b in input {
            self.state = match (self.state, b) {
                (EscapeState::Text, 0x1b) => EscapeState::Escape,
                (EscapeState::Text, _) => {
                    out.push(b);
                    EscapeState::Text
                }
                (EscapeState::Escape, b'[') => EscapeState::Csi,
                (EscapeState::Escape, _) => EscapeState::Text,
                (EscapeState::Csi, 0x40..=0x7e) => EscapeState::Text,
                (EscapeState::Csi, _) => EscapeState::Csi,
            };
        }
    }
}

// ---------------------------------------------------------------------------------------
// Results

/// libtest's `test result: ok. 14 passed; 0 failed; 0 ignored; 0 measured; 2 filtered out; …`.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
struct Summary {
    passed: u64,
    failed: u64,
    ignored: u64,
    filtered: u64,
}

fn parse_summary(line: &str) -> Option<Summary> {
    let rest = &line[line.find("test result: ")? + "test result: ".len()..];
    let (_, counts) = rest.split_once(". ")?;
    let mut s = Summary::default();
    let mut any = false;
    for part in counts.split(';') {
        let mut words = part.split_whitespace();
        let (Some(n), Some(what)) = (words.next(), words.next()) else {
            continue;
        };
        let Ok(n) = n.parse::<u64>() else {
            continue;
        };
        any = true;
        match what {
            "passed" => s.passed = n,
            "failed" => s.failed = n,
            "ignored" => s.ignored = n,
            "filtered" => s.filtered = n,
            _ => {}
        }
    }
    any.then_some(s)
}

/// One test binary's run, from the console.
#[derive(Debug, Default, PartialEq)]
struct BinaryRun {
    name: String,
    /// Its exit status; `None` if the END marker never came.
    rc: Option<i32>,
    summary: Option<Summary>,
    /// The tests libtest listed as failed.
    failures: Vec<String>,
    /// The last test that started (`test NAME ... `), for a binary that died mid-run.
    last_started: Option<String>,
}

#[derive(Debug, Default, PartialEq)]
struct Console {
    uname: Option<String>,
    binaries: Vec<BinaryRun>,
    /// The DONE marker: /init ran to the end.
    done: bool,
}

fn parse_console(text: &str) -> Console {
    let mut c = Console::default();
    // Inside a binary's output: the `failures:` list being read.
    let mut in_failure_list = false;
    for raw in text.lines() {
        let line = raw.trim_end_matches('\r');
        if let Some(pos) = line.find(MARK) {
            let m = line[pos + MARK.len()..].trim();
            if let Some(u) = m.strip_prefix("UNAME ") {
                c.uname = Some(u.trim().to_string());
            } else if let Some(name) = m.strip_prefix("BEGIN ") {
                c.binaries.push(BinaryRun {
                    name: name.trim().to_string(),
                    ..Default::default()
                });
            } else if let Some(rest) = m.strip_prefix("END ") {
                let mut words = rest.split_whitespace();
                let (name, rc) = (words.next(), words.next());
                let rc = rc
                    .and_then(|r| r.strip_prefix("rc="))
                    .and_then(|r| r.parse().ok());
                if let Some(b) = c
                    .binaries
                    .last_mut()
                    .filter(|b| Some(b.name.as_str()) == name)
                {
                    b.rc = rc;
                }
            } else if m == "DONE" {
                c.done = true;
            }
            in_failure_list = false;
            continue;
        }
        let Some(b) = c.binaries.last_mut().filter(|b| b.rc.is_none()) else {
            continue;
        };
        if let Some(s) = parse_summary(line) {
            b.summary = Some(s);
            in_failure_list = false;
        } else if line.trim() == "failures:" {
            // libtest prints `failures:` twice: before the captured outputs, and before the
            // list of names; the last one wins.
            in_failure_list = true;
            b.failures.clear();
        } else if in_failure_list {
            let t = line.trim();
            if t.starts_with("---- ") {
                in_failure_list = false;
                b.failures.clear();
            } else if line.starts_with("    ") && !t.is_empty() && !t.contains(' ') {
                b.failures.push(t.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("test ") {
            if let Some((name, _)) = rest.split_once(" ... ") {
                b.last_started = Some(name.to_string());
            }
        }
    }
    c
}

enum Outcome {
    /// The kernel could not be fetched or booted.
    Error(String),
    Ran {
        timed_out: bool,
        console: Console,
    },
}

struct KernelRun {
    series: &'static str,
    package: String,
    /// `memtrace check --json` as run inside the VM.
    check: Option<serde_json::Value>,
    outcome: Outcome,
    elapsed: Duration,
    console: PathBuf,
}

impl KernelRun {
    /// Whether every expected test binary ran and passed at least one test and failed none,
    /// and the line saying so.
    fn verdict(&self, expected: &[String]) -> (bool, String) {
        let release = match &self.outcome {
            Outcome::Ran { console, .. } => console.uname.clone(),
            Outcome::Error(_) => None,
        }
        .or_else(|| {
            self.package
                .strip_prefix("linux-image-")
                .map(str::to_string)
        })
        .unwrap_or_else(|| "?".into());
        let head = format!("vm-test: {release} ({})", self.series);
        let secs = self.elapsed.as_secs();
        let (timed_out, console) = match &self.outcome {
            Outcome::Error(e) => return (false, format!("{head}: FAILED — {e}")),
            Outcome::Ran { timed_out, console } => (*timed_out, console),
        };
        let mut ok = !timed_out;
        let mut parts = Vec::new();
        let mut passed_total = 0;
        for name in expected {
            let Some(b) = console.binaries.iter().find(|b| &b.name == name) else {
                ok = false;
                parts.push(format!("{name} not run"));
                continue;
            };
            let crashed = match (&b.last_started, b.summary) {
                (Some(t), None) => format!(" (last started: {t})"),
                _ => String::new(),
            };
            match (b.summary, b.rc) {
                (Some(s), Some(0)) if s.failed == 0 => {
                    passed_total += s.passed;
                    parts.push(format!("{name} {} passed", s.passed));
                }
                (Some(s), rc) => {
                    ok = false;
                    passed_total += s.passed;
                    let mut p = format!("{name} {} passed, {} failed", s.passed, s.failed);
                    if !b.failures.is_empty() {
                        p.push_str(&format!(" ({})", b.failures.join(", ")));
                    }
                    match rc {
                        None => p.push_str(", did not finish"),
                        Some(rc) if s.failed == 0 => p.push_str(&format!(", rc={rc}")),
                        Some(_) => {}
                    }
                    parts.push(p);
                }
                (None, Some(rc)) => {
                    ok = false;
                    parts.push(format!("{name}: no test result, rc={rc}{crashed}"));
                }
                (None, None) => {
                    ok = false;
                    parts.push(format!("{name}: did not finish{crashed}"));
                }
            }
        }
        if passed_total == 0 {
            ok = false;
            parts.push("no test passed".into());
        }
        if !timed_out && !console.done && ok {
            ok = false;
            parts.push("/init did not finish".into());
        }
        let lead = if timed_out { "timed out: " } else { "" };
        let body = format!("{lead}{}", parts.join(", "));
        if ok {
            (true, format!("{head}: ok — {body} in {secs} s"))
        } else {
            (
                false,
                format!(
                    "{head}: FAILED — {body} in {secs} s; console: {}",
                    self.console.display()
                ),
            )
        }
    }

    /// (passed, failed) tests; a test binary with no result, or a kernel that did not run,
    /// counts as one failure.
    fn totals(&self, expected: &[String]) -> (u64, u64) {
        let console = match &self.outcome {
            Outcome::Error(_) => return (0, 1),
            Outcome::Ran { console, .. } => console,
        };
        let (mut p, mut f) = (0, 0);
        for name in expected {
            match console.binaries.iter().find(|b| &b.name == name) {
                Some(BinaryRun {
                    summary: Some(s),
                    rc,
                    ..
                }) => {
                    p += s.passed;
                    f += s.failed;
                    if s.failed == 0 && *rc != Some(0) {
                        f += 1;
                    }
                }
                _ => f += 1,
            }
        }
        (p, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deb822_sources() {
        let text = "Types: deb\n\
            # http://snapshot.debian.org/archive/debian/20250520T000000Z\n\
            URIs: http://deb.debian.org/debian/\n\
            Suites: bookworm bookworm-updates\n\
            Components: main\n\
            Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\
            \n\
            Types: deb\n\
            URIs: http://deb.debian.org/debian-security\n\
            Suites: bookworm-security\n\
            Components: main contrib\n\
            \n\
            Types: deb-src\n\
            URIs: http://src.example/debian\n\
            Suites: bookworm\n\
            Components: main\n\
            \n\
            Types: deb\n\
            Enabled: no\n\
            URIs: http://off.example/debian\n\
            Suites: bookworm\n\
            Components: main\n";
        let s = parse_deb822(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].uri, "http://deb.debian.org/debian");
        assert_eq!(s[1].suite, "bookworm-updates");
        assert_eq!(s[2].components, ["main", "contrib"]);
        assert_eq!(
            mirrors(&s).unwrap(),
            (
                "http://deb.debian.org/debian".to_string(),
                Some("http://deb.debian.org/debian-security".to_string())
            )
        );
    }

    #[test]
    fn one_line_sources() {
        let text = "# comment\n\
            deb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n\
            deb-src http://mirror.example/debian bookworm main\n\
            deb https://download.docker.com/linux/debian bookworm stable\n\
            deb http://security.example/debian-security/ bookworm-security main # trailing\n";
        let s = parse_one_line(text);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            s[0],
            Source {
                uri: "http://mirror.example/debian".into(),
                suite: "bookworm".into(),
                components: vec!["main".into(), "contrib".into()],
            }
        );
        // A third-party `bookworm` suite without `main` is not Debian's archive.
        assert!(mirrors(&s[1..2]).is_err());
        let (archive, security) = mirrors(&s).unwrap();
        assert_eq!(archive, "http://mirror.example/debian");
        assert_eq!(
            security.as_deref(),
            Some("http://security.example/debian-security")
        );
        assert!(mirrors(&[]).is_err());
    }

    #[test]
    fn private_sources() {
        let s = private_sources_list("http://a/debian", Some("http://a/debian-security"));
        assert_eq!(
            s,
            "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://a/debian bookworm main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://a/debian bullseye main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://a/debian-security bookworm-security main\n\
             deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://a/debian-security bullseye-security main\n"
        );
    }

    #[test]
    fn newest_package_by_number() {
        let s61 = &SERIES[1];
        let out = "linux-image-6.1.0-9-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
            linux-image-6.1.0-57-amd64 - Linux 6.1 for 64-bit PCs (signed)\n\
            linux-image-6.1.0-57-amd64-dbg - Debug symbols\n\
            linux-image-6.1.0-100-cloud-amd64 - cloud\n\
            linux-image-6.1.0-13-amd64 - Linux 6.1 for 64-bit PCs (signed)\n";
        assert_eq!(
            newest_package(s61, out).as_deref(),
            Some("linux-image-6.1.0-57-amd64")
        );
        let s612 = &SERIES[2];
        let out = "linux-image-6.12.9+deb12-amd64 - x\nlinux-image-6.12.117+deb12-amd64 - x\n\
            linux-image-6.12.117+deb12-cloud-amd64 - x\n";
        assert_eq!(
            newest_package(s612, out).as_deref(),
            Some("linux-image-6.12.117+deb12-amd64")
        );
        assert_eq!(
            package_number(&SERIES[0], "linux-image-5.10.0-46-amd64"),
            Some(46)
        );
        assert_eq!(
            package_number(&SERIES[0], "linux-image-5.10.0--amd64"),
            None
        );
        assert_eq!(newest_package(&SERIES[0], ""), None);
    }

    #[test]
    fn summary_lines() {
        assert_eq!(
            parse_summary(
                "test result: ok. 14 passed; 0 failed; 1 ignored; 0 measured; 2 filtered out; finished in 3.21s"
            ),
            Some(Summary {
                passed: 14,
                failed: 0,
                ignored: 1,
                filtered: 2
            })
        );
        assert_eq!(
            parse_summary("[  1.0] x test result: FAILED. 3 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 9.00s").map(|s| (s.passed, s.failed)),
            Some((3, 2))
        );
        assert_eq!(parse_summary("test foo ... ok"), None);
    }

    #[test]
    fn cargo_artifacts() {
        let lines = r#"{"reason":"compiler-artifact","package_id":"x","manifest_path":"/w/memtrace/Cargo.toml","target":{"kind":["bin"],"name":"memtrace"},"profile":{"test":false},"executable":"/w/target/release/memtrace"}
{"reason":"compiler-artifact","manifest_path":"/w/memtrace/Cargo.toml","target":{"kind":["lib"],"name":"memtrace"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","manifest_path":"/w/memtrace/Cargo.toml","target":{"kind":["test"],"name":"kernel"},"profile":{"test":true},"executable":"/w/target/release/deps/kernel-0f"}
{"reason":"build-finished","success":true}
not json"#;
        let a = parse_artifacts(lines);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].executable, Path::new("/w/target/release/memtrace"));
        assert!(!a[0].test);
        assert_eq!(
            a[1],
            Artifact {
                name: "kernel".into(),
                kind: vec!["test".into()],
                test: true,
                executable: "/w/target/release/deps/kernel-0f".into(),
                manifest_path: "/w/memtrace/Cargo.toml".into(),
            }
        );
    }

    #[test]
    fn ldd_output() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
            \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
            \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f)\n\
            \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
    }

    #[test]
    fn console_markers_and_results() {
        let text = "\r\n=== memtrace-vm: UNAME 6.1.0-57-amd64\r\n\
            === memtrace-vm: BEGIN kernel\r\n\
            running 3 tests\r\n\
            test a ... ok\r\n\
            test b ... [   12.5] some kernel line\r\n\
            FAILED\r\n\
            test c ... FAILED\r\n\
            \r\n\
            failures:\r\n\
            \r\n\
            ---- b stdout ----\r\n\
            thread 'b' panicked at memtrace/tests/kernel.rs:1:1:\r\n\
            \r\n\
            failures:\r\n\
            \x20   b\r\n\
            \x20   c\r\n\
            \r\n\
            test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r\n\
            \r\n\
            === memtrace-vm: END kernel rc=101\r\n\
            === memtrace-vm: BEGIN trace\r\n\
            test x ... ok\r\n\
            test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\r\n\
            === memtrace-vm: END trace rc=0\r\n\
            === memtrace-vm: BEGIN daemon\r\n\
            test d ... \r\n";
        let c = parse_console(text);
        assert_eq!(c.uname.as_deref(), Some("6.1.0-57-amd64"));
        assert!(!c.done);
        assert_eq!(c.binaries.len(), 3);
        let k = &c.binaries[0];
        assert_eq!(k.rc, Some(101));
        assert_eq!(k.failures, ["b", "c"]);
        assert_eq!(k.summary.map(|s| (s.passed, s.failed)), Some((1, 2)));
        assert_eq!(c.binaries[1].rc, Some(0));
        assert_eq!(c.binaries[2].rc, None);
        assert_eq!(c.binaries[2].last_started.as_deref(), Some("d"));

        let run = KernelRun {
            series: "6.1",
            package: "linux-image-6.1.0-57-amd64".into(),
            check: None,
            outcome: Outcome::Ran {
                timed_out: true,
                console: c,
            },
            elapsed: Duration::from_secs(7),
            console: PathBuf::from("target/vm-test/6.1/console.log"),
        };
        let names: Vec<String> = ["kernel", "trace", "daemon", "limits"]
            .map(String::from)
            .into();
        let (ok, line) = run.verdict(&names);
        assert!(!ok);
        assert_eq!(
            line,
            "vm-test: 6.1.0-57-amd64 (6.1): FAILED — timed out: kernel 1 passed, 2 failed (b, c), \
             trace 1 passed, daemon: did not finish (last started: d), limits not run \
             in 7 s; console: target/vm-test/6.1/console.log"
        );
        assert_eq!(run.totals(&names), (2, 4));
    }

    #[test]
    fn all_passing_kernel() {
        let mut text = String::from("=== memtrace-vm: UNAME 6.12.117+deb12-amd64\n");
        for n in TEST_BINARIES {
            text.push_str(&format!(
                "=== memtrace-vm: BEGIN {n}\ntest result: ok. 2 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out; finished in 1.00s\n=== memtrace-vm: END {n} rc=0\n"
            ));
        }
        text.push_str("=== memtrace-vm: DONE\n");
        let run = KernelRun {
            series: "6.12",
            package: String::new(),
            check: None,
            outcome: Outcome::Ran {
                timed_out: false,
                console: parse_console(&text),
            },
            elapsed: Duration::from_secs(30),
            console: PathBuf::new(),
        };
        let names: Vec<String> = TEST_BINARIES.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            run.verdict(&names),
            (
                true,
                "vm-test: 6.12.117+deb12-amd64 (6.12): ok — kernel 2 passed, trace 2 passed, \
                 daemon 2 passed, limits 2 passed, faults 2 passed in 30 s"
                    .to_string()
            )
        );
        assert_eq!(run.totals(&names), (10, 0));
    }

    #[test]
    fn init_runs_every_binary_between_markers() {
        let tests = vec![(
            "kernel".to_string(),
            PathBuf::from("/w/target/release/deps/kernel-1"),
        )];
        let s = init_script(
            &tests,
            Path::new("/w/memtrace"),
            &["--skip".into(), "it's".into()],
            Path::new("/w/target/release/memtrace"),
        );
        assert!(s.contains("/w/target/release/memtrace check --json"));
        assert!(s.starts_with("#!/bin/sh\n"));
        assert!(s.contains("cd /w/memtrace\n"));
        assert!(s.contains(
            "echo \"=== memtrace-vm: BEGIN kernel\"\n\
             /w/target/release/deps/kernel-1 --test-threads=1 --skip 'it'\\''s' 2>&1 | cat\n\
             echo \"=== memtrace-vm: END kernel rc=$?\"\n"
        ));
        assert!(s.ends_with("echo \"=== memtrace-vm: DONE\"\npoweroff -f\n"));
        assert!(s.contains(&format!(
            "export MEMTRACE_VM=1 MEMTRACE_TEST_MODULE={MODULE_IN_VM}\n"
        )));
        assert!(s.contains("\nmount -t tmpfs tmpfs /tmp\n"));
        // A workspace under /tmp must not be hidden by a tmpfs mounted there.
        let tests = vec![(
            "kernel".to_string(),
            PathBuf::from("/tmp/w/target/kernel-1"),
        )];
        let s = init_script(
            &tests,
            Path::new("/tmp/w/memtrace"),
            &[],
            Path::new("/tmp/w/memtrace/x"),
        );
        assert!(!s.contains("tmpfs /tmp"));
        assert!(s.contains("/tmp/w/target/kernel-1 --test-threads=1 2>&1 | cat\n"));
    }

    #[test]
    fn check_report_between_markers() {
        let console = "boot\n=== memtrace-vm: CHECK-BEGIN\r\n{\"kernel\":\"6.1.0\",\"probes\":[\
            {\"probe\":\"kmem:kmalloc\",\"will_use\":\"raw\",\"program\":\"kmalloc_raw\",\
            \"not_in_this_kernel\":null}],\"missing\":[\"x: no y\"]}\r\n\r\n\
            === memtrace-vm: CHECK-END\n";
        let check = check_report(console).expect("a report");
        assert_eq!(check["kernel"], "6.1.0");
        let run = KernelRun {
            series: "6.1",
            package: "linux-image-6.1.0-1-amd64".into(),
            check: Some(check),
            outcome: Outcome::Error(String::new()),
            elapsed: Duration::ZERO,
            console: PathBuf::new(),
        };
        let md = supported_kernels(&[run]);
        assert!(
            md.contains("| `kmem:kmalloc` | raw_tp (`kmalloc_raw`) |"),
            "{md}"
        );
        assert!(md.contains("- x: no y"), "{md}");
        assert!(check_report("no markers").is_none());
    }

    #[test]
    fn escape_sequences_are_dropped_across_reads() {
        let mut f = EscapeFilter::default();
        let mut out = Vec::new();
        f.filter(b"\x1bc\x1b[?7l\x1b[2J\x1b[0mSeaBIOS\r\n\x1b[3", &mut out);
        f.filter(b"2m INFO\x1b[0m [x]\n", &mut out);
        assert_eq!(out, b"SeaBIOS\r\n INFO [x]\n");
    }

    /// A scratch directory of its own, emptied first.
    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-vm-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn the_module_is_found_and_decompressed() {
        let root = scratch("module");
        assert!(find_module(&root).is_none());
        let dir = root.join("lib/modules/6.1.0-9-amd64/kernel/drivers/net");
        std::fs::create_dir_all(&dir).unwrap();
        let elf = b"\x7fELF fake module".to_vec();
        std::fs::write(dir.join("dummy.ko.raw"), &elf).unwrap();
        let xz = Command::new("xz")
            .args(["-c", "-z"])
            .arg(dir.join("dummy.ko.raw"))
            .output()
            .expect("xz");
        assert!(xz.status.success());
        std::fs::write(dir.join("dummy.ko.xz"), &xz.stdout).unwrap();
        let found = find_module(&root).expect("found");
        assert!(
            found.ends_with("kernel/drivers/net/dummy.ko.xz"),
            "{found:?}"
        );
        assert_eq!(decompress_module(&found).unwrap(), elf);
        // Not an ELF once decompressed: refused.
        std::fs::write(dir.join("bad.xz"), &xz.stdout[..xz.stdout.len() / 2]).unwrap();
        assert!(decompress_module(&dir.join("bad.xz")).is_err());
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn the_module_archive_follows_the_base() {
        let dir = scratch("initrd");
        let mut base = Cpio::default();
        base.file("init", 0o755, b"#!/bin/sh\n");
        std::fs::write(dir.join("base.gz"), gzip(&base.finish()).unwrap()).unwrap();
        std::fs::write(dir.join("dummy.ko"), b"\x7fELF module bytes").unwrap();
        with_module(
            &dir.join("base.gz"),
            &dir.join("dummy.ko"),
            &dir.join("all.gz"),
        )
        .unwrap();
        // gzip reads the concatenated members as the kernel does: both archives, in order.
        let out = Command::new("gzip")
            .arg("-dc")
            .arg(dir.join("all.gz"))
            .output()
            .unwrap();
        assert!(out.status.success());
        let text = String::from_utf8_lossy(&out.stdout);
        let init = text.find("init\0").expect("the base archive");
        let module = text
            .find(&format!("{}\0", MODULE_IN_VM.trim_start_matches('/')))
            .expect("the module archive");
        assert!(init < module);
        assert!(text.contains("ELF module bytes"));
        assert_eq!(text.matches("TRAILER!!!").count(), 2);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn cpio_newc_layout() {
        let mut c = Cpio::default();
        c.file("a/b", 0o644, b"hello");
        let out = c.finish();
        // Entries: dir `a`, file `a/b`, trailer; each header is 110 bytes, names and data are
        // padded to 4.
        assert!(out.starts_with(b"070701"));
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("a/b\0"));
        assert!(text.contains("hello"));
        assert!(text.contains("TRAILER!!!\0"));
        assert_eq!(out.len() % 4, 0);
        let first = &text[..110];
        assert_eq!(&first[14..22], "000041ED", "a directory, 0755");
    }
}
