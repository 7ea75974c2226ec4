//! The loaded web config file, and its reloads.
//!
//! As in the exporter-toolkit, a changed file takes effect without a restart: before each
//! new connection and each request the server asks for the [`Watched::current`]
//! configuration, which looks at the metadata (device, inode, size, modification and change
//! times) of the config file and of every certificate, key and CA file it names: a few
//! `stat` calls, no reading. When one of them changed, the reload itself (reading the files,
//! parsing the PEM, building the rustls configuration) runs on one of tokio's blocking
//! threads, never on an async worker, and at most one at a time: the connection that saw the
//! change waits for it (so that the next connection after an edit gets the new
//! configuration), the others meanwhile use the configuration in force. SIGHUP reloads
//! unconditionally ([`Watched::reload`], also on a blocking thread). A renewed certificate is
//! therefore picked up by the next connection after its file is replaced.
//!
//! A reload that fails keeps the configuration in force and logs its one-line reason once;
//! the same files are not tried again (nor the failure logged again) until one of them
//! changes. Whether TLS is on and whether basic auth is on are fixed at start: a reload that
//! would turn either on or off fails, so that a half-edited file (say, truncated and being
//! rewritten) can never drop the endpoint to plain HTTP or open it to anyone.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
};

use super::{
    auth::Users,
    config::{self, ConfigError, WebConfig},
    tls,
};
use crate::sync::lock;

/// What a file looked like when it was read: its identity and times, or why it could not be
/// looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stamp {
    Seen {
        dev: u64,
        ino: u64,
        size: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    Unreadable(std::io::ErrorKind),
}

fn stamp(path: &Path) -> Stamp {
    match std::fs::metadata(path) {
        Ok(m) => Stamp::Seen {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        },
        Err(e) => Stamp::Unreadable(e.kind()),
    }
}

/// The files a load read, each stamped just before it was read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Stamps(Vec<(PathBuf, Stamp)>);

impl Stamps {
    fn add(&mut self, path: &Path) {
        if !self.0.iter().any(|(p, _)| p == path) {
            self.0.push((path.to_path_buf(), stamp(path)));
        }
    }

    /// Whether any file now differs from its stamp.
    fn changed(&self) -> bool {
        self.0.iter().any(|(p, s)| stamp(p) != *s)
    }

    fn merge(mut self, other: &Stamps) -> Stamps {
        for (p, s) in &other.0 {
            if !self.0.iter().any(|(q, _)| q == p) {
                self.0.push((p.clone(), s.clone()));
            }
        }
        self
    }
}

/// One loaded configuration: what the file said, its TLS configuration built, its users.
pub struct Loaded {
    pub config: WebConfig,
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub users: Users,
    stamps: Stamps,
}

/// Reads and checks the file at `path` and everything it names. The stamps name every file
/// read, also when the load fails.
fn load(path: &Path) -> (Stamps, Result<Loaded, ConfigError>) {
    let mut stamps = Stamps::default();
    stamps.add(path);
    let result = (|| {
        let text = read_config(path)?;
        let config = config::parse(path, &text)?;
        let tls = match &config.tls {
            Some(t) => {
                for f in t.files() {
                    stamps.add(&f);
                }
                Some(Arc::new(
                    tls::server_config(t).map_err(|e| ConfigError::new(path, e))?,
                ))
            }
            None => None,
        };
        Ok(Loaded {
            users: Users::new(config.users.clone()),
            tls,
            config,
            stamps: Stamps::default(),
        })
    })();
    let result = result.map(|mut l| {
        l.stamps = stamps.clone();
        l
    });
    (stamps, result)
}

/// The web config file's text: at most 1 MiB of UTF-8.
fn read_config(path: &Path) -> Result<String, ConfigError> {
    let text = super::read_bounded(path).and_then(|bytes| {
        String::from_utf8(bytes).map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "stream did not contain valid UTF-8",
            )
        })
    });
    text.map_err(|e| match e.kind() {
        std::io::ErrorKind::FileTooLarge => ConfigError::new(
            path,
            format!("{e}, which no web config file is; check --web.config.file"),
        ),
        _ => ConfigError::new(
            path,
            format!("cannot read it: {e}; check --web.config.file"),
        ),
    })
}

/// Why `new` cannot replace `current` by a reload: it would switch TLS or basic auth on or
/// off, which only a restart may do (a file seen half-written must not do it).
fn switch(current: &Loaded, new: &Loaded) -> Option<String> {
    let on_off = |on: bool| if on { "on" } else { "off" };
    if new.tls.is_some() != current.tls.is_some() {
        return Some(format!(
            "it would turn TLS {}, which takes a restart of memtrace",
            on_off(new.tls.is_some())
        ));
    }
    if new.users.required() != current.users.required() {
        return Some(format!(
            "it would turn basic auth {} (basic_auth_users {}), which takes a restart of memtrace",
            on_off(new.users.required()),
            if new.users.required() {
                "added"
            } else {
                "gone"
            }
        ));
    }
    None
}

struct State {
    current: Arc<Loaded>,
    /// The files of the last failed reload and of the configuration in force, as they were
    /// then: until one of them changes, nothing is tried again.
    failed: Option<Stamps>,
}

/// The web config file, loaded, with the rules of its reloads.
pub struct Watched {
    path: PathBuf,
    state: Mutex<State>,
    /// A change-triggered reload is scheduled or running (at most one).
    pending: AtomicBool,
    /// One reload at a time, change-triggered or SIGHUP; held on a blocking thread.
    reloading: Mutex<()>,
}

/// Clears [`Watched::pending`] when the reload it stands for ends, ran or not.
struct Pending(Arc<Watched>);

impl Drop for Pending {
    fn drop(&mut self) {
        self.0.pending.store(false, Ordering::Release);
    }
}

impl Watched {
    /// Loads the file at `path`: the error names the file and the problem.
    pub fn load(path: &Path) -> Result<Watched, ConfigError> {
        let (_, loaded) = load(path);
        Ok(Watched {
            path: path.to_path_buf(),
            state: Mutex::new(State {
                current: Arc::new(loaded?),
                failed: None,
            }),
            pending: AtomicBool::new(false),
            reloading: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The configuration in force, as it is (no look at the files).
    pub fn in_force(&self) -> Arc<Loaded> {
        lock(&self.state).current.clone()
    }

    /// Whether a file of the configuration in force (or of the last failed reload) changed:
    /// `stat` calls only.
    fn stale(&self) -> bool {
        let (current, failed) = {
            let s = lock(&self.state);
            (s.current.clone(), s.failed.clone())
        };
        match &failed {
            Some(failed) => failed.changed(),
            None => current.stamps.changed(),
        }
    }

    /// The configuration in force, reloaded first if a file it was read from changed. The
    /// reload runs on a blocking thread; while one is under way, the configuration in force
    /// is returned at once.
    pub async fn current(self: &Arc<Self>) -> Arc<Loaded> {
        if !self.stale()
            || self
                .pending
                .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
        {
            return self.in_force();
        }
        let pending = Pending(self.clone());
        let reload = tokio::task::spawn_blocking(move || {
            let w = &pending.0;
            let _one = lock(&w.reloading);
            // A SIGHUP reload may have just read the same change.
            if w.stale() {
                w.reload_now(false);
            }
        });
        // Cancelled (its connection closed) or not, the reload goes on and clears `pending`.
        let _ = reload.await;
        self.in_force()
    }

    /// Reloads now, whatever changed (SIGHUP), and logs the outcome. Blocks: call it from a
    /// blocking thread.
    pub fn reload(&self) {
        let _one = lock(&self.reloading);
        self.reload_now(true);
    }

    fn reload_now(&self, asked: bool) {
        let (stamps, result) = load(&self.path);
        let mut s = lock(&self.state);
        let result = result.and_then(|new| match switch(&s.current, &new) {
            Some(why) => Err(ConfigError::new(&self.path, why)),
            None => Ok(new),
        });
        match result {
            Ok(new) => {
                s.current = Arc::new(new);
                s.failed = None;
                tracing::info!(
                    file = %self.path.display(),
                    trigger = if asked { "SIGHUP" } else { "file changed" },
                    "web config reloaded"
                );
            }
            Err(e) => {
                s.failed = Some(stamps.merge(&s.current.stamps));
                tracing::error!(
                    trigger = if asked { "SIGHUP" } else { "file changed" },
                    "web config not reloaded, the previous one stays in force: {e}"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("memtrace-reload-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Rewrites `path` so that its metadata surely differs (size and inode).
    fn replace(path: &Path, text: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    /// A self-signed certificate and its key written to `server.crt` and `server.key` in
    /// `d`: the `tls_server_config` naming them.
    fn certificate(d: &Path) -> String {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        replace(&d.join("server.crt"), &c.cert.pem());
        replace(&d.join("server.key"), &c.signing_key.serialize_pem());
        "tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\n".to_string()
    }

    fn users(names: &[&str]) -> String {
        let h = bcrypt::hash("x", 4).unwrap();
        let mut s = String::from("basic_auth_users:\n");
        for n in names {
            s += &format!("  {n}: {h}\n");
        }
        s
    }

    /// `text` is a valid configuration on its own (so that only the reload rules can refuse
    /// it).
    fn valid(path: &Path, text: &str) {
        replace(path, text);
        if let Err(e) = load(path).1 {
            panic!("{text:?} does not load: {e}");
        }
    }

    #[tokio::test]
    async fn changes_reload_and_failures_keep_the_old_configuration() {
        let d = dir("changes");
        let f = d.join("web.yml");
        std::fs::write(&f, users(&["alice"])).unwrap();
        let w = Arc::new(Watched::load(&f).unwrap());
        let first = w.current().await;
        assert!(
            Arc::ptr_eq(&first, &w.current().await),
            "no change: no reload"
        );
        replace(&f, &users(&["alice", "bob"]));
        let second = w.current().await;
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.config.users.len(), 2);
        // A broken file: the previous configuration stays, and is not retried until the file
        // changes again.
        replace(&f, "basic_auth_users: [\n");
        assert!(Arc::ptr_eq(&second, &w.current().await));
        assert!(lock(&w.state).failed.is_some());
        assert!(Arc::ptr_eq(&second, &w.current().await));
        replace(&f, &users(&["carol"]));
        let third = w.current().await;
        assert_eq!(third.config.users.len(), 1);
        assert!(lock(&w.state).failed.is_none());
        // A file that is gone keeps the configuration in force.
        std::fs::remove_file(&f).unwrap();
        assert!(Arc::ptr_eq(&third, &w.current().await));
        let w2 = w.clone();
        tokio::task::spawn_blocking(move || w2.reload())
            .await
            .unwrap();
        assert!(Arc::ptr_eq(&third, &w.current().await));
        let _ = std::fs::remove_dir_all(&d);
    }

    /// Each switch is a configuration that loads on its own, so only the rule refuses it.
    #[tokio::test]
    async fn a_reload_cannot_switch_tls_or_basic_auth_on_or_off() {
        let d = dir("switch");
        let f = d.join("web.yml");
        let tls = certificate(&d);
        for (start, edits) in [
            // TLS on → off, with or without users.
            (tls.clone(), vec![String::new(), users(&["alice"])]),
            // TLS off → on.
            (
                String::new(),
                vec![tls.clone(), format!("{tls}{}", users(&["alice"]))],
            ),
            // Basic auth on → off (an empty file, or one truncated to its TLS part).
            (
                users(&["alice"]),
                vec![String::new(), "http_server_config: {}\n".into()],
            ),
            (format!("{tls}{}", users(&["alice"])), vec![tls.clone()]),
            // Basic auth off → on.
            (String::new(), vec![users(&["alice"])]),
            (tls.clone(), vec![format!("{tls}{}", users(&["alice"]))]),
        ] {
            valid(&f, &start);
            let w = Arc::new(Watched::load(&f).unwrap());
            let first = w.current().await;
            for edit in &edits {
                valid(&f, edit);
                assert!(
                    Arc::ptr_eq(&first, &w.current().await),
                    "{start:?} then {edit:?}: refused"
                );
                assert!(lock(&w.state).failed.is_some());
                let w2 = w.clone();
                tokio::task::spawn_blocking(move || w2.reload())
                    .await
                    .unwrap();
                assert!(Arc::ptr_eq(&first, &w.in_force()), "SIGHUP refuses it too");
            }
            // What keeps both as they were reloads.
            valid(&f, &start);
            let again = w.current().await;
            assert!(!Arc::ptr_eq(&first, &again), "{start:?} reloads");
            assert_eq!(again.tls.is_some(), first.tls.is_some());
            assert_eq!(again.users.required(), first.users.required());
        }
        // And the messages say what takes a restart.
        let (on, off) = (
            load_text(&d, &format!("{tls}{}", users(&["a"]))),
            load_text(&d, ""),
        );
        assert_eq!(
            switch(&on, &off).as_deref(),
            Some("it would turn TLS off, which takes a restart of memtrace")
        );
        let tls_only = load_text(&d, &tls);
        assert_eq!(
            switch(&on, &tls_only).as_deref(),
            Some(
                "it would turn basic auth off (basic_auth_users gone), which takes a restart of \
                 memtrace"
            )
        );
        assert!(switch(&tls_only, &on).unwrap().contains("basic auth on"));
        assert!(switch(&on, &on).is_none());
        let _ = std::fs::remove_dir_all(&d);
    }

    fn load_text(d: &Path, text: &str) -> Loaded {
        let f = d.join("other.yml");
        replace(&f, text);
        load(&f).1.unwrap()
    }

    /// The change-triggered reload runs on a blocking thread, one at a time: while it waits
    /// (here for a SIGHUP reload holding the lock), the runtime's only worker keeps serving
    /// the configuration in force.
    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn a_reload_runs_off_the_workers_one_at_a_time() {
        let d = dir("blocking");
        let f = d.join("web.yml");
        std::fs::write(&f, users(&["alice"])).unwrap();
        let w = Arc::new(Watched::load(&f).unwrap());
        let first = w.in_force();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = {
            let w = w.clone();
            std::thread::spawn(move || {
                let _one = lock(&w.reloading);
                held_tx.send(()).unwrap();
                let _ = release_rx.recv();
            })
        };
        held_rx.recv().unwrap();
        replace(&f, &users(&["alice", "bob"]));
        let waiting = tokio::spawn({
            let w = w.clone();
            async move { w.current().await }
        });
        // The first caller has scheduled the reload and waits for it, off this worker.
        let t = std::time::Instant::now();
        while !w.pending.load(Ordering::Acquire) {
            assert!(t.elapsed() < std::time::Duration::from_secs(10));
            tokio::task::yield_now().await;
        }
        for _ in 0..3 {
            let meanwhile = tokio::spawn({
                let w = w.clone();
                async move { w.current().await }
            });
            let got = tokio::time::timeout(std::time::Duration::from_secs(10), meanwhile)
                .await
                .expect("the worker is free")
                .unwrap();
            assert!(
                Arc::ptr_eq(&first, &got),
                "meanwhile: the configuration in force"
            );
        }
        assert!(!waiting.is_finished());
        release_tx.send(()).unwrap();
        holder.join().unwrap();
        let second = waiting.await.unwrap();
        assert_eq!(second.config.users.len(), 2, "the caller got the reload");
        assert!(Arc::ptr_eq(&second, &w.current().await));
        assert!(!w.pending.load(Ordering::Acquire));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn a_bad_file_at_start_is_one_line() {
        let d = dir("start");
        let f = d.join("web.yml");
        let e = Watched::load(&f).err().unwrap().to_string();
        assert!(
            e.starts_with(&format!("web config file {}: cannot read it", f.display())),
            "{e}"
        );
        std::fs::write(
            &f,
            "tls_server_config:\n  cert_file: nope.crt\n  key_file: nope.key\n",
        )
        .unwrap();
        let e = Watched::load(&f).err().unwrap().to_string();
        assert!(
            e.contains(&format!(
                "cannot read cert_file {}",
                d.join("nope.crt").display()
            )),
            "{e}"
        );
        assert_eq!(e.lines().count(), 1);
        // Files above 1 MiB are refused before they are parsed.
        std::fs::write(&f, "#".repeat((1 << 20) + 1)).unwrap();
        let e = Watched::load(&f).err().unwrap().to_string();
        assert!(
            e.ends_with(
                ": larger than 1 MiB, which no web config file is; check --web.config.file"
            ),
            "{e}"
        );
        std::fs::write(d.join("big.crt"), "#".repeat((1 << 20) + 1)).unwrap();
        std::fs::write(
            &f,
            "tls_server_config:\n  cert_file: big.crt\n  key_file: big.crt\n",
        )
        .unwrap();
        let e = Watched::load(&f).err().unwrap().to_string();
        assert!(e.contains("larger than 1 MiB, not a PEM file"), "{e}");
        let _ = std::fs::remove_dir_all(&d);
    }
}
