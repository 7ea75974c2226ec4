//! memtrace's developer tasks. `cargo xtask --help` lists them.

use std::{
    ffi::OsString,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, anyhow, bail};

mod bench;
mod install;
mod vm;
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "memtrace's developer tasks")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install what building and testing need (idempotent): nightly rust-src, bpf-linker
    /// built against the nightly's own LLVM, the Debian packages the tests use, and
    /// kubernetes-validate (PyPI) for the Kubernetes manifests.
    Setup,
    /// Build the release binary (the eBPF object is embedded by memtrace/build.rs).
    Build,
    /// Build and run memtrace with root privileges: `cargo xtask run -- check`.
    Run {
        /// Arguments for memtrace.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<OsString>,
    },
    /// Set up, then run every test exactly as CI does: unit tests, then the kernel
    /// integration tests single-threaded in both the dev and release profiles.
    Test,
    /// Install the release binary, the systemd unit and its environment file (kept if it
    /// exists); prints what it did. The service is started only with `--enable`.
    Install {
        /// Install under this directory instead of `/` (a staging root: nothing outside it
        /// is touched).
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// The binary goes to PREFIX/bin/memtrace, and the unit's ExecStart names it.
        #[arg(long, default_value = "/usr/local")]
        prefix: PathBuf,
        /// Install this memtrace binary instead of building the release binary.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// Then `systemctl daemon-reload` and `systemctl enable --now memtrace`.
        #[arg(long)]
        enable: bool,
    },
    /// rustfmt --check, clippy -D warnings on the whole workspace, and rustdoc -D warnings.
    Lint,
    /// Measure memtrace's overhead against no tracing, the bare hooks and bpftrace, in one
    /// interleaved session; writes BENCHMARKS.md and target/bench/bench.json.
    Bench {
        /// Repetitions of every configuration.
        #[arg(long, default_value_t = 5)]
        reps: usize,
        /// Seconds of workload per run.
        #[arg(long, default_value_t = 2.0)]
        seconds: f64,
        /// An earlier run's `target/bench/bench.json` (copy it away first): BENCHMARKS.md then
        /// also compares this run's ratios and hot programs with that run's.
        #[arg(long, value_name = "FILE")]
        previous: Option<PathBuf>,
        /// Another memtrace binary (e.g. built from the parent commit), measured in the same
        /// session as the configuration `memtrace-baseline`.
        #[arg(long = "baseline-binary", value_name = "FILE")]
        baseline_binary: Option<PathBuf>,
    },
    /// Run the kernel integration tests (kernel, trace, daemon, limits, faults) on Debian's
    /// 5.10, 6.1 and 6.12 kernels, each booted in qemu; the serial console goes to stdout and
    /// to target/vm-test/<series>/console.log. One verdict line per kernel at the end.
    VmTest {
        /// A kernel series to test (repeatable); default: all of them.
        #[arg(long = "kernel", value_name = "SERIES",
              value_parser = clap::builder::PossibleValuesParser::new(vm::SERIES.iter().map(|s| s.name)))]
        kernels: Vec<String>,
        /// Seconds each kernel may take from boot to power-off; then qemu is killed.
        #[arg(long, value_name = "SECS", default_value_t = 1500)]
        timeout: u64,
        /// Extra arguments for every test binary, e.g. a test name filter or `--skip NAME`.
        /// Takes the rest of the command line, so it comes last.
        #[arg(long, value_name = "ARGS", num_args = 1.., allow_hyphen_values = true)]
        test_filter: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let res = match cli.command {
        Task::Setup => setup(),
        Task::Build => setup().and_then(|()| cargo(&["build", "--release"])),
        Task::Run { args } => setup().and_then(|()| run(&args)),
        Task::Test => setup().and_then(|()| test()),
        Task::Install {
            root,
            prefix,
            binary,
            enable,
        } => install(root, prefix, binary, enable),
        Task::Lint => setup().and_then(|()| lint()),
        Task::Bench {
            reps,
            seconds,
            previous,
            baseline_binary,
        } => setup().and_then(|()| bench(reps, seconds, previous, baseline_binary)),
        Task::VmTest {
            kernels,
            timeout,
            test_filter,
        } => setup().and_then(|()| {
            vm::run(
                &target_dir(),
                &vm::Options {
                    kernels,
                    test_args: test_filter,
                    timeout: std::time::Duration::from_secs(timeout),
                },
            )
        }),
    };
    if let Err(e) = res {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace")
        .to_path_buf()
}

fn status(cmd: &mut Command) -> anyhow::Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !st.success() {
        bail!("{cmd:?} failed with {st}");
    }
    Ok(())
}

fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn cargo(args: &[&str]) -> anyhow::Result<()> {
    status(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .args(args)
            .current_dir(workspace_root()),
    )
}

fn is_root() -> bool {
    // `id -u` avoids a libc dependency for one call.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// The bpf-linker version setup installs, and the LLVM majors it has features for.
const BPF_LINKER_VERSION: &str = "0.13.0";
const BPF_LINKER_LLVM: std::ops::RangeInclusive<u32> = 21..=23;
/// Debian packages the tests use: `prometheus` brings the server and `promtool`, against
/// which the exporter and the alerting rules are checked; `systemd` brings
/// `systemd-analyze` for the unit; `util-linux` brings `setpriv` for the capability test;
/// `qemu-system-x86` and `busybox-static` boot other kernels for `cargo xtask vm-test`;
/// `golang-go` brings `go tool pprof`, which reads the heap profiles back; `bpftool` lists the
/// kernel's programs and links, which the SIGKILL fault test checks are gone after the daemon
/// is killed (on the host and, copied into the initramfs, in the VMs).
const DEBIAN_PACKAGES: &[&str] = &[
    "prometheus",
    "systemd",
    "util-linux",
    "tmux",
    "qemu-system-x86",
    "busybox-static",
    "golang-go",
    "bpftool",
    "curl",
];

fn setup() -> anyhow::Result<()> {
    let started = std::time::Instant::now();
    // 1. The nightly toolchain with rust-src, for -Z build-std=core on bpfel-unknown-none.
    let toolchains = output(Command::new("rustup").args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        status(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let sysroot = PathBuf::from(
        output(Command::new("rustc").args(["+nightly", "--print", "sysroot"]))?.trim(),
    );
    if !sysroot.join("lib/rustlib/src/rust/library/core").is_dir() {
        status(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }

    // 2. bpf-linker, linked against the nightly's own LLVM (its default LLVM is too new).
    let (llvm_lib, major) = nightly_llvm(&sysroot)?;
    if !BPF_LINKER_LLVM.contains(&major) {
        bail!(
            "the nightly toolchain uses LLVM {major}, but bpf-linker {BPF_LINKER_VERSION} supports LLVM {}..={}: \
             install a nightly with a supported LLVM, or raise BPF_LINKER_VERSION in xtask/src/main.rs",
            BPF_LINKER_LLVM.start(),
            BPF_LINKER_LLVM.end()
        );
    }
    let feature = format!("llvm-{major}");
    if !bpf_linker_installed_with(&feature) {
        // bpf-linker keeps this directory as its RUNPATH: it must outlive `cargo clean`, so it
        // lives beside the installed binary, in CARGO_HOME.
        let prefix = cargo_home()?.join(format!("memtrace-llvm-prefix/{major}"));
        let lib = prefix.join("lib");
        std::fs::create_dir_all(&lib)?;
        let file_name = llvm_lib.file_name().context("libLLVM has a file name")?;
        for name in [OsString::from("libLLVM.so"), file_name.to_os_string()] {
            let link = lib.join(&name);
            let _ = std::fs::remove_file(&link);
            std::os::unix::fs::symlink(&llvm_lib, &link)
                .with_context(|| format!("symlink {}", link.display()))?;
        }
        status(
            Command::new("rustup")
                .args([
                    "run",
                    "nightly",
                    "cargo",
                    "install",
                    "bpf-linker",
                    "--version",
                    BPF_LINKER_VERSION,
                    "--locked",
                    "--force",
                    "--no-default-features",
                    "--features",
                    &feature,
                ])
                .env("LLVM_PREFIX", &prefix),
        )?;
    }

    // 3. Debian packages the tests need.
    install_debian(DEBIAN_PACKAGES)?;

    // 4. kubernetes-validate, which checks deploy/kubernetes against the Kubernetes schemas.
    install_kubernetes_validate()?;
    eprintln!(
        "xtask: setup complete in {:.1}s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The PyPI package `kubernetes-validate` (it bundles the Kubernetes API's JSON schemas;
/// `--strict` rejects unknown fields), pinned: the tests validate the DaemonSet with it.
const KUBERNETES_VALIDATE_VERSION: &str = "1.37.0";

/// Installs kubernetes-validate into its own virtual environment (Debian's Python refuses
/// `pip install` outside one) in CARGO_HOME, linked as `CARGO_HOME/bin/kubernetes-validate`
/// so that it is on PATH wherever cargo is. Does nothing if that version is there.
fn install_kubernetes_validate() -> anyhow::Result<()> {
    let home = cargo_home()?;
    let link = home.join("bin/kubernetes-validate");
    let installed = Command::new(&link)
        .arg("--version")
        .output()
        .is_ok_and(|o| {
            o.status.success()
                && String::from_utf8_lossy(&o.stdout).trim() == KUBERNETES_VALIDATE_VERSION
        });
    if installed {
        return Ok(());
    }
    install_debian(&["python3-venv"])?;
    let venv = home.join(format!(
        "memtrace-venv/kubernetes-validate-{KUBERNETES_VALIDATE_VERSION}"
    ));
    if !venv.join("bin/pip").is_file() {
        status(
            Command::new("/usr/bin/python3")
                .args(["-m", "venv"])
                .arg(&venv),
        )?;
    }
    status(Command::new(venv.join("bin/pip")).args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={KUBERNETES_VALIDATE_VERSION}"),
    ]))?;
    std::fs::create_dir_all(home.join("bin"))?;
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(venv.join("bin/kubernetes-validate"), &link)
        .with_context(|| format!("symlink {}", link.display()))
}

/// Installs the Debian packages of `wanted` that are missing (as root).
fn install_debian(wanted: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<&str> = wanted
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg")
                .args(["-s", p])
                .output()
                .map(|o| o.status.success())
                .unwrap_or(false)
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        bail!(
            "Debian packages {missing:?} are missing; install them as root: apt-get install {}",
            missing.join(" ")
        );
    }
    status(Command::new("apt-get").arg("update"))?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

/// The nightly's libLLVM and its major version, from the file name
/// (`libLLVM.so.22.1-rust-1.97.0-nightly` or `libLLVM-22-rust-1.97.0-nightly.so`).
fn nightly_llvm(sysroot: &Path) -> anyhow::Result<(PathBuf, u32)> {
    let dir = sysroot.join("lib");
    let mut found = None;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("read {}", dir.display()))? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if let Some(major) = llvm_major(&name) {
            // Prefer the real file over symlinks pointing at it.
            let is_link = entry.file_type()?.is_symlink();
            if found.as_ref().is_none_or(|(_, _, link)| *link && !is_link) {
                found = Some((entry.path(), major, is_link));
            }
        }
    }
    found.map(|(p, m, _)| (p, m)).ok_or_else(|| {
        anyhow!(
            "no libLLVM in {}: is the nightly toolchain complete?",
            dir.display()
        )
    })
}

fn llvm_major(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix("libLLVM.so.")
        .or_else(|| name.strip_prefix("libLLVM-"))?;
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok()
}

/// Whether cargo's install record shows bpf-linker built with `feature`, and it runs.
fn bpf_linker_installed_with(feature: &str) -> bool {
    let Ok(home) = cargo_home() else {
        return false;
    };
    let Ok(record) = std::fs::read_to_string(home.join(".crates2.json")) else {
        return false;
    };
    let Ok(json) = serde_json::from_str::<serde_json::Value>(&record) else {
        return false;
    };
    let recorded = json["installs"].as_object().is_some_and(|installs| {
        installs.iter().any(|(k, v)| {
            k.starts_with(&format!("bpf-linker {BPF_LINKER_VERSION} "))
                && v["features"]
                    .as_array()
                    .is_some_and(|f| f.iter().any(|x| x == feature))
        })
    });
    recorded
        && Command::new("bpf-linker")
            .arg("--version")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
}

fn cargo_home() -> anyhow::Result<PathBuf> {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .context("neither CARGO_HOME nor HOME is set")
}

fn run(args: &[OsString]) -> anyhow::Result<()> {
    cargo(&["build", "--release", "--package", "memtrace"])?;
    let bin = target_dir().join("release/memtrace");
    let mut cmd = if is_root() {
        Command::new(&bin)
    } else {
        let mut c = Command::new("sudo");
        c.arg("-E").arg(&bin);
        c
    };
    cmd.args(args);
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .context("cannot start memtrace (is sudo installed?)")?;
    std::process::exit(st.code().unwrap_or(1));
}

/// The target directory cargo builds into (`CARGO_TARGET_DIR`, relative to the workspace).
fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(d) => workspace_root().join(d),
        None => workspace_root().join("target"),
    }
}

fn install(
    root: PathBuf,
    prefix: PathBuf,
    binary: Option<PathBuf>,
    enable: bool,
) -> anyhow::Result<()> {
    install::check(&root, &prefix, enable)?;
    let binary = match binary {
        Some(b) => b,
        None => {
            setup()?;
            cargo(&["build", "--release", "--package", "memtrace"])?;
            target_dir().join("release/memtrace")
        }
    };
    install::install(
        &workspace_root(),
        &install::Options {
            root,
            prefix,
            binary,
            enable,
        },
    )
    .map(drop)
}

fn test() -> anyhow::Result<()> {
    // Kernel tests need root; when not root, cargo runs test binaries through sudo.
    let runner =
        (!is_root()).then_some(("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_RUNNER", "sudo -E"));
    let run_cargo = |args: &[&str]| -> anyhow::Result<()> {
        let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
        cmd.args(args)
            .current_dir(workspace_root())
            .env("RUST_BACKTRACE", "1")
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            );
        if let Some((k, v)) = runner {
            cmd.env(k, v);
        }
        status(&mut cmd)
    };
    // Unit tests and binary smoke tests of every default member, then the kernel tests,
    // one at a time (the kernel is shared), in both profiles. The soak (ten minutes at full
    // allocation rate, tests/soak.rs) runs once, in release, as the daemon is shipped.
    run_cargo(&[
        "test",
        "--workspace",
        "--exclude",
        "memtrace-ebpf",
        "--",
        "--test-threads=1",
        "--skip",
        "soak_at_full_rate",
    ])?;
    run_cargo(&[
        "test",
        "--release",
        "--package",
        "memtrace",
        "--test",
        "kernel",
        "--test",
        "soak",
        "--",
        "--test-threads=1",
    ])?;
    Ok(())
}

fn bench(
    reps: usize,
    seconds: f64,
    previous: Option<PathBuf>,
    baseline: Option<PathBuf>,
) -> anyhow::Result<()> {
    if reps == 0 || !(seconds.is_finite() && seconds > 0.0) {
        bail!("--reps must be at least 1 and --seconds positive");
    }
    // A bad --previous fails now, not after the whole measurement.
    let previous = previous.map(bench::read_previous).transpose()?;
    if let Some(b) = &baseline {
        bench::check_baseline(b)?;
    }
    if !is_root() {
        bail!("the benchmark attaches eBPF programs: run it as root");
    }
    install_debian(&["bpftrace", "bpftool"])?;
    // bpftrace's classic tracepoints need tracefs.
    if !Path::new("/sys/kernel/tracing/events").is_dir() {
        status(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    cargo(&[
        "build",
        "--release",
        "--package",
        "memtrace",
        "--package",
        "xtask",
        "--bins",
    ])?;
    bench::run(
        &workspace_root(),
        &bench::Options {
            reps,
            seconds,
            previous,
            baseline,
        },
    )
}

fn lint() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    // The host crates, then the eBPF crate for its own target (a host build of a
    // `no_std`/`no_main` BPF binary is meaningless).
    cargo(&[
        "clippy",
        "--workspace",
        "--exclude",
        "memtrace-ebpf",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Documentation whose links resolve (a moved item breaks a link silently otherwise).
    status(
        Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
            .current_dir(workspace_root())
            .env("RUSTDOCFLAGS", "-D warnings")
            .args([
                "doc",
                "--no-deps",
                "--package",
                "memtrace",
                "--package",
                "memtrace-common",
            ]),
    )?;
    status(Command::new("rustup").current_dir(workspace_root()).args([
        "run",
        "nightly",
        "cargo",
        "clippy",
        "--package",
        "memtrace-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn llvm_major_from_file_names() {
        assert_eq!(llvm_major("libLLVM.so.22.1-rust-1.97.0-nightly"), Some(22));
        assert_eq!(llvm_major("libLLVM-22-rust-1.97.0-nightly.so"), Some(22));
        assert_eq!(llvm_major("libLLVM.so.23.0"), Some(23));
        assert_eq!(llvm_major("librustc_driver-b5a965480ee51f9a.so"), None);
        assert_eq!(llvm_major("libLLVM.so"), None);
    }
}
