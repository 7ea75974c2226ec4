//! A private ftrace instance as the reference memtrace's numbers are compared with.

use std::{collections::HashMap, path::PathBuf};

use super::tracefs::has_event;

/// One event line of an ftrace buffer.
#[derive(Debug, Clone)]
pub struct TraceEvent {
    pub pid: u32,
    pub name: String,
    pub fields: HashMap<String, String>,
}

impl TraceEvent {
    pub fn u64(&self, key: &str) -> u64 {
        let v = self
            .fields
            .get(key)
            .unwrap_or_else(|| panic!("ftrace event {self:?} has no field {key}"));
        v.parse()
            .unwrap_or_else(|_| panic!("ftrace field {key}={v} is not a number"))
    }

    pub fn str(&self, key: &str) -> &str {
        self.fields.get(key).map(String::as_str).unwrap_or("")
    }

    /// Whether a `%p` field printed a NULL pointer.
    pub fn is_null(&self, key: &str) -> bool {
        let v = self.str(key);
        v == "(null)" || (!v.is_empty() && v.chars().all(|c| c == '0'))
    }
}

/// A private ftrace instance (its own buffer, leaving the global one alone) recording some
/// events of one thread: the reference memtrace's numbers are compared with.
pub struct Ftrace {
    dir: PathBuf,
    events: Vec<(String, String)>,
}

impl Ftrace {
    pub fn start(events: &[(impl AsRef<str>, impl AsRef<str>)], tid: u32) -> Ftrace {
        let (tracefs, _) = memtrace::kernel::tracefs::ensure_mounted().expect("tracefs");
        let dir = tracefs
            .join("instances")
            .join(format!("memtrace-test-{}-{tid}", std::process::id()));
        let _ = std::fs::remove_dir(&dir);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        let f = Ftrace {
            dir,
            events: events
                .iter()
                .map(|(c, e)| (c.as_ref().to_string(), e.as_ref().to_string()))
                .collect(),
        };
        f.write("buffer_size_kb", "8192");
        for (c, e) in &f.events {
            f.write(
                &format!("events/{c}/{e}/filter"),
                &format!("common_pid == {tid}"),
            );
            f.write(&format!("events/{c}/{e}/enable"), "1");
        }
        f.write("tracing_on", "1");
        f
    }

    fn write(&self, rel: &str, value: &str) {
        let p = self.dir.join(rel);
        std::fs::write(&p, value)
            .unwrap_or_else(|e| panic!("write {value:?} to {}: {e}", p.display()));
    }

    /// Stops recording and returns every event recorded, checking nothing was overwritten.
    pub fn stop(&self) -> Vec<TraceEvent> {
        self.write("tracing_on", "0");
        for (c, e) in &self.events {
            self.write(&format!("events/{c}/{e}/enable"), "0");
        }
        let per_cpu = self.dir.join("per_cpu");
        for cpu in std::fs::read_dir(&per_cpu).expect("per_cpu").flatten() {
            let stats = std::fs::read_to_string(cpu.path().join("stats")).unwrap_or_default();
            for line in stats.lines() {
                if let Some(n) = line.strip_prefix("overrun:") {
                    assert_eq!(
                        n.trim(),
                        "0",
                        "ftrace buffer overran: the reference lost events"
                    );
                }
            }
        }
        let text = std::fs::read_to_string(self.dir.join("trace")).expect("read trace");
        text.lines().filter_map(parse_trace_line).collect()
    }
}

impl Drop for Ftrace {
    fn drop(&mut self) {
        for (c, e) in &self.events {
            let _ = std::fs::write(self.dir.join(format!("events/{c}/{e}/enable")), "0");
        }
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Parses `comm-123 [001] ..... 12.34: kmalloc: a=1 b=x ...`.
fn parse_trace_line(line: &str) -> Option<TraceEvent> {
    if line.starts_with('#') {
        return None;
    }
    let bracket = line.find(" [")?;
    let task = line[..bracket].trim();
    let pid: u32 = task.rsplit('-').next()?.parse().ok()?;
    let rest = &line[bracket..];
    // after the timestamp: ": name: fields"
    let colon = rest.find(": ")?;
    let rest = &rest[colon + 2..];
    let (name, fields) = rest
        .split_once(": ")
        .unwrap_or((rest.trim_end_matches(':'), ""));
    let fields = fields
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Some(TraceEvent {
        pid,
        name: name.to_string(),
        fields,
    })
}

/// The ftrace events a test observes on this kernel: `events`, each hot allocation event
/// with its `_node` twin where the kernel has one (before 6.1), and without events the
/// kernel lacks.
pub fn kernel_events(events: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for (c, e) in events {
        if has_event(c, e) {
            out.push((c.to_string(), e.to_string()));
        }
        let node = format!("{e}_node");
        if matches!(*e, "kmalloc" | "kmem_cache_alloc") && has_event(c, &node) {
            out.push((c.to_string(), node));
        }
    }
    out
}

/// The `gfp` label the kernel's own rendering implies: ftrace prints composite names first,
/// so the first `|`-separated token is the composite, if it is one.
pub fn ftrace_gfp_label(printed: &str) -> String {
    match printed.split('|').next() {
        Some(t) if t.starts_with("GFP_") => t.to_string(),
        _ => "other".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_trace_lines() {
        let l = "           <...>-7194    [000] .....  1063.053932: kmalloc: call_site=vmemdup_user+0x2e/0xb0 ptr=000000008cf313d4 bytes_req=100 bytes_alloc=128 gfp_flags=GFP_USER node=-1 accounted=false";
        let e = parse_trace_line(l).unwrap();
        assert_eq!(e.pid, 7194);
        assert_eq!(e.name, "kmalloc");
        assert_eq!(e.u64("bytes_alloc"), 128);
        assert!(!e.is_null("ptr"));
    }
}
