//! The memtrace daemon, for end-to-end tests.

use std::{
    collections::HashMap,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{assert::assert_no_addresses, http::get};

/// The series of an exposition: `name{labels}` → value.
#[allow(dead_code)] // dashboards, prometheus and top use the raw text or none
pub fn series(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

pub struct Daemon {
    pub child: Child,
    pub port: u16,
}

// Each binary that runs a daemon uses its own part of this API, and dead_code is linted per
// test binary: the methods some of them leave unused carry a targeted allow.
impl Daemon {
    #[allow(dead_code)] // dashboards and top always pass flags
    pub fn start(port: u16) -> Daemon {
        Self::start_with(port, &[])
    }

    /// A daemon with `extra` flags.
    pub fn start_with(port: u16, extra: &[&str]) -> Daemon {
        Self::start_prepared(port, extra, |_| {})
    }

    /// A daemon with `extra` flags whose command `prepare` adjusts before it starts (a
    /// `pre_exec`, another stderr), started once `/healthz` answers.
    #[allow(dead_code)] // the web tests start theirs through start_ready
    pub fn start_prepared(port: u16, extra: &[&str], prepare: impl FnOnce(&mut Command)) -> Daemon {
        Self::start_ready(
            port,
            extra,
            prepare,
            |port| matches!(get(port, "/healthz"), Ok((200, body)) if body.trim() == "ok"),
        )
    }

    /// A daemon with `extra` flags whose command `prepare` adjusts, started once
    /// `ready(port)` holds (for a daemon plain HTTP cannot reach: TLS, basic auth).
    pub fn start_ready(
        port: u16,
        extra: &[&str],
        prepare: impl FnOnce(&mut Command),
        ready: impl Fn(u16) -> bool,
    ) -> Daemon {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memtrace"));
        cmd.args([
            "daemon",
            "--web.listen-address",
            &format!("127.0.0.1:{port}"),
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
        prepare(&mut cmd);
        let child = cmd.spawn().expect("start memtrace daemon");
        let mut d = Daemon { child, port };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(port) {
                return d;
            }
            if let Some(st) = d.child.try_wait().unwrap() {
                panic!("memtrace daemon exited early with {st}");
            }
            assert!(Instant::now() < deadline, "daemon not healthy after 30 s");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The raw text of /metrics.
    #[allow(dead_code)] // top reads the daemon through `memtrace top` only
    pub fn scrape_text(&self) -> String {
        let (code, body) = get(self.port, "/metrics").expect("scrape");
        assert_eq!(code, 200, "{body}");
        assert_no_addresses(&body);
        body
    }

    /// /metrics as series → value.
    #[allow(dead_code)] // dashboards, prometheus and top use the raw text or none
    pub fn scrape(&self) -> HashMap<String, f64> {
        series(&self.scrape_text())
    }

    /// Sends SIGTERM and returns how long the daemon took to exit, asserting exit status 0.
    #[allow(dead_code)] // top leaves the daemon to `Drop`
    pub fn terminate(mut self) -> Duration {
        let t = Instant::now();
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let deadline = t + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "daemon exited with {st} after SIGTERM");
                return t.elapsed();
            }
            assert!(Instant::now() < deadline, "daemon ignored SIGTERM for 10 s");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
