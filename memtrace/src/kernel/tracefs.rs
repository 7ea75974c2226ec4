//! tracefs: where it is, mounting it when absent, and the events' `format` files (record
//! layouts of classic tracepoints, and the kernel's own GFP flag table).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use thiserror::Error;

pub const TRACEFS: &str = "/sys/kernel/tracing";
const DEBUGFS_TRACING: &str = "/sys/kernel/debug/tracing";

#[derive(Debug, Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted and mounting it at {TRACEFS} failed ({0}); mount it with `mount -t tracefs nodev {TRACEFS}`"
    )]
    Mount(std::io::Error),
    #[error("tracefs at {0} is not readable: run as root or with CAP_DAC_READ_SEARCH")]
    Unreadable(String),
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("malformed format file {path}: {what}")]
    Malformed { path: String, what: String },
}

/// Where tracefs is mounted, if it is.
pub fn mounted() -> Option<PathBuf> {
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if Path::new(dir).join("events").is_dir() {
            return Some(PathBuf::from(dir));
        }
    }
    None
}

/// Mounts tracefs at its standard place unless it is already mounted; returns the mount point
/// and whether memtrace mounted it.
pub fn ensure_mounted() -> Result<(PathBuf, bool), TracefsError> {
    if let Some(p) = mounted() {
        return Ok((p, false));
    }
    // Mounted but closed to us (tracefs is root-only) is not the same as absent.
    for dir in [TRACEFS, DEBUGFS_TRACING] {
        if let Err(e) = std::fs::metadata(Path::new(dir).join("events")) {
            if e.kind() == std::io::ErrorKind::PermissionDenied {
                return Err(TracefsError::Unreadable(dir.to_string()));
            }
        }
    }
    let target = std::ffi::CString::new(TRACEFS).expect("no NUL");
    let fstype = std::ffi::CString::new("tracefs").expect("no NUL");
    let source = std::ffi::CString::new("nodev").expect("no NUL");
    // SAFETY: valid NUL-terminated strings; no data argument.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(TracefsError::Mount(std::io::Error::last_os_error()));
    }
    Ok((PathBuf::from(TRACEFS), true))
}

/// One field of a trace record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub name: String,
    pub decl: String,
    pub offset: u16,
    pub size: u16,
    pub signed: bool,
}

/// A parsed `events/<category>/<event>/format` file.
#[derive(Debug, Clone, Default)]
pub struct Format {
    pub id: u32,
    pub fields: HashMap<String, Field>,
    pub print_fmt: String,
}

impl Format {
    pub fn read(tracefs: &Path, category: &str, event: &str) -> Result<Self, TracefsError> {
        let path = tracefs
            .join("events")
            .join(category)
            .join(event)
            .join("format");
        let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Io {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text).map_err(|what| TracefsError::Malformed {
            path: path.display().to_string(),
            what,
        })
    }

    pub fn parse(text: &str) -> Result<Self, String> {
        let mut fmt = Format::default();
        for line in text.lines() {
            let line = line.trim();
            if let Some(id) = line.strip_prefix("ID:") {
                fmt.id = id
                    .trim()
                    .parse()
                    .map_err(|_| format!("bad ID line {line:?}"))?;
            } else if let Some(rest) = line.strip_prefix("field:") {
                let field = parse_field(rest).ok_or_else(|| format!("bad field line {line:?}"))?;
                fmt.fields.insert(field.name.clone(), field);
            } else if let Some(p) = line.strip_prefix("print fmt:") {
                fmt.print_fmt = p.trim().to_string();
            }
        }
        if fmt.fields.is_empty() {
            return Err("no fields".into());
        }
        Ok(fmt)
    }

    pub fn field(&self, name: &str) -> Option<&Field> {
        self.fields.get(name)
    }
}

/// Parses `unsigned long call_site;\toffset:8;\tsize:8;\tsigned:0;`.
fn parse_field(rest: &str) -> Option<Field> {
    let mut parts = rest.split(';').map(str::trim);
    let decl = parts.next()?.to_string();
    let mut offset = None;
    let mut size = None;
    let mut signed = false;
    for p in parts {
        if let Some(v) = p.strip_prefix("offset:") {
            offset = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("size:") {
            size = v.parse().ok();
        } else if let Some(v) = p.strip_prefix("signed:") {
            signed = v == "1";
        }
    }
    // The name is the last identifier once `[...]` groups are removed:
    // `char comm[16]` and `__data_loc char[] name` alike.
    let mut base = String::new();
    let mut depth = 0;
    for c in decl.chars() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            _ if depth == 0 => base.push(c),
            _ => {}
        }
    }
    let name = base
        .trim_end()
        .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .next()?
        .to_string();
    if name.is_empty() {
        return None;
    }
    Some(Field {
        name,
        decl,
        offset: offset?,
        size: size?,
        signed,
    })
}

/// Whether the classic tracepoint `category:event` exists (needs tracefs mounted).
pub fn event_exists(tracefs: &Path, category: &str, event: &str) -> bool {
    tracefs.join("events").join(category).join(event).is_dir()
}

#[cfg(test)]
pub(crate) mod tests_support {
    /// The kmem:kmalloc format file of Linux 6.18, as captured.
    pub const KMALLOC_FORMAT: &str = include_str!("../../testdata/linux-6.18/kmem_kmalloc.format");
}

#[cfg(test)]
mod tests {
    use super::*;

    use super::tests_support::KMALLOC_FORMAT;

    #[test]
    fn parses_kmalloc_format() {
        let f = Format::parse(KMALLOC_FORMAT).unwrap();
        assert!(f.id > 0);
        let ptr = f.field("ptr").unwrap();
        assert_eq!((ptr.offset, ptr.size), (16, 8));
        assert!(f.field("node").unwrap().signed);
        assert_eq!(f.field("gfp_flags").unwrap().offset, 40);
        assert!(f.print_fmt.starts_with("\"call_site"));
        assert!(f.print_fmt.contains("GFP_KERNEL"));
    }

    #[test]
    fn parses_data_loc_and_arrays() {
        let f = parse_field("__data_loc char[] name;\toffset:24;\tsize:4;\tsigned:0;").unwrap();
        assert_eq!(f.name, "name");
        assert_eq!(f.offset, 24);
        let f = parse_field("char comm[16];\toffset:8;\tsize:16;\tsigned:0;").unwrap();
        assert_eq!(f.name, "comm");
        assert_eq!(f.size, 16);
    }

    #[test]
    fn rejects_malformed() {
        assert!(Format::parse("name: x\nID: 1\n").is_err());
        assert!(Format::parse("ID: zz\n\tfield:int a;\toffset:0;\tsize:4;\tsigned:1;\n").is_err());
        assert!(Format::parse("\tfield:int a;\toffset:0;\n").is_err());
    }
}
