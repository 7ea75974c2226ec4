//! Basic auth against the web config file's `basic_auth_users` (bcrypt hashes), as the
//! exporter-toolkit does it: a request without the right user and password gets a 401 with
//! `WWW-Authenticate: Basic`.
//!
//! bcrypt is slow on purpose (tens of milliseconds at cost 10), so it never runs on the async
//! workers: it runs on tokio's blocking threads, at most [`PARALLEL`] at once, with at most
//! [`WAITING`] more requests waiting for one; beyond that a request is answered 503 at once
//! instead of queueing, so that a flood of wrong passwords costs a bounded amount of CPU and
//! never holds connections for long. A successful (user, password) is remembered in a small
//! cache ([`CACHE`] entries, oldest out first), as the toolkit's is, so that Prometheus'
//! scrapes pay bcrypt once, not per scrape; the cache belongs to one loaded configuration,
//! so a reload empties it. The cache holds a keyed digest (HMAC-SHA-256 under a key drawn at
//! start), never the password. An unknown user costs a bcrypt check too, against a real
//! user's hash, so that timing tells nothing about which users exist; user names are
//! compared in constant time. Nothing here logs a password or a hash.

use std::{collections::VecDeque, sync::Mutex};

use axum::http::HeaderValue;
use base64::Engine as _;
use subtle::ConstantTimeEq as _;

use super::config::User;
use crate::sync::lock;

/// bcrypt checks running at once (on blocking threads).
pub const PARALLEL: usize = 2;
/// Requests waiting for a bcrypt check beyond those running; more get a 503.
pub const WAITING: usize = 14;
/// Successful (user, password) pairs remembered per loaded configuration.
pub const CACHE: usize = 64;

/// The users of one loaded configuration and the successes seen with them.
pub struct Users {
    users: Vec<User>,
    cache: Mutex<VecDeque<[u8; 32]>>,
}

/// The bound on bcrypt work, shared by every configuration the server loads.
pub struct Gate {
    admitted: tokio::sync::Semaphore,
    running: std::sync::Arc<tokio::sync::Semaphore>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate {
            admitted: tokio::sync::Semaphore::new(PARALLEL + WAITING),
            running: std::sync::Arc::new(tokio::sync::Semaphore::new(PARALLEL)),
        }
    }
}

/// What to answer a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Serve it.
    Allowed,
    /// 401: no credentials, or not these.
    Denied,
    /// 503: too many bcrypt checks under way; try again.
    Busy,
}

/// The process' key for the cache digests (none if the system gave no randomness: then
/// nothing is cached).
fn digest_key() -> Option<&'static ring::hmac::Key> {
    static KEY: std::sync::OnceLock<Option<ring::hmac::Key>> = std::sync::OnceLock::new();
    KEY.get_or_init(|| {
        ring::hmac::Key::generate(ring::hmac::HMAC_SHA256, &ring::rand::SystemRandom::new()).ok()
    })
    .as_ref()
}

fn digest(user: &str, password: &[u8]) -> Option<[u8; 32]> {
    let key = digest_key()?;
    let mut ctx = ring::hmac::Context::with_key(key);
    ctx.update(&(user.len() as u64).to_le_bytes());
    ctx.update(user.as_bytes());
    ctx.update(password);
    ctx.sign().as_ref().try_into().ok()
}

/// The user name and password of an `Authorization: Basic …` header.
fn credentials(header: &HeaderValue) -> Option<(String, Vec<u8>)> {
    let value = header.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(token.trim())
        .ok()?;
    let colon = decoded.iter().position(|&b| b == b':')?;
    let user = String::from_utf8(decoded[..colon].to_vec()).ok()?;
    Some((user, decoded[colon + 1..].to_vec()))
}

impl Users {
    pub fn new(users: Vec<User>) -> Users {
        Users {
            users,
            cache: Mutex::new(VecDeque::with_capacity(CACHE)),
        }
    }

    /// Whether requests need credentials.
    pub fn required(&self) -> bool {
        !self.users.is_empty()
    }

    fn cached(&self, d: &[u8; 32]) -> bool {
        let cache = lock(&self.cache);
        cache.iter().any(|c| bool::from(c.ct_eq(d)))
    }

    fn remember(&self, d: [u8; 32]) {
        let mut cache = lock(&self.cache);
        if cache.iter().any(|c| bool::from(c.ct_eq(&d))) {
            return;
        }
        if cache.len() == CACHE {
            cache.pop_front();
        }
        cache.push_back(d);
    }

    /// Checks the request's `Authorization` header.
    pub async fn check(&self, gate: &Gate, header: Option<&HeaderValue>) -> Verdict {
        if !self.required() {
            return Verdict::Allowed;
        }
        let Some((user, password)) = header.and_then(credentials) else {
            return Verdict::Denied;
        };
        // Every name is compared, each in constant time: which user matched (or that none
        // did) shows in no timing.
        let mut found: Option<&User> = None;
        for u in &self.users {
            let same = bool::from(u.name.as_bytes().ct_eq(user.as_bytes()));
            if same && found.is_none() {
                found = Some(u);
            }
        }
        let known = found.is_some();
        let digest = digest(&user, &password);
        if known && digest.as_ref().is_some_and(|d| self.cached(d)) {
            return Verdict::Allowed;
        }
        // An unknown user is checked against a real user's hash (the same cost), and fails.
        let hash = found.unwrap_or(&self.users[0]).hash.clone();
        let Ok(_admitted) = gate.admitted.try_acquire() else {
            return Verdict::Busy;
        };
        let Ok(running) = gate.running.clone().acquire_owned().await else {
            return Verdict::Busy;
        };
        let ok = tokio::task::spawn_blocking(move || {
            let _running = running;
            bcrypt::verify(&password, &hash).unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        if ok && known {
            if let Some(d) = digest {
                self.remember(d);
            }
            Verdict::Allowed
        } else {
            Verdict::Denied
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> HeaderValue {
        let token = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
        HeaderValue::from_str(&format!("Basic {token}")).unwrap()
    }

    fn users() -> Users {
        Users::new(vec![
            User {
                name: "alice".into(),
                hash: bcrypt::hash("wonderland", 4).unwrap(),
            },
            User {
                name: "bob".into(),
                hash: bcrypt::hash("builder:colon", 4).unwrap(),
            },
        ])
    }

    #[test]
    fn credentials_are_parsed_as_rfc_7617_says() {
        assert_eq!(
            credentials(&basic("alice", "a:b")),
            Some(("alice".into(), b"a:b".to_vec()))
        );
        assert_eq!(
            credentials(&HeaderValue::from_static("basic YWxpY2U6eA==")),
            Some(("alice".into(), b"x".to_vec()))
        );
        for bad in [
            "Bearer YWxpY2U6eA==",
            "Basic",
            "Basic !!!",
            "Basic YWxpY2U=",
        ] {
            assert_eq!(credentials(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn right_wrong_and_unknown_users() {
        let u = users();
        let gate = Gate::default();
        assert_eq!(u.check(&gate, None).await, Verdict::Denied);
        let ok = basic("alice", "wonderland");
        assert_eq!(u.check(&gate, Some(&ok)).await, Verdict::Allowed);
        assert_eq!(u.cache.lock().unwrap().len(), 1, "the success is cached");
        assert_eq!(u.check(&gate, Some(&ok)).await, Verdict::Allowed);
        assert_eq!(u.cache.lock().unwrap().len(), 1);
        let colon = basic("bob", "builder:colon");
        assert_eq!(u.check(&gate, Some(&colon)).await, Verdict::Allowed);
        for bad in [
            basic("alice", "wonderlanD"),
            basic("alice", ""),
            basic("Alice", "wonderland"),
            basic("bob", "wonderland"),
            basic("carol", "wonderland"),
        ] {
            assert_eq!(u.check(&gate, Some(&bad)).await, Verdict::Denied, "{bad:?}");
        }
        assert_eq!(u.cache.lock().unwrap().len(), 2, "failures are not cached");
        let none = Users::new(Vec::new());
        assert_eq!(none.check(&gate, None).await, Verdict::Allowed);
    }

    #[test]
    fn the_cache_is_bounded() {
        let u = users();
        for i in 0..(CACHE as u32 * 3) {
            u.remember(digest("alice", &i.to_le_bytes()).unwrap());
        }
        assert_eq!(u.cache.lock().unwrap().len(), CACHE);
        assert!(u.cached(&digest("alice", &(CACHE as u32 * 3 - 1).to_le_bytes()).unwrap()));
        assert!(!u.cached(&digest("alice", &0u32.to_le_bytes()).unwrap()));
    }

    #[tokio::test]
    async fn a_full_gate_answers_busy_at_once() {
        let u = users();
        let gate = Gate::default();
        let _held: Vec<_> = (0..PARALLEL + WAITING)
            .map(|_| gate.admitted.try_acquire().unwrap())
            .collect();
        let t = std::time::Instant::now();
        assert_eq!(
            u.check(&gate, Some(&basic("alice", "wonderland"))).await,
            Verdict::Busy
        );
        assert!(t.elapsed() < std::time::Duration::from_millis(50));
    }
}
