//! Smoke tests of the binary: help, version, a bad flag, and `check`'s exit code.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod cli;
}

use support::cli::memtrace;

#[test]
fn help_lists_subcommands() {
    let out = memtrace(&["--help"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("check"), "{text}");
}

#[test]
fn version_prints_the_crate_version() {
    let out = memtrace(&["--version"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.trim(),
        format!("memtrace {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flag_is_one_clear_line_and_non_zero() {
    for args in [
        &["--no-such-flag"][..],
        &["check", "--bogus"],
        &["no-such-command"],
    ] {
        let out = memtrace(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one line for {args:?}: {err}"
        );
        assert!(err.starts_with("memtrace: "), "{err}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn check_reports_every_probe_and_agrees_with_its_exit_code() {
    let out = memtrace(&["check", "--json"]);
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("check --json prints JSON");
    let can_run = report["can_run"].as_bool().expect("can_run");
    assert_eq!(out.status.success(), can_run, "{report}");
    let probes = report["probes"].as_array().expect("probes");
    for name in ["kmem:kmalloc", "kmem:kfree"] {
        assert!(
            probes.iter().any(|p| p["probe"] == name),
            "{name} in {report}"
        );
    }
    if !can_run {
        assert!(report["reason"].is_string());
    }
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 && std::path::Path::new("/sys/kernel/btf/vmlinux").exists() {
        assert!(can_run, "root with BTF can run memtrace: {report}");
        for p in probes {
            // A tracepoint only older kernels have (kmalloc_node) is not this kernel's.
            if !p["not_in_this_kernel"].is_null() {
                assert_eq!(p["tracepoint_present"], false, "{p}");
                assert!(p["will_use"].is_null(), "{p}");
                continue;
            }
            assert!(!p["will_use"].is_null(), "{p}");
            assert!(p["program"].is_string(), "the program that would run: {p}");
            // On this machine's kernel every program also loads with heap profiling on.
            if memtrace::kernel::release().starts_with("6.18") {
                assert!(p["heap_profile"].is_null(), "{p}");
            }
        }
        if memtrace::kernel::release().starts_with("6.18") {
            assert_eq!(report["heap_profile"]["ok"], true, "{report}");
        }
    }
    // The human report says the same in words.
    let human = memtrace(&["check"]);
    assert_eq!(human.status.success(), can_run);
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(text.contains("kmem:kmalloc"));
    assert!(!text.contains("0xffff"), "no kernel addresses: {text}");
}

#[test]
fn log_format_is_validated() {
    let out = memtrace(&["--log-format", "xml", "check"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim().lines().count(),
        1
    );
}
