//! `cargo xtask install`: the release binary, the systemd unit and its environment file, in
//! the places `deploy/systemd/memtrace.service` expects them. `--root` stages everything
//! under another directory (a package build, or a test) without touching the system.

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};

/// Where the files go, and what to do after copying them.
#[derive(Debug, Clone)]
pub struct Options {
    /// Everything is installed under this directory (`/` for the running system).
    pub root: PathBuf,
    /// The binary goes to `<prefix>/bin/memtrace`; the unit's `ExecStart=` names that path.
    pub prefix: PathBuf,
    /// The memtrace binary to install.
    pub binary: PathBuf,
    /// `systemctl daemon-reload` and `systemctl enable --now memtrace` afterwards.
    pub enable: bool,
}

/// The binary path the repository's unit names in `ExecStart=`.
const UNIT_BINARY: &str = "/usr/local/bin/memtrace";

/// Refuses options that make no sense, before anything is built.
pub fn check(root: &Path, prefix: &Path, enable: bool) -> anyhow::Result<()> {
    if !prefix.is_absolute() {
        bail!(
            "--prefix must be an absolute path, not {}",
            prefix.display()
        );
    }
    if enable && root != Path::new("/") {
        bail!("--enable starts the service on this machine: it cannot be combined with --root");
    }
    Ok(())
}

/// Installs the files of `opts` from the repository at `repo`; returns one line per file
/// saying what was done (also printed).
pub fn install(repo: &Path, opts: &Options) -> anyhow::Result<Vec<String>> {
    check(&opts.root, &opts.prefix, opts.enable)?;
    if !opts.binary.is_file() {
        bail!("no memtrace binary at {}", opts.binary.display());
    }
    let bin_path = opts.prefix.join("bin/memtrace");
    let under_root = |p: &Path| opts.root.join(p.strip_prefix("/").unwrap_or(p));
    let mut done = Vec::new();

    // The binary: always replaced (an upgrade).
    let bin = under_root(&bin_path);
    copy(&opts.binary, &bin, 0o755)?;
    done.push(format!(
        "installed {} (from {})",
        bin.display(),
        opts.binary.display()
    ));

    // The unit: always replaced, its ExecStart pointing at the installed binary.
    let unit_src = repo.join("deploy/systemd/memtrace.service");
    let unit_text = std::fs::read_to_string(&unit_src)
        .with_context(|| format!("read {}", unit_src.display()))?;
    let exec = format!("ExecStart={UNIT_BINARY} ");
    if !unit_text.contains(&exec) {
        bail!("{} has no `{exec}` line", unit_src.display());
    }
    let unit_text = unit_text.replace(&exec, &format!("ExecStart={} ", bin_path.display()));
    let unit = under_root(Path::new("/etc/systemd/system/memtrace.service"));
    write(&unit, unit_text.as_bytes(), 0o644)?;
    done.push(format!("installed {}", unit.display()));

    // The settings: the administrator's own, so never overwritten.
    let env = under_root(Path::new("/etc/default/memtrace"));
    if env.exists() {
        done.push(format!("kept {} (it exists)", env.display()));
    } else {
        copy(&repo.join("deploy/systemd/memtrace.default"), &env, 0o644)?;
        done.push(format!("installed {}", env.display()));
    }
    for line in &done {
        println!("xtask: {line}");
    }

    if opts.enable {
        crate::status(std::process::Command::new("systemctl").arg("daemon-reload"))?;
        crate::status(std::process::Command::new("systemctl").args([
            "enable",
            "--now",
            "memtrace.service",
        ]))?;
        done.push("enabled and started memtrace.service".into());
        println!("xtask: enabled and started memtrace.service");
    } else if opts.root == Path::new("/") {
        println!(
            "xtask: not started; to run it: systemctl daemon-reload && systemctl enable --now memtrace"
        );
    }
    Ok(done)
}

fn copy(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    let bytes = std::fs::read(from).with_context(|| format!("read {}", from.display()))?;
    write(to, &bytes, mode)
}

/// Writes `bytes` to `to` with `mode` through a temporary file renamed into place, so a
/// running binary is replaced rather than overwritten in place (which fails: ETXTBSY).
fn write(to: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    let dir = to.parent().context("a file to install has a directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    let name = to.file_name().context("a file name")?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.xtask-install"));
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, to).with_context(|| format!("rename to {}", to.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt as _;

    fn repo() -> PathBuf {
        crate::workspace_root()
    }

    fn temp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("xtask-install-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p)
            .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
            .permissions()
            .mode()
            & 0o777
    }

    #[test]
    fn installs_into_a_root_and_keeps_existing_settings() {
        let root = temp("root");
        let bin = temp("bin").join("memtrace");
        std::fs::write(&bin, b"#!/bin/sh\necho memtrace\n").unwrap();
        let opts = Options {
            root: root.clone(),
            prefix: PathBuf::from("/usr/local"),
            binary: bin.clone(),
            enable: false,
        };
        let done = install(&repo(), &opts).expect("install");
        assert_eq!(done.len(), 3, "{done:?}");

        let installed = root.join("usr/local/bin/memtrace");
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&bin).unwrap()
        );
        assert_eq!(mode(&installed), 0o755);
        // With the default prefix the unit is the repository's, byte for byte.
        let unit = root.join("etc/systemd/system/memtrace.service");
        assert_eq!(
            std::fs::read_to_string(&unit).unwrap(),
            std::fs::read_to_string(repo().join("deploy/systemd/memtrace.service")).unwrap()
        );
        assert_eq!(mode(&unit), 0o644);
        let env = root.join("etc/default/memtrace");
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            std::fs::read_to_string(repo().join("deploy/systemd/memtrace.default")).unwrap()
        );
        assert_eq!(mode(&env), 0o644);
        assert!(done[2].starts_with("installed "), "{done:?}");

        // A second run replaces the binary and the unit but keeps the administrator's settings.
        std::fs::write(&env, "MEMTRACE_CACHES_MAX=7\n").unwrap();
        std::fs::write(&bin, b"#!/bin/sh\necho memtrace v2\n").unwrap();
        let done = install(&repo(), &opts).expect("second install");
        assert_eq!(
            std::fs::read_to_string(&env).unwrap(),
            "MEMTRACE_CACHES_MAX=7\n"
        );
        assert!(done[2].starts_with("kept "), "{done:?}");
        assert_eq!(
            std::fs::read(&installed).unwrap(),
            std::fs::read(&bin).unwrap()
        );
        // Nothing else was created: no temporary files left behind, nothing outside the root.
        let mut files = Vec::new();
        walk(&root, &root, &mut files);
        files.sort();
        assert_eq!(
            files,
            [
                "etc/default/memtrace",
                "etc/systemd/system/memtrace.service",
                "usr/local/bin/memtrace"
            ]
        );
        let _ = std::fs::remove_dir_all(&root);
        let _ = std::fs::remove_dir_all(bin.parent().unwrap());
    }

    /// Every file under `dir`, relative to `root`.
    fn walk(root: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if e.file_type().unwrap().is_dir() {
                walk(root, &e.path(), out);
            } else {
                let p = e.path();
                out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }

    #[test]
    fn a_prefix_moves_the_binary_and_the_units_exec_start() {
        let root = temp("prefix");
        let bin = root.join("fake-memtrace");
        std::fs::write(&bin, b"x").unwrap();
        install(
            &repo(),
            &Options {
                root: root.clone(),
                prefix: PathBuf::from("/opt/memtrace"),
                binary: bin,
                enable: false,
            },
        )
        .expect("install");
        assert!(root.join("opt/memtrace/bin/memtrace").is_file());
        let unit =
            std::fs::read_to_string(root.join("etc/systemd/system/memtrace.service")).unwrap();
        assert!(
            unit.contains("\nExecStart=/opt/memtrace/bin/memtrace daemon\n"),
            "{unit}"
        );
        assert!(!unit.contains(UNIT_BINARY), "{unit}");
        let _ = std::fs::remove_dir_all(&root);
    }

    #[test]
    fn refuses_what_makes_no_sense() {
        let root = temp("refuse");
        let bin = root.join("fake-memtrace");
        std::fs::write(&bin, b"x").unwrap();
        let base = Options {
            root: root.clone(),
            prefix: PathBuf::from("/usr/local"),
            binary: bin,
            enable: false,
        };
        for (opts, what) in [
            (
                Options {
                    enable: true,
                    ..base.clone()
                },
                "--enable",
            ),
            (
                Options {
                    prefix: "usr".into(),
                    ..base.clone()
                },
                "--prefix",
            ),
            (
                Options {
                    binary: root.join("missing"),
                    ..base.clone()
                },
                "no memtrace binary",
            ),
        ] {
            let err = install(&repo(), &opts).expect_err(what).to_string();
            assert!(err.contains(what), "{err}");
        }
        // Nothing was installed by the refused runs.
        assert!(!root.join("etc").exists());
        assert!(!root.join("usr").exists());
        let _ = std::fs::remove_dir_all(&root);
    }
}
