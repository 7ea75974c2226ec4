//! A real Prometheus server, for end-to-end tests.

use std::{
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::http::{free_port, get};

/// Percent-encodes `s` for a URL query component.
pub fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A real Prometheus server (Debian's `prometheus`) on loopback, scraping `targets` every
/// second as job `memtrace`, with its storage in a private directory removed on drop.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub fn start(binary: &std::path::Path, targets: &[String]) -> Prometheus {
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let seq = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir =
            std::env::temp_dir().join(format!("memtrace-prometheus-{}-{seq}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        let targets: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: memtrace\n    static_configs:\n      - targets: [{}]\n",
                targets.join(", ")
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new(binary)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Prometheus { child, port, dir }
    }

    /// GET an API path: the JSON answer, or `Null` if the server does not answer (yet).
    pub fn api(&self, path_and_query: &str) -> serde_json::Value {
        match get(self.port, path_and_query) {
            Ok((_, body)) => serde_json::from_str(&body).unwrap_or(serde_json::Value::Null),
            Err(_) => serde_json::Value::Null,
        }
    }

    /// An instant query through `/api/v1/query`.
    pub fn query(&self, promql: &str) -> serde_json::Value {
        self.api(&format!("/api/v1/query?query={}", urlencode(promql)))
    }

    /// Waits until every target of the job has been scraped successfully.
    pub fn wait_up(&self, targets: usize) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let v = self.query("up{job=\"memtrace\"} == 1");
            if v["data"]["result"].as_array().map(Vec::len) == Some(targets) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "Prometheus never scraped the daemon successfully: {v}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
