//! The daemon's endpoint end to end: TLS, client certificates, basic auth, response headers
//! and reloads from an exporter-toolkit web config file (curl against a real daemon, with
//! certificates made here), a bad file refused at start in one line, the timeouts and size
//! limits exactly, the connection cap's eviction, and the load test: 2000 idle
//! connections opened (most of them evicted by the cap) and hundreds of slow partial headers
//! do not delay a scrape. The web config parser is fuzzed for a bounded number of cases.

// The shared helpers in tests/support/. Dead code is linted per test binary, so each binary
// declares only the support modules it uses.
mod support {
    pub mod assert;
    pub mod daemon;
    pub mod http;
    pub mod kernel;
    pub mod tools;
    pub mod web;
}

use std::{
    fs::File,
    io::{Read as _, Write as _},
    path::Path,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use support::{
    daemon::Daemon,
    http::{free_port, get},
    kernel::require_kernel,
    tools::need,
    web::{
        Ca, TempDir, arg, connect, curl, open_fds, raise_nofile, read_response, timed_get,
        wait_closed,
    },
};

/// A daemon reading `config`, logging to `log`, ready once `ready` answers 200.
fn start(port: u16, config: &Path, log: &Path, extra: &[&str], ready: &[&str]) -> Daemon {
    let mut flags = vec!["--web.config.file", config.to_str().unwrap()];
    flags.extend_from_slice(extra);
    let url = format!("https://127.0.0.1:{port}/healthz");
    let mut args: Vec<&str> = ready.to_vec();
    args.push(&url);
    let stderr = Stdio::from(File::create(log).unwrap());
    Daemon::start_ready(
        port,
        &flags,
        |cmd| {
            // The debug log of the accept loop shows when a request has been read.
            cmd.stderr(stderr)
                .env("RUST_LOG", "info,memtrace::web::server=debug");
        },
        |_| curl(&args).status == 200,
    )
}

fn log_lines(log: &Path, needle: &str) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(needle))
        .map(str::to_string)
        .collect()
}

fn users_yaml(users: &[(&str, &str)]) -> String {
    let mut s = String::from("basic_auth_users:\n");
    for (u, p) in users {
        s += &format!("  {u}: '{}'\n", bcrypt::hash(p, 10).unwrap());
    }
    s
}

const TLS: &str = "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n";

#[test]
fn a_bad_web_config_file_stops_the_daemon_at_once_in_one_line() {
    let dir = TempDir::new("bad");
    let ca = Ca::new("memtrace test CA");
    let server = ca.server();
    dir.write("server.crt", &server.cert);
    dir.write("server.key", &server.key);
    dir.write("other.key", &Ca::new("other").server().key);
    let cases = [
        (
            "unknown-key",
            format!("{TLS}  client_auth: RequireAndVerifyClientCert\n"),
            "unknown field `client_auth`",
        ),
        (
            "missing-key-file",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: missing.key\n".into(),
            "cannot read key_file",
        ),
        (
            "bad-hash",
            "basic_auth_users:\n  alice: hunter2\n".into(),
            "the password of `alice` is not a bcrypt hash",
        ),
        (
            "wrong-key",
            "tls_server_config:\n  cert_file: server.crt\n  key_file: other.key\n".into(),
            "does not belong to the certificate",
        ),
        (
            "not-a-certificate",
            "tls_server_config:\n  cert_file: server.key\n  key_file: server.key\n".into(),
            "holds no certificate",
        ),
        (
            "no-client-ca",
            format!("{TLS}  client_auth_type: RequireAndVerifyClientCert\n"),
            "needs client_ca_file",
        ),
        (
            "tls10",
            format!("{TLS}  min_version: TLS10\n"),
            "TLS10 is not supported",
        ),
        (
            "header",
            "http_server_config:\n  headers:\n    X-Powered-By: memtrace\n".into(),
            "cannot be configured",
        ),
        (
            "yaml",
            "tls_server_config: [\n".into(),
            "not a valid web config file",
        ),
    ];
    let check = |path: &Path, args: &[&str], env: Option<(&str, &str)>, want: &str| {
        let t = Instant::now();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_memtrace"));
        cmd.args(["daemon", "--web.listen-address"])
            .arg(format!("127.0.0.1:{}", free_port()))
            .args(args);
        if let Some((k, v)) = env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        let took = t.elapsed();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert_eq!(
            err.trim().lines().count(),
            1,
            "one line, nothing loaded: {err}"
        );
        assert!(
            err.starts_with(&format!("memtrace: web config file {}: ", path.display())),
            "{err}"
        );
        assert!(err.contains(want), "{want:?} in {err}");
        assert!(took < Duration::from_secs(5), "took {took:?}");
    };
    for (name, text, want) in &cases {
        let path = dir.write(&format!("{name}.yml"), text);
        check(&path, &["--web.config.file", &arg(&path)], None, want);
    }
    // Bad bounds are flag errors: one line, status 2.
    for flags in [
        ["--web.max-connections", "0"],
        ["--web.read-header-timeout", "0"],
        ["--web.idle-timeout", "never"],
        ["--web.max-header-bytes", "100"],
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_memtrace"))
            .arg("daemon")
            .args(flags)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{flags:?}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(flags[0]), "{err}");
    }
    let gone = dir.path("nonexistent.yml");
    check(
        &gone,
        &["--web.config.file", &arg(&gone)],
        None,
        "cannot read it",
    );
    // The environment variable and the configuration file's key name it too.
    let bad = dir.path("bad-hash.yml");
    check(
        &bad,
        &[],
        Some(("MEMTRACE_WEB_CONFIG_FILE", &arg(&bad))),
        "not a bcrypt hash",
    );
    let toml = dir.write(
        "memtrace.toml",
        &format!("[web.config]\nfile = \"{}\"\n", bad.display()),
    );
    check(&bad, &["--config", &arg(&toml)], None, "not a bcrypt hash");
}

#[test]
fn tls_basic_auth_headers_and_reloads() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    if need("curl").is_none() {
        return;
    }
    let dir = TempDir::new("tls");
    let ca = Ca::new("memtrace test CA");
    let server = ca.server();
    dir.write("server.crt", &server.cert);
    dir.write("server.key", &server.key);
    let ca_file = arg(&dir.write("ca.crt", &ca.pem));
    let headers = "http_server_config:\n  http2: true\n  headers:\n    X-Content-Type-Options: \
                   nosniff\n    X-Frame-Options: deny\n    Strict-Transport-Security: \
                   max-age=31536000\n";
    let config = dir.write(
        "web.yml",
        &format!("{TLS}{headers}{}", users_yaml(&[("alice", "wonderland")])),
    );
    let log = dir.path("daemon.log");
    let port = free_port();
    let https = |path: &str| format!("https://127.0.0.1:{port}{path}");
    let d = start(
        port,
        &config,
        &log,
        &["--web.read-header-timeout", "2"],
        &["--cacert", &ca_file, "-u", "alice:wonderland"],
    );

    // The right password: the metrics, with the configured headers.
    let r = curl(&[
        "--cacert",
        &ca_file,
        "-u",
        "alice:wonderland",
        &https("/metrics"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains("memtrace_build_info{"), "metrics served");
    assert_eq!(
        r.header("X-Content-Type-Options").as_deref(),
        Some("nosniff")
    );
    assert_eq!(r.header("X-Frame-Options").as_deref(), Some("deny"));
    assert_eq!(
        r.header("Strict-Transport-Security").as_deref(),
        Some("max-age=31536000")
    );
    // A wrong password, an unknown user, no credentials: 401 asking for basic auth, with
    // the headers too.
    for creds in [
        &["-u", "alice:wrong"][..],
        &["-u", "mallory:wonderland"],
        &[],
    ] {
        let mut args = vec!["--cacert", ca_file.as_str()];
        args.extend_from_slice(creds);
        let url = https("/metrics");
        args.push(&url);
        let r = curl(&args);
        assert_eq!(r.status, 401, "{creds:?}: {r:?}");
        assert!(
            r.header("WWW-Authenticate")
                .is_some_and(|v| v.starts_with("Basic")),
            "{r:?}"
        );
        assert_eq!(r.header("X-Frame-Options").as_deref(), Some("deny"));
        assert!(!r.body.contains("memtrace_"), "nothing leaks: {}", r.body);
    }
    // Plain HTTP to the TLS port gets no HTTP response.
    let r = curl(&[&format!("http://127.0.0.1:{port}/metrics")]);
    assert_eq!(r.status, 0, "{r:?}");
    assert_ne!(r.exit, 0, "{r:?}");
    // A TLS handshake that never comes is closed after --web.read-header-timeout.
    let mut silent = connect(port);
    let (bytes, closed) = wait_closed(&mut silent, Duration::from_secs(6));
    let closed = closed.expect("a silent connection is closed");
    assert!(bytes.is_empty());
    assert!(
        closed >= Duration::from_millis(1500) && closed <= Duration::from_secs(4),
        "closed after {closed:?} (read-header timeout 2 s)"
    );

    // A new user works without a restart.
    dir.write(
        "web.yml",
        &format!(
            "{TLS}{headers}{}",
            users_yaml(&[("alice", "wonderland"), ("bob", "builder")])
        ),
    );
    let r = curl(&[
        "--cacert",
        &ca_file,
        "-u",
        "bob:builder",
        &https("/metrics"),
    ]);
    assert_eq!(r.status, 200, "bob after the reload: {r:?}");
    assert_eq!(log_lines(&log, "web config reloaded").len(), 1);

    // A broken edit keeps the configuration in force and is logged once.
    dir.write("web.yml", &format!("{TLS}basic_auth_users: [\n"));
    for _ in 0..3 {
        let r = curl(&[
            "--cacert",
            &ca_file,
            "-u",
            "bob:builder",
            &https("/healthz"),
        ]);
        assert_eq!(r.status, 200, "the previous configuration stays: {r:?}");
    }
    let failed = log_lines(&log, "web config not reloaded");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].contains(&format!("web config file {}", config.display())));
    // So does an edit that would turn TLS off.
    dir.write("web.yml", &users_yaml(&[("carol", "x")]));
    let r = curl(&[
        "--cacert",
        &ca_file,
        "-u",
        "bob:builder",
        &https("/healthz"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    assert!(
        log_lines(&log, "takes a restart").len() == 1,
        "{:?}",
        log_lines(&log, "not reloaded")
    );
    // And one that would turn basic auth off (a file cut short after its TLS part, as an
    // in-place edit can be seen half-written): every request still needs a password.
    dir.write("web.yml", TLS);
    let r = curl(&["--cacert", &ca_file, &https("/healthz")]);
    assert_eq!(r.status, 401, "basic auth stays on: {r:?}");
    let r = curl(&[
        "--cacert",
        &ca_file,
        "-u",
        "bob:builder",
        &https("/healthz"),
    ]);
    assert_eq!(r.status, 200, "{r:?}");
    let off = log_lines(&log, "it would turn basic auth off");
    assert_eq!(off.len(), 1, "{:?}", log_lines(&log, "not reloaded"));

    // SIGHUP reloads; the daemon keeps serving.
    dir.write(
        "web.yml",
        &format!("{TLS}{}", users_yaml(&[("carol", "cat")])),
    );
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(500));
    let r = curl(&["--cacert", &ca_file, "-u", "carol:cat", &https("/healthz")]);
    assert_eq!(r.status, 200, "after SIGHUP: {r:?}");
    assert_eq!(
        r.header("X-Frame-Options"),
        None,
        "headers gone with the reload"
    );
    assert_eq!(
        curl(&[
            "--cacert",
            &ca_file,
            "-u",
            "alice:wonderland",
            &https("/healthz")
        ])
        .status,
        401
    );
    for _ in 0..2 {
        unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
        std::thread::sleep(Duration::from_millis(300));
    }
    let hup = log_lines(&log, "trigger=\"SIGHUP\"");
    assert!(
        hup.iter()
            .filter(|l| l.contains("web config reloaded"))
            .count()
            >= 2,
        "{hup:?}"
    );
    let mut d = d;
    assert!(d.child.try_wait().unwrap().is_none(), "alive after SIGHUP");

    // A renewed certificate (another CA here) is served to the next connection.
    let ca2 = Ca::new("memtrace renewed CA");
    let renewed = ca2.server();
    dir.write("server.key", &renewed.key);
    dir.write("server.crt", &renewed.cert);
    let ca2_file = arg(&dir.write("ca2.crt", &ca2.pem));
    let r = curl(&["--cacert", &ca2_file, "-u", "carol:cat", &https("/healthz")]);
    assert_eq!(r.status, 200, "the renewed certificate: {r:?}");
    let r = curl(&["--cacert", &ca_file, "-u", "carol:cat", &https("/healthz")]);
    assert_eq!(r.status, 0, "the old CA no longer verifies it: {r:?}");

    // SIGTERM lets a request in flight finish: a wrong password for a user whose bcrypt cost
    // (11: about half a second in a debug build, a few times that on a loaded machine, well
    // within the 5 s drain) keeps the request in flight for a while still gets its 401, then
    // the daemon exits 0. SIGTERM is sent once the daemon's debug log shows it has read the
    // request: before that (a TLS handshake, headers still arriving) shutdown closes the
    // connection by design.
    let slow = bcrypt::hash("x", 11).unwrap();
    dir.write(
        "web.yml",
        &format!("{TLS}basic_auth_users:\n  slow: '{slow}'\n"),
    );
    let read = || {
        log_lines(&log, "request read")
            .iter()
            .filter(|l| l.contains("/metrics"))
            .count()
    };
    let before = read();
    let in_flight = {
        let (ca2_file, url) = (ca2_file.clone(), https("/metrics"));
        std::thread::spawn(move || curl(&["--cacert", &ca2_file, "-u", "slow:wrong", &url]))
    };
    let waited = Instant::now();
    while read() == before {
        // (Finished between the two looks, on a stalled machine: it was read.)
        if in_flight.is_finished() && read() > before {
            break;
        }
        assert!(
            !in_flight.is_finished() && waited.elapsed() < Duration::from_secs(30),
            "the daemon never read the request"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = d.terminate();
    let r = in_flight.join().unwrap();
    assert_eq!(
        r.status, 401,
        "the request in flight at SIGTERM is answered: {r:?}"
    );
    assert!(took < Duration::from_secs(5), "stopped after {took:?}");
}

#[test]
fn client_certificates_every_client_auth_type() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    if need("curl").is_none() {
        return;
    }
    let dir = TempDir::new("mtls");
    let ca = Ca::new("memtrace test CA");
    let other = Ca::new("another CA");
    let server = ca.server();
    dir.write("server.crt", &server.cert);
    dir.write("server.key", &server.key);
    let ca_file = arg(&dir.write("ca.crt", &ca.pem));
    let good = ca.client("prometheus");
    let bad = other.client("mallory");
    let good_cert = arg(&dir.write("good.crt", &good.cert));
    let good_key = arg(&dir.write("good.key", &good.key));
    let bad_cert = arg(&dir.write("bad.crt", &bad.cert));
    let bad_key = arg(&dir.write("bad.key", &bad.key));
    let auth = |t: &str| format!("{TLS}  client_auth_type: {t}\n  client_ca_file: ca.crt\n");
    let config = dir.write("web.yml", &auth("RequireAndVerifyClientCert"));
    let log = dir.path("daemon.log");
    let port = free_port();
    let url = format!("https://127.0.0.1:{port}/metrics");
    let d = start(
        port,
        &config,
        &log,
        &[],
        &[
            "--cacert", &ca_file, "--cert", &good_cert, "--key", &good_key,
        ],
    );
    let none = || curl(&["--cacert", &ca_file, &url]);
    let with_good = || {
        curl(&[
            "--cacert", &ca_file, "--cert", &good_cert, "--key", &good_key, &url,
        ])
    };
    let with_bad = || {
        curl(&[
            "--cacert", &ca_file, "--cert", &bad_cert, "--key", &bad_key, &url,
        ])
    };
    let expect = |mode: &str, (n, g, b): (u16, u16, u16)| {
        let got = (none().status, with_good().status, with_bad().status);
        assert_eq!(
            got,
            (n, g, b),
            "{mode}: (no certificate, this CA's, another CA's)"
        );
    };
    // 0: refused in the handshake, no HTTP response.
    expect("RequireAndVerifyClientCert", (0, 200, 0));
    assert!(with_good().body.contains("memtrace_build_info{"));
    for (mode, want) in [
        ("VerifyClientCertIfGiven", (200, 200, 0)),
        ("RequireAnyClientCert", (0, 200, 200)),
        ("RequestClientCert", (200, 200, 200)),
        ("RequireAndVerifyClientCert", (0, 200, 0)),
    ] {
        dir.write("web.yml", &auth(mode));
        expect(mode, want);
    }
    // TLS versions reload too.
    dir.write("web.yml", &format!("{TLS}  min_version: TLS13\n"));
    assert_eq!(
        curl(&["--cacert", &ca_file, "--tls-max", "1.2", &url]).status,
        0
    );
    assert_eq!(curl(&["--cacert", &ca_file, &url]).status, 200);
    dir.write("web.yml", &format!("{TLS}  max_version: TLS12\n"));
    let r = curl(&["--cacert", &ca_file, "-v", &url]);
    assert_eq!(r.status, 200);
    assert_eq!(curl(&["--cacert", &ca_file, "--tlsv1.3", &url]).status, 0);
    assert!(
        log_lines(&log, "not reloaded").is_empty(),
        "{:?}",
        log_lines(&log, "not reloaded")
    );
    d.terminate();
}

/// Timeouts, sizes and the cap, exactly, on a daemon with small bounds.
#[test]
fn timeouts_sizes_and_eviction() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    let port = free_port();
    let mut d = Daemon::start_with(
        port,
        &[
            "--web.read-header-timeout",
            "2",
            "--web.idle-timeout",
            "4",
            "--web.max-header-bytes",
            "4096",
            "--web.max-connections",
            "4",
        ],
    );
    let in_window = |t: Option<Duration>, lo: f64, hi: f64, what: &str| {
        let t = t.unwrap_or_else(|| panic!("{what}: still open"));
        assert!(
            t >= Duration::from_secs_f64(lo) && t <= Duration::from_secs_f64(hi),
            "{what}: closed after {t:?}, expected {lo}–{hi} s"
        );
    };

    // A connection that sends nothing, or part of a header and then nothing, or dribbles a
    // header a byte at a time: closed after the 2 s read-header timeout, without a reply.
    let mut silent = connect(port);
    let (got, t) = wait_closed(&mut silent, Duration::from_secs(8));
    assert!(got.is_empty());
    in_window(t, 1.8, 3.5, "silent");
    let mut partial = connect(port);
    partial
        .write_all(b"GET /metrics HTTP/1.1\r\nX-a: ")
        .unwrap();
    let (got, t) = wait_closed(&mut partial, Duration::from_secs(8));
    assert!(got.is_empty(), "{}", String::from_utf8_lossy(&got));
    in_window(t, 1.8, 3.5, "partial header");
    let mut dribble = connect(port);
    let start = Instant::now();
    let closed = loop {
        if dribble.write_all(b"a").is_err() {
            break start.elapsed();
        }
        let (_, t) = wait_closed(&mut dribble, Duration::from_millis(200));
        if t.is_some() {
            break start.elapsed();
        }
        assert!(
            start.elapsed() < Duration::from_secs(8),
            "dribbler still open"
        );
    };
    in_window(Some(closed), 1.8, 3.7, "dribbled header");

    // A keep-alive connection: served, then closed after the 4 s idle timeout (not the 2 s
    // header timeout).
    let mut keep = connect(port);
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, body) = read_response(&mut keep, Duration::from_secs(5));
    assert_eq!(
        (status.as_str(), body.as_slice()),
        ("HTTP/1.1 200 OK", &b"ok\n"[..])
    );
    std::thread::sleep(Duration::from_secs(1));
    keep.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let (status, _) = read_response(&mut keep, Duration::from_secs(5));
    assert_eq!(status, "HTTP/1.1 200 OK", "still open after 1 s idle");
    let (got, t) = wait_closed(&mut keep, Duration::from_secs(10));
    assert!(got.is_empty());
    in_window(t, 3.8, 5.5, "idle keep-alive");

    // Headers above --web.max-header-bytes: 431, and the connection is closed.
    let mut big = connect(port);
    let pad = "a".repeat(5000);
    write!(
        big,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: {pad}\r\n\r\n"
    )
    .unwrap();
    let (got, t) = wait_closed(&mut big, Duration::from_secs(5));
    let text = String::from_utf8_lossy(&got);
    assert!(
        text.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
        "{text}"
    );
    assert!(t.is_some(), "closed after the 431");
    let mut fits = connect(port);
    let pad = "a".repeat(3000);
    write!(
        fits,
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-a: {pad}\r\n\r\n"
    )
    .unwrap();
    assert_eq!(
        read_response(&mut fits, Duration::from_secs(5)).0,
        "HTTP/1.1 200 OK"
    );
    drop(fits);
    // A request body: 413, and the connection is closed.
    for req in [
        "POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello",
        "GET /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut s = connect(port);
        s.write_all(req.as_bytes()).unwrap();
        let (got, t) = wait_closed(&mut s, Duration::from_secs(5));
        let text = String::from_utf8_lossy(&got);
        assert!(
            text.starts_with("HTTP/1.1 413 Payload Too Large\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nconnection: close\r\n"), "{text}");
        assert!(t.is_some(), "closed after the 413");
    }

    // The cap (4): a fifth connection closes the one idle longest, the others stay. The four
    // are keep-alive connections, served one after the other (idle timeout 4 s).
    let mut conns: Vec<_> = (0..4)
        .map(|_| {
            let mut c = connect(port);
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            assert_eq!(
                read_response(&mut c, Duration::from_secs(5)).0,
                "HTTP/1.1 200 OK"
            );
            std::thread::sleep(Duration::from_millis(50));
            c
        })
        .collect();
    let mut fifth = connect(port);
    let (_, t) = wait_closed(&mut conns[0], Duration::from_secs(1));
    assert!(t.is_some(), "the oldest idle connection is closed at once");
    for c in &mut conns[1..] {
        let (_, t) = wait_closed(c, Duration::from_millis(100));
        assert!(t.is_none(), "the younger ones stay");
    }
    fifth
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut fifth, Duration::from_secs(5)).0,
        "HTTP/1.1 200 OK"
    );
    // The fifth, just served, is younger than the others: the next arrival evicts conns[1].
    let (status, _, _) = timed_get(port, "/healthz");
    assert_eq!(status, "HTTP/1.1 200 OK");
    let (_, t) = wait_closed(&mut conns[1], Duration::from_secs(1));
    assert!(t.is_some(), "the next idlest made room");
    drop(conns);
    drop(fifth);

    // SIGHUP without a web config file: logged, not fatal.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(d.child.id() as i32, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(d.child.try_wait().unwrap().is_none(), "alive after SIGHUP");
    assert_eq!(get(port, "/healthz").unwrap().0, 200);
    let took = d.terminate();
    assert!(took < Duration::from_secs(1), "stopped after {took:?}");
}

/// The load test: 2000 idle connections opened (the daemon closes the idlest beyond
/// its cap of 512 as they arrive; this side keeps them open) and 300 clients dribbling
/// partial headers a byte at a time (reconnecting when closed) do not keep a scrape from
/// answering within a second, and the daemon's descriptors, counted after every scrape while
/// the connections arrive and after, stay within its cap.
#[test]
fn idle_and_slow_clients_do_not_starve_scrapes() {
    let Some(_guard) = require_kernel() else {
        return;
    };
    raise_nofile(8192);
    let port = free_port();
    let d = Daemon::start(port);
    let pid = d.child.id();
    let baseline = open_fds(pid);

    let stop = Arc::new(AtomicBool::new(false));
    let dribbler = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            const HEAD: &[u8] = b"GET /metrics HTTP/1.1\r\nX-a: ";
            let dial = || std::net::TcpStream::connect(("127.0.0.1", port)).ok();
            let mut conns: Vec<_> = (0..300).map(|_| (dial(), 0)).collect();
            let mut reconnects = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for (c, sent) in conns.iter_mut() {
                    let byte = HEAD.get(*sent).copied().unwrap_or(b'a');
                    match c {
                        Some(s) if (&*s).write_all(&[byte]).is_ok() => *sent += 1,
                        _ => {
                            // Closed by the daemon (made room, or timed out): dial again.
                            *c = dial();
                            *sent = 0;
                            reconnects += 1;
                        }
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            reconnects
        })
    };
    let mut worst = Duration::ZERO;
    let mut most_fds = 0;
    // A scrape, and the daemon's descriptors counted after it: the cap (512) bounds them, one
    // connection accepted and waiting for room beyond it.
    let mut scrape = || {
        let (status, body, took) = timed_get(port, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(String::from_utf8_lossy(&body).contains("memtrace_build_info{"));
        worst = worst.max(took);
        let fds = open_fds(pid);
        most_fds = most_fds.max(fds);
        assert!(
            fds <= baseline + 512 + 4,
            "the daemon holds {fds} descriptors, {baseline} before the load (cap 512)"
        );
    };
    // Scrapes while 2000 idle connections arrive (the daemon closes the idlest beyond its cap
    // as they come; the client keeps its ends open), and afterwards.
    let opener = std::thread::spawn(move || {
        let t = Instant::now();
        let idle: Vec<_> = (0..2000).map(|_| connect(port)).collect();
        (idle, t.elapsed())
    });
    let mut during = 0;
    while !opener.is_finished() {
        scrape();
        during += 1;
    }
    let (mut idle, opened) = opener.join().unwrap();
    eprintln!("2000 idle connections opened in {opened:?}, {during} scrapes meanwhile");
    for _ in 0..5 {
        scrape();
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "slowest scrape under load: {worst:?}; at most {most_fds} daemon descriptors, \
         {baseline} before"
    );
    assert!(worst < Duration::from_secs(1), "a scrape took {worst:?}");

    stop.store(true, Ordering::Relaxed);
    let reconnects = dribbler.join().unwrap();
    let closed = idle
        .iter_mut()
        .filter(|c| {
            c.set_nonblocking(true).unwrap();
            // EOF or a reset: closed by the daemon; would block: still open.
            !matches!((&**c).read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count();
    eprintln!(
        "{closed} of the 2000 idle connections closed by the daemon; {reconnects} dribbler reconnects"
    );
    assert!(
        closed >= 2000 - 512,
        "idle connections made room: {closed} closed"
    );
    drop(idle);
    let took = d.terminate();
    assert!(took < Duration::from_secs(2), "stopped after {took:?}");
}

mod fuzz {
    use proptest::prelude::*;
    use std::path::Path;

    fn check(text: &str) {
        if let Err(e) = memtrace::web::config::parse(Path::new("/x/web.yml"), text) {
            let e = e.to_string();
            assert_eq!(e.lines().count(), 1, "{e:?}");
            assert!(e.starts_with("web config file /x/web.yml: "), "{e}");
        }
    }

    const KEYS: &[&str] = &[
        "tls_server_config",
        "http_server_config",
        "basic_auth_users",
        "rate_limit",
        "cert",
        "key",
        "client_ca",
        "cert_file",
        "key_file",
        "client_auth_type",
        "client_ca_file",
        "client_allowed_sans",
        "min_version",
        "max_version",
        "cipher_suites",
        "prefer_server_cipher_suites",
        "curve_preferences",
        "http2",
        "headers",
        "X-Frame-Options",
        "X-Content-Type-Options",
        "Strict-Transport-Security",
        "alice",
        "unknown_key",
        "",
    ];
    const VALUES: &[&str] = &[
        "",
        "~",
        "true",
        "no",
        "12",
        "-1",
        "1e999",
        "TLS12",
        "TLS13",
        "TLS10",
        "RequireAndVerifyClientCert",
        "NoClientCert",
        "deny",
        "nosniff",
        "server.crt",
        "/dev/null",
        "$2y$10$abcdefghijklmnopqrstuvABCDEFGHIJKLMNOPQRSTUVWXYZ01234",
        "[a, b]",
        "{a: b}",
        "[X25519, CurveP521]",
        "[TLS_AES_128_GCM_SHA256]",
        "\"multi\\nline\"",
        "'quoted: yes'",
        "&anchor x",
        "*anchor",
        "!!binary aGVsbG8=",
        "|\n  block\n  text",
        "- item",
        "\u{fe0f}é",
    ];

    /// Near-valid documents: toolkit keys nested with toolkit-ish values, at indents that
    /// are sometimes wrong.
    fn document() -> impl Strategy<Value = String> {
        let line = (
            0usize..4,
            prop::sample::select(KEYS),
            prop::option::of(prop::sample::select(VALUES)),
        )
            .prop_map(|(indent, key, value)| {
                format!(
                    "{}{key}:{}\n",
                    "  ".repeat(indent),
                    value.map(|v| format!(" {v}")).unwrap_or_default()
                )
            });
        prop::collection::vec(line, 0..12).prop_map(|l| l.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1500, failure_persistence: None, ..ProptestConfig::default() })]

        #[test]
        fn arbitrary_bytes_never_panic_and_errors_are_one_line(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
            check(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn near_valid_documents_never_panic_and_errors_are_one_line(doc in document()) {
            check(&doc);
        }

        #[test]
        fn arbitrary_strings_in_every_value_never_panic(
            key in prop::sample::select(KEYS[4..19].to_vec()),
            value in ".{0,40}",
        ) {
            check(&format!("tls_server_config:\n  cert_file: a\n  key_file: b\n  {key}: {value:?}\n"));
            check(&format!("http_server_config:\n  headers:\n    {key}: {value:?}\n"));
            check(&format!("basic_auth_users:\n  {value:?}: {value:?}\n"));
        }
    }
}
