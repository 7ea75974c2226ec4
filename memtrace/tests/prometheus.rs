//! A real Prometheus server scrapes a real `memtrace daemon` on loopback: every series the
//! daemon exports must be stored, and `promtool check metrics` must accept the output.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod prometheus;
    pub mod tools;
}

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Command, Stdio},
    time::Duration,
};

use support::{
    daemon::Daemon,
    http::{free_port, get},
    kernel::require_kernel,
    prometheus::{Prometheus, urlencode},
    tools::need,
};

/// A series as `name{a="x",b="y"}` with sorted labels, whoever reported it.
fn canonical<'a>(name: &str, labels: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut pairs: Vec<(&str, &str)> = labels.collect();
    pairs.sort();
    let labels: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
    format!("{name}{{{}}}", labels.join(","))
}

#[test]
fn prometheus_stores_every_series_and_promtool_accepts_them() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let (Some(prometheus), Some(promtool)) = (need("prometheus"), need("promtool")) else {
        return;
    };

    let daemon = Daemon::start(free_port());
    let server = Prometheus::start(&prometheus, &[format!("127.0.0.1:{}", daemon.port)]);

    // promtool's linter accepts the exposition.
    let text = daemon.scrape_text();
    let mut check = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    check
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = check.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Wait for Prometheus to scrape the daemon at least twice after our own scrape.
    server.wait_up(1);
    let ours: BTreeSet<String> = memtrace::export::scrape::parse_exposition(&daemon.scrape_text())
        .iter()
        .filter(|s| s.name.starts_with("memtrace_"))
        .map(|s| {
            canonical(
                &s.name,
                s.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            )
        })
        .collect();
    std::thread::sleep(Duration::from_millis(2500));

    let path = format!(
        "/api/v1/series?{}={}",
        urlencode("match[]"),
        urlencode("{__name__=~\"memtrace_.+\"}")
    );
    let (code, body) = get(server.port, &path).expect("series API");
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("series JSON");
    let stored: BTreeSet<String> = json["data"]
        .as_array()
        .expect("series list")
        .iter()
        .map(|s| {
            let obj = s.as_object().unwrap();
            let labels = obj
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
                .map(|(k, v)| (k.as_str(), v.as_str().unwrap_or("")));
            canonical(obj["__name__"].as_str().unwrap(), labels)
        })
        .collect();
    let missing: Vec<&String> = ours.difference(&stored).collect();
    eprintln!(
        "daemon exported {} memtrace series; Prometheus stores {}",
        ours.len(),
        stored.len()
    );
    assert!(
        ours.len() > 100,
        "a real daemon exports many series: {}",
        ours.len()
    );
    assert!(
        missing.is_empty(),
        "series Prometheus did not store: {missing:?}"
    );
    daemon.terminate();
}

#[test]
fn series_keys_are_canonical() {
    let labels = [("le", "8"), ("gfp", "GFP_KERNEL")];
    assert_eq!(
        canonical("m_bucket", labels.into_iter()),
        "m_bucket{gfp=\"GFP_KERNEL\",le=\"8\"}"
    );
    assert_eq!(canonical("m_total", std::iter::empty()), "m_total{}");
}
