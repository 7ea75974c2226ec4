//! A real Prometheus server scrapes a real `memtrace daemon` on loopback: every series the
//! daemon exports must be stored, and `promtool check metrics` must accept the output.

mod support;

use std::{
    collections::BTreeSet,
    io::Write as _,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use support::{Daemon, free_port, get, require_kernel};

/// Parses `name{a="x",b="y"} 1` into a canonical `name{a="x",b="y"}` with sorted labels.
fn series_key(line: &str) -> Option<String> {
    let (series, _) = line.rsplit_once(' ')?;
    let (name, labels) = match series.split_once('{') {
        Some((n, rest)) => (n, rest.trim_end_matches('}')),
        None => (series, ""),
    };
    let mut pairs: Vec<(String, String)> = Vec::new();
    let mut rest = labels;
    while let Some((k, v)) = rest.split_once("=\"") {
        let end = v.find('"')?;
        pairs.push((k.trim_start_matches(',').to_string(), v[..end].to_string()));
        rest = &v[end + 1..];
    }
    pairs.sort();
    Some(format!(
        "{name}{{{}}}",
        pairs
            .iter()
            .map(|(k, v)| format!("{k}=\"{v}\""))
            .collect::<Vec<_>>()
            .join(",")
    ))
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn tool(name: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[test]
fn prometheus_stores_every_series_and_promtool_accepts_them() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let (Some(prometheus), Some(promtool)) = (tool("prometheus"), tool("promtool")) else {
        let msg = "prometheus and promtool are not installed: run `cargo xtask setup`";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
        return;
    };

    let daemon = Daemon::start(free_port());
    let dir = std::env::temp_dir().join(format!("memtrace-prometheus-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: ['127.0.0.1:{}']\n",
            daemon.port
        ),
    )
    .unwrap();
    let prom_port = free_port();
    let _server = Server(
        Command::new(&prometheus)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus"),
    );

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
    let query = |q: &str| -> serde_json::Value {
        let path = format!("/api/v1/query?query={}", urlencode(q));
        let (code, body) = get(prom_port, &path).unwrap_or((0, String::new()));
        if code != 200 {
            return serde_json::Value::Null;
        }
        serde_json::from_str(&body).unwrap_or(serde_json::Value::Null)
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = query("up{job=\"memtrace\"}");
        let up = v["data"]["result"][0]["value"][1].as_str().unwrap_or("");
        if up == "1" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never scraped the daemon successfully"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    let ours: BTreeSet<String> = daemon
        .scrape_text()
        .lines()
        .filter(|l| l.starts_with("memtrace_"))
        .filter_map(series_key)
        .collect();
    std::thread::sleep(Duration::from_millis(2500));

    let path = format!(
        "/api/v1/series?{}={}",
        urlencode("match[]"),
        urlencode("{__name__=~\"memtrace_.+\"}")
    );
    let (code, body) = get(prom_port, &path).expect("series API");
    assert_eq!(code, 200, "{body}");
    let json: serde_json::Value = serde_json::from_str(&body).expect("series JSON");
    let stored: BTreeSet<String> = json["data"]
        .as_array()
        .expect("series list")
        .iter()
        .map(|s| {
            let obj = s.as_object().unwrap();
            let name = obj["__name__"].as_str().unwrap();
            let mut pairs: Vec<(String, String)> = obj
                .iter()
                .filter(|(k, _)| !matches!(k.as_str(), "__name__" | "job" | "instance"))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                .collect();
            pairs.sort();
            format!(
                "{name}{{{}}}",
                pairs
                    .iter()
                    .map(|(k, v)| format!("{k}=\"{v}\""))
                    .collect::<Vec<_>>()
                    .join(",")
            )
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
    let _ = std::fs::remove_dir_all(&dir);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[test]
fn series_keys_are_canonical() {
    assert_eq!(
        series_key("m_bucket{le=\"8\",gfp=\"GFP_KERNEL\"} 3").unwrap(),
        "m_bucket{gfp=\"GFP_KERNEL\",le=\"8\"}"
    );
    assert_eq!(series_key("m_total 1").unwrap(), "m_total{}");
}
