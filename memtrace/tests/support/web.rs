//! The daemon's secured endpoint, for end-to-end tests: certificates made here (rcgen),
//! web config files, curl against the daemon, raw TCP clients, and enough file descriptors
//! for thousands of connections.

use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// A private folder under the system's temporary one, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        let d = std::env::temp_dir().join(format!("memtrace-web-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// Writes `name` atomically (a new inode, as editors and Kubernetes do).
    pub fn write(&self, name: &str, text: &str) -> PathBuf {
        let p = self.path(name);
        let tmp = self.path(&format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A certificate authority that signs server and client certificates.
pub struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pub pem: String,
}

/// A certificate and its private key, in PEM.
pub struct Signed {
    pub cert: String,
    pub key: String,
}

impl Ca {
    pub fn new(name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let pem = params.self_signed(&key).unwrap().pem();
        Ca {
            issuer: Issuer::new(params, key),
            pem,
        }
    }

    fn sign(&self, names: &[&str], usage: ExtendedKeyUsagePurpose, cn: &str) -> Signed {
        let key = KeyPair::generate().unwrap();
        let mut params =
            CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![usage];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Signed {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A server certificate for 127.0.0.1 and localhost.
    pub fn server(&self) -> Signed {
        self.sign(
            &["127.0.0.1", "localhost"],
            ExtendedKeyUsagePurpose::ServerAuth,
            "memtrace test server",
        )
    }

    /// A client certificate.
    pub fn client(&self, cn: &str) -> Signed {
        self.sign(&[], ExtendedKeyUsagePurpose::ClientAuth, cn)
    }
}

/// What curl got: its exit status, the HTTP status (0 without a response), the response
/// headers and body.
#[derive(Debug)]
pub struct Reply {
    pub exit: i32,
    pub status: u16,
    pub headers: String,
    pub body: String,
}

impl Reply {
    /// The value of the response header `name` (case-insensitive), if present.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

static CALLS: AtomicU32 = AtomicU32::new(0);

/// Runs curl (silent, errors shown, 10 s at most) with `args`.
pub fn curl(args: &[&str]) -> Reply {
    let n = CALLS.fetch_add(1, Ordering::Relaxed);
    let headers = std::env::temp_dir().join(format!("memtrace-curl-{}-{n}", std::process::id()));
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10", "-D"])
        .arg(&headers)
        .args(["-w", "\n%{http_code}"])
        .args(args)
        .output()
        .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = stdout.rsplit_once('\n').unwrap_or(("", &stdout));
    let reply = Reply {
        exit: out.status.code().unwrap_or(-1),
        status: code.trim().parse().unwrap_or(0),
        headers: std::fs::read_to_string(&headers).unwrap_or_default(),
        body: body.to_string(),
    };
    let _ = std::fs::remove_file(&headers);
    reply
}

/// Raises this process' open-file limit to at least `n` (the hard limit too, as root).
pub fn raise_nofile(n: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim), 0);
        let want = lim.rlim_max.max(n);
        let new = libc::rlimit {
            rlim_cur: want,
            rlim_max: want,
        };
        assert_eq!(
            libc::setrlimit(libc::RLIMIT_NOFILE, &new),
            0,
            "cannot raise RLIMIT_NOFILE to {want}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// How many file descriptors process `pid` has open.
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

/// Connects to the daemon on loopback.
pub fn connect(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads from `s` until the daemon closes it (EOF or reset) or `limit` passes: the bytes
/// read and how long it took; `None` if it was still open at the limit.
pub fn wait_closed(s: &mut TcpStream, limit: Duration) -> (Vec<u8>, Option<Duration>) {
    let t = Instant::now();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let left = limit.saturating_sub(t.elapsed());
        if left.is_zero() {
            return (got, None);
        }
        s.set_read_timeout(Some(left)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => return (got, Some(t.elapsed())),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return (got, Some(t.elapsed()));
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return (got, None);
            }
            Err(e) => panic!("reading from the daemon: {e}"),
        }
    }
}

/// Reads one HTTP/1.1 response (with Content-Length) from `s`: status line and body.
pub fn read_response(s: &mut TcpStream, limit: Duration) -> (String, Vec<u8>) {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        if let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&got[..end]).into_owned();
            let len: usize = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + len {
                let status = head.lines().next().unwrap_or("").to_string();
                return (status, got[end + 4..end + 4 + len].to_vec());
            }
        }
        let n = s.read(&mut buf).expect("read a response");
        assert!(n > 0, "the daemon closed before the response was complete");
        got.extend_from_slice(&buf[..n]);
    }
}

/// A GET of `path` on a new connection, timed: (status line, body, time to the whole
/// response).
pub fn timed_get(port: u16, path: &str) -> (String, Vec<u8>, Duration) {
    let t = Instant::now();
    let mut s = connect(port);
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let (status, body) = read_response(&mut s, Duration::from_secs(10));
    (status, body, t.elapsed())
}

/// `path` relative to the test's folder, as a string.
pub fn arg(p: &Path) -> String {
    p.display().to_string()
}
