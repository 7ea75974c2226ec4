//! The deployment files, checked with the real tools: the systemd unit passes
//! `systemd-analyze verify` and its capability set is exactly what the daemon needs (each
//! capability is shown necessary by taking it away); the Kubernetes manifests pass a strict
//! schema check (`kubernetes-validate`, which must also reject a misspelt field) and grant
//! the container exactly the unit's capabilities; the Prometheus rules and configuration
//! pass promtool's checks and unit tests.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod http;
    pub mod kernel;
    pub mod procfs;
    pub mod tools;
}

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use support::{
    http::{free_port, get},
    kernel::require_kernel,
    tools::need,
};

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
/// GFP names decoded, call sites symbolized, the limits collector up), and its effective
/// capabilities once serving.
fn run_with_caps(caps: &[String]) -> ((bool, bool, bool, bool), Option<u64>) {
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
    let mut cap_eff = None;
    let body = loop {
        if let Ok((200, _)) = get(port, "/healthz") {
            std::thread::sleep(Duration::from_millis(300));
            let status = support::procfs::status(format!("/proc/{}/status", child.id()));
            cap_eff = support::procfs::cap_mask(&status, "CapEff");
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
    let limits = body
        .lines()
        .any(|l| l == "memtrace_collector_up{collector=\"limits\"} 1");
    ((all_attached, gfp, symbols, limits), cap_eff)
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
    let (works, cap_eff) = run_with_caps(&caps);
    assert_eq!(
        works,
        (true, true, true, true),
        "the unit's set {caps:?} is enough"
    );
    // Once attached, only what it reads later stays: kallsyms (CAP_SYSLOG, 34) and the
    // root-only /proc files of the limits collector (CAP_DAC_READ_SEARCH, 2).
    assert_eq!(cap_eff, Some((1 << 34) | (1 << 2)), "CapEff after attach");
    for drop in &caps {
        let fewer: Vec<String> = caps.iter().filter(|c| *c != drop).cloned().collect();
        let (got, _) = run_with_caps(&fewer);
        assert_ne!(
            got,
            (true, true, true, true),
            "{drop} is not needed: {got:?}"
        );
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

/// The Kubernetes versions the manifests are validated against: the oldest and the newest
/// kubernetes-validate bundles.
const KUBERNETES_VERSIONS: &[&str] = &["1.25.0", "1.37.0"];

/// Runs `kubernetes-validate --strict` on `files` for `version`: (success, output).
fn kubernetes_validate(tool: &Path, version: &str, files: &[PathBuf]) -> (bool, String) {
    let out = Command::new(tool)
        .args(["--strict", "--kubernetes-version", version])
        .args(files)
        .output()
        .expect("run kubernetes-validate");
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn kubernetes_manifests_pass_a_strict_schema_check() {
    let Some(tool) = need("kubernetes-validate") else {
        return;
    };
    let files = [
        deploy("kubernetes/daemonset.yaml"),
        deploy("kubernetes/servicemonitor.yaml"),
    ];
    for version in KUBERNETES_VERSIONS {
        let (ok, text) = kubernetes_validate(&tool, version, &files);
        assert!(ok, "kubernetes-validate {version}: {text}");
        // Every core resource was checked against a schema (the ServiceMonitor is a custom
        // resource kubernetes-validate has no schema for; it is checked below).
        for resource in [
            "namespace/memtrace",
            "serviceaccount/memtrace",
            "daemonset/memtrace",
            "service/memtrace",
        ] {
            assert!(
                text.contains(&format!("passed for resource {resource} ")),
                "kubernetes-validate {version} did not check {resource}: {text}"
            );
        }
    }
    // The check can fail: misspelt or mistyped fields in a copy are rejected.
    let original = std::fs::read_to_string(&files[0]).unwrap();
    let dir = std::env::temp_dir().join(format!("memtrace-k8s-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to, complaint) in [
        (
            "readOnlyRootFilesystem: true",
            "readOnlyRootFileSystem: true",
            "'readOnlyRootFileSystem' was unexpected",
        ),
        (
            "hostPID: false",
            "hostPid: false",
            "'hostPid' was unexpected",
        ),
        (
            "containerPort: 9701",
            "containerPort: \"9701\"",
            "is not of type 'integer'",
        ),
    ] {
        assert!(original.contains(from), "daemonset.yaml has {from}");
        let bad = dir.join("daemonset.yaml");
        std::fs::write(&bad, original.replacen(from, to, 1)).unwrap();
        let (ok, text) = kubernetes_validate(&tool, KUBERNETES_VERSIONS[1], &[bad]);
        assert!(
            !ok && text.contains(complaint),
            "kubernetes-validate accepted `{to}`: {text}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The documents of a YAML file as JSON, parsed by PyYAML from kubernetes-validate's own
/// Python environment: the `python3` beside its script (a virtual environment's, as setup
/// installs it), or else the interpreter its `#!` line names.
fn yaml_documents(tool: &Path, file: &Path) -> Vec<serde_json::Value> {
    let beside = std::fs::canonicalize(tool)
        .ok()
        .and_then(|t| Some(t.parent()?.join("python3")))
        .filter(|p| p.exists());
    let python = beside.unwrap_or_else(|| {
        let script = std::fs::read_to_string(tool).expect("read the kubernetes-validate script");
        let first = script.lines().next().unwrap_or("");
        PathBuf::from(
            first
                .strip_prefix("#!")
                .map(str::trim)
                .unwrap_or_else(|| panic!("{} has no #! line", tool.display())),
        )
    });
    let out = Command::new(python)
        .args([
            "-c",
            "import json, sys, yaml; json.dump([d for d in yaml.safe_load_all(open(sys.argv[1])) if d], sys.stdout)",
        ])
        .arg(file)
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "parse {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from PyYAML")
}

#[test]
fn the_daemonset_is_privileged_enough_and_no_more() {
    let Some(tool) = need("kubernetes-validate") else {
        return;
    };
    let docs = yaml_documents(&tool, &deploy("kubernetes/daemonset.yaml"));
    let of_kind = |kind: &str| -> &serde_json::Value {
        let found: Vec<&serde_json::Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
        assert_eq!(found.len(), 1, "one {kind} in daemonset.yaml");
        found[0]
    };
    let ns = of_kind("Namespace")["metadata"]["name"].clone();
    let sa = of_kind("ServiceAccount");
    let ds = of_kind("DaemonSet");
    assert_eq!(sa["metadata"]["namespace"], ns);
    assert_eq!(ds["metadata"]["namespace"], ns);
    let pod = &ds["spec"]["template"];
    let spec = &pod["spec"];
    assert_eq!(spec["serviceAccountName"], sa["metadata"]["name"]);
    assert_eq!(
        spec["automountServiceAccountToken"], false,
        "memtrace needs no API token"
    );
    for host in ["hostPID", "hostNetwork", "hostIPC"] {
        assert!(
            spec[host].is_null() || spec[host] == false,
            "{host} must not be set"
        );
    }
    let containers = spec["containers"].as_array().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];
    let sc = &c["securityContext"];
    assert!(
        sc["privileged"].is_null() || sc["privileged"] == false,
        "not privileged"
    );
    assert!(spec["securityContext"]["privileged"].is_null());
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["readOnlyRootFilesystem"], true);
    assert_eq!(sc["capabilities"]["drop"], serde_json::json!(["ALL"]));
    // Exactly the set the unit proves necessary and sufficient (see the capability test).
    let mut want: Vec<String> = unit_caps()
        .iter()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    want.sort();
    let mut got: Vec<String> = sc["capabilities"]["add"]
        .as_array()
        .expect("capabilities.add")
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    got.sort();
    assert_eq!(got, want, "the container's capabilities are the unit's");
    // Only the host paths memtrace reads, read-only.
    let volumes = spec["volumes"].as_array().expect("volumes");
    let mut host_paths = Vec::new();
    for v in volumes {
        let path = v["hostPath"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("only hostPath volumes: {v}"));
        host_paths.push(path.to_string());
        let mount = c["volumeMounts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == v["name"])
            .unwrap_or_else(|| panic!("volume {} is mounted", v["name"]));
        assert_eq!(mount["readOnly"], true, "{path} is mounted read-only");
        assert_eq!(
            mount["mountPath"], path,
            "{path} where memtrace looks for it"
        );
    }
    host_paths.sort();
    assert_eq!(host_paths, ["/sys/kernel/btf", "/sys/kernel/tracing"]);

    // The port: served, scraped, probed and named alike.
    let port = &c["ports"][0];
    let number = port["containerPort"].as_u64().expect("containerPort");
    let name = port["name"].as_str().expect("a named port");
    let ann = &pod["metadata"]["annotations"];
    assert_eq!(ann["prometheus.io/scrape"], "true");
    assert_eq!(ann["prometheus.io/port"], number.to_string());
    let listen = c["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == "MEMTRACE_WEB_LISTEN_ADDRESS")
        .expect("the listen address is set")["value"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        listen.ends_with(&format!(":{number}")),
        "the daemon listens on {listen}, the pod declares {number}"
    );
    for probe in ["livenessProbe", "readinessProbe"] {
        let get = &c[probe]["httpGet"];
        assert_eq!(get["path"], "/healthz", "{probe}");
        assert!(
            get["port"] == name || get["port"] == number,
            "{probe} port {}",
            get["port"]
        );
    }
    assert!(
        c["resources"]["limits"]["memory"].is_string(),
        "a memory limit"
    );
    assert!(
        c["image"].as_str().unwrap().contains(":VERSION"),
        "the image is the documented placeholder"
    );

    // The ServiceMonitor scrapes that port through the Service.
    let mon = yaml_documents(&tool, &deploy("kubernetes/servicemonitor.yaml"));
    let svc = mon
        .iter()
        .find(|d| d["kind"] == "Service")
        .expect("Service");
    let sm = mon
        .iter()
        .find(|d| d["kind"] == "ServiceMonitor")
        .expect("ServiceMonitor");
    assert_eq!(svc["metadata"]["namespace"], ns);
    assert_eq!(sm["metadata"]["namespace"], ns);
    assert_eq!(
        svc["spec"]["selector"], pod["metadata"]["labels"],
        "the Service selects the memtrace pods"
    );
    let svc_port = &svc["spec"]["ports"][0];
    assert!(svc_port["targetPort"] == name || svc_port["targetPort"] == number);
    assert_eq!(sm["spec"]["endpoints"][0]["port"], svc_port["name"]);
    assert_eq!(
        sm["spec"]["selector"]["matchLabels"],
        svc["metadata"]["labels"]
    );
}
