//! The loaded web config file, and its reloads.
//!
//! As in the exporter-toolkit, a changed file takes effect without a restart: before each
//! new connection and each request the server asks for the [`Watched::current`]
//! configuration, which looks at the metadata (device, inode, size, modification and change
//! times) of the config file and of every certificate, key and CA file it names, and
//! reloads only when one of them changed: a few `stat` calls, no reading. SIGHUP reloads
//! unconditionally ([`Watched::reload`]). A renewed certificate is therefore picked up by the
//! next connection after its file is replaced.
//!
//! A reload that fails keeps the configuration in force and logs its one-line reason once;
//! the same files are not tried again (nor the failure logged again) until one of them
//! changes. Whether TLS is on is fixed at start: a reload that would turn it on or off fails,
//! so that a half-edited file can never drop the endpoint to plain HTTP.

use std::{
    io::Read as _,
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{
    auth::Users,
    config::{self, ConfigError, WebConfig},
    tls,
};

/// The largest web config file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

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

fn read_config(path: &Path) -> Result<String, ConfigError> {
    let mut text = String::new();
    let read = std::fs::File::open(path)
        .and_then(|f| f.take(MAX_CONFIG_BYTES + 1).read_to_string(&mut text));
    match read {
        Ok(n) if n as u64 > MAX_CONFIG_BYTES => Err(ConfigError::new(
            path,
            "larger than 1 MiB, which no web config file is; check --web.config.file",
        )),
        Ok(_) => Ok(text),
        Err(e) => Err(ConfigError::new(
            path,
            format!("cannot read it: {e}; check --web.config.file"),
        )),
    }
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
    /// One reload at a time (the others use the configuration in force meanwhile).
    reloading: Mutex<()>,
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
            reloading: Mutex::new(()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The configuration in force, reloaded first if a file it was read from changed.
    pub fn current(&self) -> Arc<Loaded> {
        let (current, reference) = {
            let s = self.state();
            let reference = s.failed.clone();
            (s.current.clone(), reference)
        };
        let changed = match &reference {
            Some(failed) => failed.changed(),
            None => current.stamps.changed(),
        };
        if !changed {
            return current;
        }
        // Another connection is reloading: use what is in force until it is done.
        let Ok(_one) = self.reloading.try_lock() else {
            return current;
        };
        self.reload_now(false);
        self.state().current.clone()
    }

    /// Reloads now, whatever changed (SIGHUP), and logs the outcome.
    pub fn reload(&self) {
        let _one = self.reloading.lock().unwrap_or_else(|p| p.into_inner());
        self.reload_now(true);
    }

    fn reload_now(&self, asked: bool) {
        let (stamps, result) = load(&self.path);
        let mut s = self.state();
        let result = result.and_then(|new| {
            if new.tls.is_some() != s.current.tls.is_some() {
                return Err(ConfigError::new(
                    &self.path,
                    format!(
                        "it would turn TLS {}, which takes a restart of memtrace",
                        if new.tls.is_some() { "on" } else { "off" }
                    ),
                ));
            }
            Ok(new)
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

    #[test]
    fn changes_reload_and_failures_keep_the_old_configuration() {
        let d = dir("changes");
        let f = d.join("web.yml");
        let h = bcrypt::hash("x", 4).unwrap();
        std::fs::write(&f, format!("basic_auth_users:\n  alice: {h}\n")).unwrap();
        let w = Watched::load(&f).unwrap();
        let first = w.current();
        assert!(Arc::ptr_eq(&first, &w.current()), "no change: no reload");
        replace(
            &f,
            &format!("basic_auth_users:\n  alice: {h}\n  bob: {h}\n"),
        );
        let second = w.current();
        assert!(!Arc::ptr_eq(&first, &second));
        assert_eq!(second.config.users.len(), 2);
        // A broken file: the previous configuration stays, and is not retried until the file
        // changes again.
        replace(&f, "basic_auth_users: [\n");
        assert!(Arc::ptr_eq(&second, &w.current()));
        assert!(w.state().failed.is_some());
        assert!(Arc::ptr_eq(&second, &w.current()));
        // TLS cannot be turned on by a reload.
        replace(&f, "tls_server_config:\n  cert_file: a\n  key_file: b\n");
        assert!(Arc::ptr_eq(&second, &w.current()));
        replace(&f, "");
        let third = w.current();
        assert!(third.config.users.is_empty());
        assert!(w.state().failed.is_none());
        // A file that is gone keeps the configuration in force.
        std::fs::remove_file(&f).unwrap();
        assert!(Arc::ptr_eq(&third, &w.current()));
        w.reload();
        assert!(Arc::ptr_eq(&third, &w.current()));
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
        let _ = std::fs::remove_dir_all(&d);
    }
}
