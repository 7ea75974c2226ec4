//! The web config file (`--web.config.file`): the YAML of the Prometheus exporter-toolkit's
//! `web-config.yml`, so that one file secures memtrace as it secures node_exporter:
//!
//! ```yaml
//! tls_server_config:
//!   cert_file: server.crt        # PEM; relative paths are relative to this file's folder
//!   key_file: server.key
//!   client_auth_type: RequireAndVerifyClientCert
//!   client_ca_file: ca.crt
//!   min_version: TLS12
//! http_server_config:
//!   headers:
//!     X-Content-Type-Options: nosniff
//! basic_auth_users:
//!   prometheus: $2y$10$...       # bcrypt
//! ```
//!
//! Parsing is strict as the toolkit's is (an unknown key is an error) and checks here what
//! the toolkit checks when it starts: both a certificate and a key or neither, a client CA
//! only with a client auth type that asks for certificates (and required by the two that
//! verify them), known TLS versions, cipher suites and curves, only the five response
//! headers the toolkit allows, bcrypt hashes that parse. A `tls_server_config` that sets
//! none of its certificate, key, client CA or client auth keys leaves TLS off, as in the
//! toolkit. What memtrace cannot do is refused by name rather than ignored: TLS 1.0 and 1.1
//! (rustls has neither), the P-521 curve (not in the ring provider), `client_allowed_sans`
//! and `rate_limit`.
//!
//! [`parse`] reads no file: the certificates and keys it names are read by
//! [`tls`](super::tls) when the configuration is loaded, so that the parser can be fuzzed.
//! Every error is one line naming the file, the key and what to do.

use std::{
    collections::BTreeMap,
    fmt,
    path::{Path, PathBuf},
};

use axum::http::{HeaderName, HeaderValue};
use rustls::{SupportedCipherSuite, crypto::SupportedKxGroup};
use serde::Deserialize;

/// A web config file that cannot be used: one line, naming the file and the problem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(String);

impl ConfigError {
    /// `problem` (one line; newlines are folded) about the file at `path`.
    pub fn new(path: &Path, problem: impl fmt::Display) -> ConfigError {
        let text = format!("web config file {}: {problem}", path.display());
        ConfigError(crate::sync::collapse(&text))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

/// What the file configures, checked.
#[derive(Debug, Clone, Default)]
pub struct WebConfig {
    /// TLS, when the file turns it on.
    pub tls: Option<TlsSettings>,
    /// Added to every response memtrace answers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Basic auth users; none: no authentication.
    pub users: Vec<User>,
    /// `http_server_config.http2`, accepted for the toolkit's sake: memtrace serves HTTP/1.1
    /// only, whatever it says.
    pub http2: bool,
}

/// A basic auth user and its bcrypt hash (kept out of `Debug`).
#[derive(Clone)]
pub struct User {
    pub name: String,
    pub hash: String,
}

impl fmt::Debug for User {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("hash", &"<bcrypt>")
            .finish()
    }
}

/// Where a PEM document comes from: a file (already joined with the config file's folder)
/// or the config file itself (`cert`, `key`, `client_ca`).
#[derive(Clone, PartialEq, Eq)]
pub enum Pem {
    File(PathBuf),
    Inline(String),
}

impl fmt::Debug for Pem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pem::File(p) => write!(f, "File({})", p.display()),
            Pem::Inline(_) => f.write_str("Inline(..)"),
        }
    }
}

/// The toolkit's `client_auth_type` values, Go's `tls.ClientAuthType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// No client certificate is asked for (the default).
    NoClientCert,
    /// A certificate is asked for, not required, and not verified.
    RequestClientCert,
    /// A certificate is required, and not verified.
    RequireAnyClientCert,
    /// A certificate is not required; one that is sent must chain to the client CA.
    VerifyClientCertIfGiven,
    /// A certificate is required and must chain to the client CA.
    RequireAndVerifyClientCert,
}

impl ClientAuth {
    const NAMES: &'static str = "NoClientCert, RequestClientCert, RequireAnyClientCert, \
                                 VerifyClientCertIfGiven, RequireAndVerifyClientCert";

    fn parse(s: &str) -> Option<ClientAuth> {
        Some(match s {
            "" | "NoClientCert" => ClientAuth::NoClientCert,
            "RequestClientCert" => ClientAuth::RequestClientCert,
            // The toolkit keeps the old name too.
            "RequireAnyClientCert" | "RequireClientCert" => ClientAuth::RequireAnyClientCert,
            "VerifyClientCertIfGiven" => ClientAuth::VerifyClientCertIfGiven,
            "RequireAndVerifyClientCert" => ClientAuth::RequireAndVerifyClientCert,
            _ => return None,
        })
    }

    /// Whether client certificates are checked against the client CA.
    pub fn verifies(self) -> bool {
        matches!(
            self,
            ClientAuth::VerifyClientCertIfGiven | ClientAuth::RequireAndVerifyClientCert
        )
    }
}

/// A TLS version rustls speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

/// `tls_server_config`, checked.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    pub cert: Pem,
    pub key: Pem,
    pub client_auth: ClientAuth,
    pub client_ca: Option<Pem>,
    pub min_version: TlsVersion,
    pub max_version: TlsVersion,
    /// The TLS 1.2 suites to offer, in order; empty: rustls' defaults. TLS 1.3 suites are
    /// always all offered (Go ignores them in this list too).
    pub cipher_suites: Vec<SupportedCipherSuite>,
    /// Key exchange groups, in order; empty: rustls' defaults.
    pub curves: Vec<&'static dyn SupportedKxGroup>,
    /// Choose the cipher suite in the server's order rather than the client's.
    pub prefer_server_cipher_suites: bool,
}

impl TlsSettings {
    /// The files this configuration reads (certificate, key, client CA).
    pub fn files(&self) -> Vec<PathBuf> {
        [Some(&self.cert), Some(&self.key), self.client_ca.as_ref()]
            .into_iter()
            .flatten()
            .filter_map(|p| match p {
                Pem::File(f) => Some(f.clone()),
                Pem::Inline(_) => None,
            })
            .collect()
    }
}

/// The headers `http_server_config.headers` may set, with the values allowed where the
/// toolkit restricts them (exactly its list: memtrace's pages are one set among exporters').
const HEADERS: &[(&str, &[&str])] = &[
    ("Strict-Transport-Security", &[]),
    ("X-Content-Type-Options", &["nosniff"]),
    ("X-Frame-Options", &["deny", "sameorigin"]),
    ("X-XSS-Protection", &[]),
    ("Content-Security-Policy", &[]),
];

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawFile {
    tls_server_config: Option<RawTls>,
    http_server_config: Option<RawHttp>,
    basic_auth_users: Option<Users>,
    rate_limit: Option<serde::de::IgnoredAny>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawTls {
    cert: Option<String>,
    key: Option<String>,
    client_ca: Option<String>,
    cert_file: Option<String>,
    key_file: Option<String>,
    client_auth_type: Option<String>,
    client_ca_file: Option<String>,
    client_allowed_sans: Option<Vec<String>>,
    min_version: Option<String>,
    max_version: Option<String>,
    cipher_suites: Option<Vec<String>>,
    prefer_server_cipher_suites: Option<bool>,
    curve_preferences: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    http2: Option<bool>,
    headers: Option<BTreeMap<String, String>>,
}

/// `basic_auth_users`, in file order, refusing a user named twice (the toolkit's strict
/// YAML does).
#[derive(Debug, Default)]
struct Users(Vec<(String, String)>);

impl<'de> Deserialize<'de> for Users {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Users;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of user names to bcrypt hashes")
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<Users, E> {
                Ok(Users::default())
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut m: A) -> Result<Users, A::Error> {
                let mut out: Vec<(String, String)> = Vec::new();
                while let Some((name, hash)) = m.next_entry::<String, String>()? {
                    if out.iter().any(|(n, _)| *n == name) {
                        return Err(serde::de::Error::custom(format!(
                            "user `{name}` is listed twice"
                        )));
                    }
                    out.push((name, hash));
                }
                Ok(Users(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// The text of the web config file at `path` (for messages, and to resolve relative paths
/// against its folder), checked. Reads no file.
pub fn parse(path: &Path, text: &str) -> Result<WebConfig, ConfigError> {
    let err = |problem: String| ConfigError::new(path, problem);
    // An empty file (or only comments) is an empty configuration, as in the toolkit.
    let raw: Option<RawFile> = serde_norway::from_str(text).map_err(|e| {
        err(format!(
            "not a valid web config file: {e}; fix it (its keys are the Prometheus \
             exporter-toolkit's web-config.yml)"
        ))
    })?;
    let raw = raw.unwrap_or_default();
    if raw.rate_limit.is_some() {
        return Err(err(
            "rate_limit is not supported by memtrace; remove it (--web.max-connections and the \
             --web.*-timeout flags bound the load instead)"
                .into(),
        ));
    }
    let http = raw.http_server_config.unwrap_or_default();
    let headers = headers(http.headers.unwrap_or_default()).map_err(err)?;
    let users = users(raw.basic_auth_users.unwrap_or_default()).map_err(err)?;
    let dir = path.parent().unwrap_or(Path::new("."));
    let tls = match raw.tls_server_config {
        Some(t) => tls(t, dir).map_err(err)?,
        None => None,
    };
    Ok(WebConfig {
        tls,
        headers,
        users,
        http2: http.http2.unwrap_or(true),
    })
}

fn headers(raw: BTreeMap<String, String>) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    let mut out = Vec::new();
    for (name, value) in raw {
        let Some((_, allowed)) = HEADERS.iter().find(|(n, _)| *n == name) else {
            let known: Vec<&str> = HEADERS.iter().map(|(n, _)| *n).collect();
            return Err(format!(
                "http_server_config.headers: header `{name}` cannot be configured (only {})",
                known.join(", ")
            ));
        };
        // Blank: unset, as in the toolkit.
        if value.is_empty() {
            continue;
        }
        if !allowed.is_empty() && !allowed.contains(&value.as_str()) {
            return Err(format!(
                "http_server_config.headers: {name} must be one of {}, not {value:?}",
                allowed.join(", ")
            ));
        }
        let v = HeaderValue::from_str(&value).map_err(|_| {
            format!("http_server_config.headers: the value of {name} is not a valid header value")
        })?;
        let n = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("http_server_config.headers: `{name}` is not a header name"))?;
        out.push((n, v));
    }
    Ok(out)
}

fn users(raw: Users) -> Result<Vec<User>, String> {
    raw.0
        .into_iter()
        .map(|(name, hash)| {
            let cost = hash
                .parse::<bcrypt::HashParts>()
                .map(|h| h.get_cost())
                .map_err(|_| {
                    format!(
                        "basic_auth_users: the password of `{name}` is not a bcrypt hash; make \
                         one with `htpasswd -nBC 10 \"\" | tr -d ':\\n'`"
                    )
                })?;
            if !(4..=31).contains(&cost) {
                return Err(format!(
                    "basic_auth_users: the bcrypt cost of `{name}`'s password is {cost}, outside \
                     4 to 31; hash it again (10 is usual)"
                ));
            }
            Ok(User { name, hash })
        })
        .collect()
}

/// `Some(s)` unless `s` is absent or empty: the toolkit takes an empty string as unset.
fn set(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

/// One PEM source from its inline and file keys (`cert` and `cert_file`, …).
fn pem(
    inline: Option<String>,
    file: Option<String>,
    key: &str,
    dir: &Path,
) -> Result<Option<Pem>, String> {
    match (set(inline), set(file)) {
        (Some(_), Some(_)) => Err(format!(
            "tls_server_config: both {key} and {key}_file are set; keep one"
        )),
        (Some(text), None) => Ok(Some(Pem::Inline(text))),
        (None, Some(f)) => Ok(Some(Pem::File(dir.join(f)))),
        (None, None) => Ok(None),
    }
}

fn version(s: Option<String>, key: &str, default: TlsVersion) -> Result<TlsVersion, String> {
    match set(s).as_deref() {
        None => Ok(default),
        Some("TLS12") => Ok(TlsVersion::Tls12),
        Some("TLS13") => Ok(TlsVersion::Tls13),
        Some(v @ ("TLS10" | "TLS11")) => Err(format!(
            "tls_server_config.{key}: {v} is not supported: memtrace's TLS library (rustls) \
             speaks TLS 1.2 and 1.3 only; use TLS12 or TLS13"
        )),
        Some(v) => Err(format!(
            "tls_server_config.{key}: unknown TLS version {v:?}; use TLS12 or TLS13"
        )),
    }
}

/// The TLS 1.2 cipher suites memtrace offers (rustls' ring provider), by their Go names,
/// which are the IANA names.
fn tls12_suites() -> impl Iterator<Item = SupportedCipherSuite> {
    rustls::crypto::ring::ALL_CIPHER_SUITES
        .iter()
        .copied()
        .filter(|s| s.tls13().is_none())
}

fn suite_name(s: SupportedCipherSuite) -> &'static str {
    s.suite().as_str().unwrap_or("unknown")
}

fn cipher_suites(names: Vec<String>) -> Result<Vec<SupportedCipherSuite>, String> {
    let mut out = Vec::new();
    for name in names {
        if let Some(s) = tls12_suites().find(|s| suite_name(*s) == name) {
            if !out
                .iter()
                .any(|o: &SupportedCipherSuite| o.suite() == s.suite())
            {
                out.push(s);
            }
            continue;
        }
        // TLS 1.3 suites are always on; Go ignores them in this list, and so does memtrace.
        let tls13 = rustls::crypto::ring::ALL_CIPHER_SUITES.iter().any(|s| {
            // rustls names them TLS13_…, Go (and IANA) TLS_….
            s.tls13().is_some()
                && suite_name(*s)
                    .strip_prefix("TLS13_")
                    .is_some_and(|n| name.strip_prefix("TLS_") == Some(n))
        });
        if tls13 {
            continue;
        }
        let offered: Vec<&str> = tls12_suites().map(suite_name).collect();
        return Err(format!(
            "tls_server_config.cipher_suites: {name:?} is unknown or not offered by memtrace's TLS \
             library; use some of {}",
            offered.join(", ")
        ));
    }
    Ok(out)
}

fn curves(names: Vec<String>) -> Result<Vec<&'static dyn SupportedKxGroup>, String> {
    use rustls::crypto::ring::kx_group;
    let mut out: Vec<&'static dyn SupportedKxGroup> = Vec::new();
    for name in names {
        let g: &'static dyn SupportedKxGroup = match name.as_str() {
            "X25519" => kx_group::X25519,
            "CurveP256" => kx_group::SECP256R1,
            "CurveP384" => kx_group::SECP384R1,
            "CurveP521" => {
                return Err(
                    "tls_server_config.curve_preferences: CurveP521 is not offered by memtrace's \
                     TLS library; use X25519, CurveP256 or CurveP384"
                        .into(),
                );
            }
            _ => {
                return Err(format!(
                    "tls_server_config.curve_preferences: unknown curve {name:?}; use X25519, \
                     CurveP256 or CurveP384"
                ));
            }
        };
        if !out.iter().any(|o| o.name() == g.name()) {
            out.push(g);
        }
    }
    Ok(out)
}

fn tls(raw: RawTls, dir: &Path) -> Result<Option<TlsSettings>, String> {
    let cert = pem(raw.cert, raw.cert_file, "cert", dir)?;
    let key = pem(raw.key, raw.key_file, "key", dir)?;
    let client_ca = pem(raw.client_ca, raw.client_ca_file, "client_ca", dir)?;
    let auth_set = set(raw.client_auth_type);
    // The toolkit's rule: TLS is on when any of these is set, and then needs both a
    // certificate and a key.
    if cert.is_none() && key.is_none() && client_ca.is_none() && auth_set.is_none() {
        if raw.client_allowed_sans.is_some()
            || raw.cipher_suites.is_some()
            || raw.curve_preferences.is_some()
            || set(raw.min_version).is_some()
            || set(raw.max_version).is_some()
        {
            return Err(
                "tls_server_config sets TLS options but no cert_file and key_file; add them to \
                 turn TLS on, or remove tls_server_config"
                    .into(),
            );
        }
        return Ok(None);
    }
    let cert = cert
        .ok_or("tls_server_config: missing one of cert or cert_file (a PEM certificate); add it")?;
    let key = key
        .ok_or("tls_server_config: missing one of key or key_file (its PEM private key); add it")?;
    let client_auth = ClientAuth::parse(auth_set.as_deref().unwrap_or("")).ok_or_else(|| {
        format!(
            "tls_server_config.client_auth_type: unknown value {:?}; use one of {}",
            auth_set.as_deref().unwrap_or(""),
            ClientAuth::NAMES
        )
    })?;
    if client_ca.is_some() && client_auth == ClientAuth::NoClientCert {
        return Err(
            "tls_server_config: client_ca_file is set but client_auth_type is NoClientCert; set \
             client_auth_type (RequireAndVerifyClientCert checks client certificates) or remove \
             client_ca_file"
                .into(),
        );
    }
    if client_ca.is_none() && client_auth.verifies() {
        return Err(format!(
            "tls_server_config: client_auth_type {client_auth:?} verifies client certificates and \
             needs client_ca_file (the CA that signs them); add it"
        ));
    }
    if raw.client_allowed_sans.is_some() {
        return Err(
            "tls_server_config.client_allowed_sans is not supported by memtrace; remove it (sign \
             client certificates with a CA of their own and name it in client_ca_file)"
                .into(),
        );
    }
    let min_version = version(raw.min_version, "min_version", TlsVersion::Tls12)?;
    let max_version = version(raw.max_version, "max_version", TlsVersion::Tls13)?;
    if min_version > max_version {
        return Err(
            "tls_server_config: min_version is above max_version; lower min_version or raise \
             max_version"
                .into(),
        );
    }
    let cipher_suites = cipher_suites(raw.cipher_suites.unwrap_or_default())?;
    let curves = curves(raw.curve_preferences.unwrap_or_default())?;
    Ok(Some(TlsSettings {
        cert,
        key,
        client_auth,
        client_ca,
        min_version,
        max_version,
        cipher_suites,
        curves,
        prefer_server_cipher_suites: raw.prefer_server_cipher_suites.unwrap_or(true),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A bcrypt hash (cost 4: quick) of "secret".
    fn hash() -> String {
        bcrypt::hash("secret", 4).unwrap()
    }

    fn ok(text: &str) -> WebConfig {
        parse(Path::new("/etc/memtrace/web.yml"), text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn bad(text: &str) -> String {
        let e = parse(Path::new("/etc/memtrace/web.yml"), text)
            .expect_err("the file should be refused")
            .to_string();
        assert_eq!(e.lines().count(), 1, "{e}");
        assert!(
            e.starts_with("web config file /etc/memtrace/web.yml: "),
            "{e}"
        );
        e
    }

    fn tls_of(text: &str) -> TlsSettings {
        ok(text).tls.expect("TLS on")
    }

    const CERTS: &str =
        "tls_server_config:\n  cert_file: server.crt\n  key_file: /abs/server.key\n";

    #[test]
    fn empty_files_and_empty_sections_turn_nothing_on() {
        for text in [
            "",
            "# nothing\n",
            "---\n",
            "tls_server_config:\n",
            "tls_server_config: {}\n",
            "tls_server_config:\n  cert_file: \"\"\n  key_file: \"\"\n",
            "http_server_config:\n",
            "basic_auth_users:\n",
            "basic_auth_users: {}\n",
        ] {
            let c = ok(text);
            assert!(
                c.tls.is_none() && c.users.is_empty() && c.headers.is_empty(),
                "{text:?}"
            );
            assert!(c.http2, "http2 defaults to true as in the toolkit");
        }
    }

    #[test]
    fn cert_and_key_files_are_relative_to_the_config_file() {
        let t = tls_of(CERTS);
        assert_eq!(t.cert, Pem::File("/etc/memtrace/server.crt".into()));
        assert_eq!(t.key, Pem::File("/abs/server.key".into()));
        assert_eq!(t.client_auth, ClientAuth::NoClientCert);
        assert_eq!(
            (t.min_version, t.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls13)
        );
        assert!(t.prefer_server_cipher_suites);
        assert!(t.cipher_suites.is_empty() && t.curves.is_empty());
        assert_eq!(
            t.files(),
            vec![
                PathBuf::from("/etc/memtrace/server.crt"),
                "/abs/server.key".into()
            ]
        );
        let inline = tls_of("tls_server_config:\n  cert: \"-----BEGIN\"\n  key: k\n");
        assert_eq!(inline.cert, Pem::Inline("-----BEGIN".into()));
        assert!(inline.files().is_empty());
    }

    #[test]
    fn certificate_and_key_come_together() {
        let e = bad("tls_server_config:\n  cert_file: a.crt\n");
        assert!(e.contains("missing one of key or key_file"), "{e}");
        let e = bad("tls_server_config:\n  key_file: a.key\n");
        assert!(e.contains("missing one of cert or cert_file"), "{e}");
        // client_auth_type alone turns TLS on, so it needs them too (the toolkit's rule).
        let e = bad("tls_server_config:\n  client_auth_type: RequestClientCert\n");
        assert!(e.contains("missing one of cert or cert_file"), "{e}");
        let e = bad("tls_server_config:\n  cert_file: a\n  cert: b\n  key_file: c\n");
        assert!(e.contains("both cert and cert_file"), "{e}");
        let e = bad("tls_server_config:\n  min_version: TLS13\n");
        assert!(e.contains("no cert_file and key_file"), "{e}");
    }

    #[test]
    fn every_client_auth_type() {
        let with = |auth: &str, ca: bool| {
            format!(
                "{CERTS}  client_auth_type: {auth}\n{}",
                if ca { "  client_ca_file: ca.crt\n" } else { "" }
            )
        };
        for (name, want) in [
            ("NoClientCert", ClientAuth::NoClientCert),
            ("RequestClientCert", ClientAuth::RequestClientCert),
            ("RequireAnyClientCert", ClientAuth::RequireAnyClientCert),
            ("RequireClientCert", ClientAuth::RequireAnyClientCert),
            (
                "VerifyClientCertIfGiven",
                ClientAuth::VerifyClientCertIfGiven,
            ),
            (
                "RequireAndVerifyClientCert",
                ClientAuth::RequireAndVerifyClientCert,
            ),
        ] {
            let ca = want != ClientAuth::NoClientCert;
            let t = tls_of(&with(name, ca));
            assert_eq!(t.client_auth, want, "{name}");
            assert_eq!(
                t.client_ca,
                ca.then(|| Pem::File("/etc/memtrace/ca.crt".into())),
                "{name}"
            );
        }
        // Request and RequireAny need no CA: they do not verify.
        tls_of(&with("RequestClientCert", false));
        tls_of(&with("RequireAnyClientCert", false));
        let e = bad(&with("RequireAndVerifyClientCert", false));
        assert!(e.contains("needs client_ca_file"), "{e}");
        let e = bad(&with("VerifyClientCertIfGiven", false));
        assert!(e.contains("needs client_ca_file"), "{e}");
        let e = bad(&with("NoClientCert", true));
        assert!(e.contains("client_auth_type is NoClientCert"), "{e}");
        let e = bad(&format!("{CERTS}  client_ca_file: ca.crt\n"));
        assert!(e.contains("client_auth_type is NoClientCert"), "{e}");
        let e = bad(&with("requireandverifyclientcert", true));
        assert!(
            e.contains("unknown value \"requireandverifyclientcert\""),
            "{e}"
        );
        assert!(e.contains("RequireAndVerifyClientCert"), "{e}");
    }

    #[test]
    fn tls_versions() {
        let t = tls_of(&format!("{CERTS}  min_version: TLS13\n"));
        assert_eq!(
            (t.min_version, t.max_version),
            (TlsVersion::Tls13, TlsVersion::Tls13)
        );
        let t = tls_of(&format!("{CERTS}  max_version: TLS12\n"));
        assert_eq!(
            (t.min_version, t.max_version),
            (TlsVersion::Tls12, TlsVersion::Tls12)
        );
        for old in ["TLS10", "TLS11"] {
            let e = bad(&format!("{CERTS}  min_version: {old}\n"));
            assert!(
                e.contains(&format!("{old} is not supported")) && e.contains("TLS12"),
                "{e}"
            );
        }
        let e = bad(&format!("{CERTS}  max_version: TLS14\n"));
        assert!(e.contains("unknown TLS version \"TLS14\""), "{e}");
        let e = bad(&format!(
            "{CERTS}  min_version: TLS13\n  max_version: TLS12\n"
        ));
        assert!(e.contains("min_version is above max_version"), "{e}");
    }

    #[test]
    fn cipher_suites_and_curves() {
        let t = tls_of(&format!(
            "{CERTS}  cipher_suites:\n    - TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256\n    - \
             TLS_AES_128_GCM_SHA256\n    - TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256\n  \
             prefer_server_cipher_suites: false\n  curve_preferences: [CurveP384, X25519]\n"
        ));
        let names: Vec<&str> = t.cipher_suites.iter().map(|s| suite_name(*s)).collect();
        assert_eq!(
            names,
            [
                "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256",
                "TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256"
            ]
        );
        assert!(!t.prefer_server_cipher_suites);
        let curves: Vec<_> = t.curves.iter().map(|g| g.name()).collect();
        assert_eq!(
            curves,
            [rustls::NamedGroup::secp384r1, rustls::NamedGroup::X25519]
        );
        let e = bad(&format!(
            "{CERTS}  cipher_suites: [TLS_RSA_WITH_RC4_128_SHA]\n"
        ));
        assert!(
            e.contains("\"TLS_RSA_WITH_RC4_128_SHA\" is unknown or not offered"),
            "{e}"
        );
        assert!(e.contains("TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384"), "{e}");
        let e = bad(&format!("{CERTS}  curve_preferences: [CurveP521]\n"));
        assert!(e.contains("CurveP521 is not offered"), "{e}");
        let e = bad(&format!("{CERTS}  curve_preferences: [P256]\n"));
        assert!(e.contains("unknown curve \"P256\""), "{e}");
    }

    #[test]
    fn headers_are_the_toolkits_five() {
        let c = ok("http_server_config:\n  http2: false\n  headers:\n    \
                    X-Frame-Options: deny\n    X-Content-Type-Options: nosniff\n    \
                    Strict-Transport-Security: max-age=31536000\n    X-XSS-Protection: \"1; mode=block\"\n    \
                    Content-Security-Policy: \"default-src 'self'\"\n");
        assert!(!c.http2);
        let got: Vec<(String, String)> = c
            .headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        assert_eq!(
            got,
            [
                ("content-security-policy", "default-src 'self'"),
                ("strict-transport-security", "max-age=31536000"),
                ("x-content-type-options", "nosniff"),
                ("x-frame-options", "deny"),
                ("x-xss-protection", "1; mode=block"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string()))
        );
        // Blank is unset.
        let c = ok("http_server_config:\n  headers:\n    X-Frame-Options: \"\"\n");
        assert!(c.headers.is_empty());
        let e = bad("http_server_config:\n  headers:\n    X-Powered-By: memtrace\n");
        assert!(
            e.contains("header `X-Powered-By` cannot be configured"),
            "{e}"
        );
        let e = bad("http_server_config:\n  headers:\n    x-frame-options: deny\n");
        assert!(e.contains("cannot be configured"), "{e}");
        let e = bad("http_server_config:\n  headers:\n    X-Frame-Options: allow\n");
        assert!(
            e.contains("X-Frame-Options must be one of deny, sameorigin"),
            "{e}"
        );
        let e = bad("http_server_config:\n  headers:\n    X-Content-Type-Options: sniff\n");
        assert!(e.contains("must be one of nosniff"), "{e}");
        let e = bad("http_server_config:\n  headers:\n    X-XSS-Protection: \"a\\nb\"\n");
        assert!(e.contains("not a valid header value"), "{e}");
    }

    #[test]
    fn users_need_bcrypt_hashes() {
        let h = hash();
        let hash = h.as_str();
        let c = ok(&format!(
            "basic_auth_users:\n  zed: {hash}\n  alice: '{hash}'\n"
        ));
        let names: Vec<&str> = c.users.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["zed", "alice"], "file order");
        assert!(
            !format!("{:?}", c.users).contains(hash),
            "hashes stay out of Debug"
        );
        let e = bad("basic_auth_users:\n  alice: hunter2\n");
        assert!(
            e.contains("password of `alice` is not a bcrypt hash") && e.contains("htpasswd"),
            "{e}"
        );
        assert!(!e.contains("hunter2"), "the value is never echoed: {e}");
        let e = bad(&format!(
            "basic_auth_users:\n  alice: {}\n",
            hash.replace("$04$", "$99$")
        ));
        assert!(e.contains("cost of `alice`'s password is 99"), "{e}");
        let e = bad(&format!(
            "basic_auth_users:\n  alice: {hash}\n  alice: {hash}\n"
        ));
        assert!(e.contains("alice"), "{e}");
        let e = bad("basic_auth_users: [alice]\n");
        assert!(e.contains("basic_auth_users"), "{e}");
    }

    #[test]
    fn unknown_and_unsupported_keys_are_errors() {
        let e = bad("tls_server_config:\n  cert_fil: a\n");
        assert!(
            e.contains("unknown field `cert_fil`") && e.contains("line 2"),
            "{e}"
        );
        let e = bad("tls_config:\n  cert_file: a\n");
        assert!(e.contains("unknown field `tls_config`"), "{e}");
        let e = bad("http_server_config:\n  http3: true\n");
        assert!(e.contains("unknown field `http3`"), "{e}");
        let e = bad("rate_limit:\n  interval: 1s\n  burst: 5\n");
        assert!(e.contains("rate_limit is not supported"), "{e}");
        let e = bad(&format!(
            "{CERTS}  client_auth_type: RequireAnyClientCert\n  client_allowed_sans: [a]\n"
        ));
        assert!(e.contains("client_allowed_sans is not supported"), "{e}");
        let e = bad("http_server_config:\n  http2: maybe\n");
        assert!(e.contains("http2"), "{e}");
        let e = bad("tls_server_config: [\n");
        assert!(e.contains("not a valid web config file"), "{e}");
        let e = bad("- a\n- b\n");
        assert!(e.contains("not a valid web config file"), "{e}");
        let e = bad("a: b\n  c: d\n");
        assert!(e.contains("not a valid web config file"), "{e}");
    }
}
