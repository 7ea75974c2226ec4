//! The deployment files, checked with the real tools: the systemd unit passes
//! `systemd-analyze verify` and its capability set is exactly what the daemon needs (each
//! capability is shown necessary by taking it away); the Prometheus rules and configuration
//! pass promtool's checks and unit tests.

mod support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{free_port, get, need, require_kernel};

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn unit_text() -> String {
    std::fs::read_to_string(deploy("systemd/memtrace.service")).expect("memtrace.service")
}

/// The unit's `AmbientCapabilities=` (which equals its bounding set).
fn unit_caps() -> Vec<String> {
    let text = unit_text();
    let caps = |key: &str| -> Vec<String> {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("no {key} in the unit"))
            .split_whitespace()
            .map(str::to_string)
            .collect()
    };
    let ambient = caps("AmbientCapabilities=");
    assert_eq!(
        ambient,
        caps("CapabilityBoundingSet="),
        "bounding set = ambient set"
    );
    ambient
}

#[test]
fn systemd_unit_verifies() {
    let Some(analyze) = need("systemd-analyze") else {
        return;
    };
    let dir = std::env::temp_dir().join(format!("memtrace-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    // The same unit, pointing at the binary under test (verify checks that it exists).
    let unit = unit_text().replace("/usr/local/bin/memtrace", env!("CARGO_BIN_EXE_memtrace"));
    let path = dir.join("memtrace.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&path)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let _ = std::fs::remove_dir_all(&dir);
    // Complaints about the host's own units (verify loads the default target) are not ours.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("memtrace")).collect();
    assert!(
        out.status.success() && ours.is_empty(),
        "systemd-analyze verify: {text}"
    );
    for key in [
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ProtectHome=yes",
        "Restart=on-failure",
    ] {
        assert!(unit_text().contains(key), "the unit sets {key}");
    }
}

/// What a daemon run with `caps` (as an unprivileged user) manages: (every probe attached,
/// GFP names decoded, call sites symbolized).
fn run_with_caps(caps: &[String]) -> (bool, bool, bool) {
    let set: Vec<String> = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_ascii_lowercase()))
        .collect();
    let set = format!("-all,{}", set.join(","));
    let port = free_port();
    let mut child = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(format!("--inh-caps={set}"))
        .arg(format!("--ambient-caps={set}"))
        .arg(format!("--bounding-set={set}"))
        .arg(env!("CARGO_BIN_EXE_memtrace"))
        .args([
            "daemon",
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("setpriv");
    let deadline = Instant::now() + Duration::from_secs(30);
    let body = loop {
        if let Ok((200, _)) = get(port, "/healthz") {
            std::thread::sleep(Duration::from_millis(300));
            break get(port, "/metrics").map(|(_, b)| b).unwrap_or_default();
        }
        if child.try_wait().unwrap().is_some() || Instant::now() > deadline {
            break String::new();
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    let probes: Vec<&str> = body
        .lines()
        .filter(|l| l.starts_with("memtrace_probe_attached{"))
        .collect();
    let all_attached = !probes.is_empty() && probes.iter().all(|l| l.ends_with(" 1"));
    let gfp = body
        .lines()
        .any(|l| l.starts_with("memtrace_kmalloc_size_bytes_count{gfp=\"GFP_"));
    let symbols = body.lines().any(|l| {
        l.starts_with("memtrace_callsite_allocations_total{")
            && !l.contains("function=\"unknown\"")
            && !l.contains("function=\"other\"")
    });
    (all_attached, gfp, symbols)
}

#[test]
fn the_units_capabilities_are_sufficient_and_each_is_needed() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    if need("setpriv").is_none() {
        return;
    }
    let caps = unit_caps();
    assert_eq!(
        run_with_caps(&caps),
        (true, true, true),
        "the unit's set {caps:?} is enough"
    );
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        let got = run_with_caps(&fewer);
        assert_ne!(got, (true, true, true), "{drop} is not needed: {got:?}");
    }
}

#[test]
fn prometheus_rules_and_config_pass_promtool() {
    let Some(promtool) = need("promtool") else {
        return;
    };
    let dir = deploy("prometheus");
    for args in [
        &["check", "rules", "memtrace.rules.yml"][..],
        &["test", "rules", "memtrace.rules.test.yml"],
        &["check", "config", "prometheus.yml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
