//! What every room shares about its state and its messages: a mutex locked even if a panic
//! poisoned it (the state stays usable: each holder leaves it consistent between
//! statements), and errors as one line (logs, `memtrace_collector_up` reasons, exit
//! messages).

use std::sync::{Mutex, MutexGuard};

/// `m` locked, even if a panic poisoned it.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `m` locked if no one holds it now (even if a panic poisoned it): for async code that
/// must not wait on a lock a blocking job holds.
pub fn try_lock<T>(m: &Mutex<T>) -> Option<MutexGuard<'_, T>> {
    match m.try_lock() {
        Ok(g) => Some(g),
        Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
        Err(std::sync::TryLockError::WouldBlock) => None,
    }
}

/// A short, one-line description of an error chain: the first line of each cause, without
/// repeats (aya's load errors embed the whole verifier log; its first line is what a person
/// needs).
pub fn one_line(err: &(dyn std::error::Error + 'static)) -> String {
    let mut parts = Vec::new();
    let mut cur = Some(err);
    while let Some(e) = cur {
        let s = e.to_string();
        let first = s.lines().next().unwrap_or("").trim();
        let first = first.split(". Verifier output").next().unwrap_or(first);
        if !first.is_empty() && !parts.iter().any(|p: &String| p.contains(first)) {
            parts.push(first.to_string());
        }
        cur = e.source();
    }
    parts.join(": ")
}

/// `s` on one line: its lines trimmed and joined by spaces (for messages whose text another
/// library wrote, e.g. a YAML parser's).
pub fn collapse(s: &str) -> String {
    s.split(['\n', '\r'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_become_one_line() {
        assert_eq!(collapse("a\n  b\r\n\nc "), "a b c");
        assert_eq!(collapse("plain"), "plain");
        let e = anyhow::anyhow!("inner\nverifier log").context("outer");
        assert_eq!(one_line(e.as_ref()), "outer: inner");
    }

    #[test]
    fn a_poisoned_mutex_still_locks() {
        let m = std::sync::Arc::new(Mutex::new(1));
        let m2 = m.clone();
        let _ = std::thread::spawn(move || {
            let _g = m2.lock().unwrap();
            panic!("poison");
        })
        .join();
        assert!(m.is_poisoned());
        *lock(&m) += 1;
        assert_eq!(*lock(&m), 2);
        let held = lock(&m);
        assert!(try_lock(&m).is_none());
        drop(held);
        assert_eq!(try_lock(&m).map(|g| *g), Some(2));
    }
}
