//! The daemon's configuration file: TOML whose keys are the flags' names, e.g.
//!
//! ```toml
//! attach = "auto"
//! [web]
//! listen-address = "0.0.0.0:9701"
//! [caches]
//! max = 50
//! ```
//!
//! Precedence: a flag beats its environment variable, which beats the file, which beats the
//! default. The file is applied by setting the flags' environment variables that are not
//! already set, so clap validates file values exactly like flag values.

use std::path::Path;

use thiserror::Error;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: String, message: String },
    #[error("config file {path}: unknown key `{key}` (known keys: {known})")]
    UnknownKey {
        path: String,
        key: String,
        known: String,
    },
    #[error("config file {path}: key `{key}` must be a string, number or boolean")]
    BadValue { path: String, key: String },
}

/// A flag the file may set: its long name (the file key) and its environment variable.
#[derive(Debug, Clone)]
pub struct Known {
    pub key: String,
    pub env: String,
}

/// Parses `text` into (environment variable, value) pairs for the known keys.
pub fn parse(
    path: &str,
    text: &str,
    known: &[Known],
) -> Result<Vec<(String, String)>, ConfigError> {
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| ConfigError::Syntax {
            path: path.into(),
            message: e.message().to_string(),
        })?;
    let mut flat = Vec::new();
    flatten("", &toml::Value::Table(table), &mut flat, path)?;
    flat.into_iter()
        .map(|(key, value)| {
            let k = known
                .iter()
                .find(|k| k.key == key)
                .ok_or_else(|| ConfigError::UnknownKey {
                    path: path.into(),
                    key: key.clone(),
                    known: known
                        .iter()
                        .map(|k| k.key.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            Ok((k.env.clone(), value))
        })
        .collect()
}

fn flatten(
    prefix: &str,
    v: &toml::Value,
    out: &mut Vec<(String, String)>,
    path: &str,
) -> Result<(), ConfigError> {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out, path)?;
            }
        }
        toml::Value::String(s) => out.push((prefix.into(), s.clone())),
        toml::Value::Integer(i) => out.push((prefix.into(), i.to_string())),
        toml::Value::Boolean(b) => out.push((prefix.into(), b.to_string())),
        toml::Value::Float(f) => out.push((prefix.into(), f.to_string())),
        _ => {
            return Err(ConfigError::BadValue {
                path: path.into(),
                key: prefix.into(),
            });
        }
    }
    Ok(())
}

/// Reads the file and sets the environment variables of its keys that are not set yet.
/// Call before any thread starts.
pub fn apply(path: &Path, known: &[Known]) -> Result<(), ConfigError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: p.clone(),
        source,
    })?;
    for (env, value) in parse(&p, &text, known)? {
        if std::env::var_os(&env).is_none() {
            // SAFETY: called from main before any other thread exists.
            unsafe { std::env::set_var(env, value) };
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn known() -> Vec<Known> {
        [
            ("web.listen-address", "MEMTRACE_WEB_LISTEN_ADDRESS"),
            ("caches.max", "MEMTRACE_CACHES_MAX"),
            ("attach", "MEMTRACE_ATTACH"),
        ]
        .iter()
        .map(|(k, e)| Known {
            key: k.to_string(),
            env: e.to_string(),
        })
        .collect()
    }

    #[test]
    fn maps_nested_and_dotted_keys_to_env() {
        let text =
            "attach = \"btf\"\n\"caches.max\" = 7\n[web]\nlisten-address = \"127.0.0.1:1\"\n";
        let mut got = parse("f", text, &known()).unwrap();
        got.sort();
        assert_eq!(
            got,
            vec![
                ("MEMTRACE_ATTACH".into(), "btf".into()),
                ("MEMTRACE_CACHES_MAX".into(), "7".into()),
                ("MEMTRACE_WEB_LISTEN_ADDRESS".into(), "127.0.0.1:1".into()),
            ]
        );
        let got = parse("f", "[caches]\nmax = 9\n", &known()).unwrap();
        assert_eq!(got, vec![("MEMTRACE_CACHES_MAX".into(), "9".into())]);
    }

    #[test]
    fn errors_are_one_line_and_name_the_problem() {
        let e = parse("f.toml", "[web]\nlisten_adress = \"x\"\n", &known()).unwrap_err();
        assert!(
            e.to_string().contains("unknown key `web.listen_adress`"),
            "{e}"
        );
        let e = parse("f.toml", "attach = [1, 2]\n", &known()).unwrap_err();
        assert!(e.to_string().contains("`attach` must be"), "{e}");
        let e = parse("f.toml", "attach = \n", &known()).unwrap_err();
        assert!(
            e.to_string()
                .starts_with("config file f.toml is not valid TOML"),
            "{e}"
        );
        assert_eq!(e.to_string().lines().count(), 1);
    }

    /// Fuzzing, bounded: any text, and documents built of the file's own shapes (known and
    /// unknown keys, tables, dotted and quoted keys, every TOML value type, broken lines),
    /// parse without panicking; what is accepted maps only to known variables, and every
    /// refusal is one line naming the file.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn key() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("attach".to_string()),
                Just("caches.max".to_string()),
                Just("\"caches.max\"".to_string()),
                Just("web.listen-address".to_string()),
                "[a-z][a-z.\\-_]{0,12}",
                "\"[^\"\\n]{0,8}\"",
            ]
        }

        fn value() -> impl Strategy<Value = String> {
            prop_oneof![
                "\"[^\"\\\\\n]{0,16}\"".prop_map(|s| s),
                any::<i64>().prop_map(|i| i.to_string()),
                any::<bool>().prop_map(|b| b.to_string()),
                any::<f64>().prop_map(|f| format!("{f:?}")),
                Just("[1, \"a\"]".to_string()),
                Just("{ a = 1 }".to_string()),
                Just("1979-05-27T07:32:00Z".to_string()),
                "[^\\n]{0,12}",
            ]
        }

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                (key(), value()).prop_map(|(k, v)| format!("{k} = {v}")),
                key().prop_map(|k| format!("[{k}]")),
                key().prop_map(|k| format!("[[{k}]]")),
                "[^\\n]{0,20}",
                Just(String::new()),
            ]
        }

        fn check(text: &str) {
            match parse("fuzz.toml", text, &known()) {
                Ok(pairs) => {
                    for (env, _) in pairs {
                        assert!(known().iter().any(|k| k.env == env), "{env}");
                    }
                }
                Err(e) => {
                    let m = e.to_string();
                    assert_eq!(m.lines().count(), 1, "{m:?}");
                    assert!(m.contains("fuzz.toml"), "{m}");
                }
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 3000, failure_persistence: None, ..ProptestConfig::default() })]

            #[test]
            fn any_text(text in "(?s).{0,200}") {
                check(&text);
            }

            #[test]
            fn documents_of_the_files_shapes(lines in prop::collection::vec(line(), 0..12)) {
                check(&lines.join("\n"));
            }
        }
    }
}
