//! Other programs the tests drive.

use std::path::PathBuf;

/// The path of a program on PATH, or a loud skip (a failure when `CI` is set).
pub fn need(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    let found = std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file());
    if found.is_none() {
        let msg = format!("{name} is not installed: run `cargo xtask setup`");
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        eprintln!("SKIPPED: {msg}");
    }
    found
}
