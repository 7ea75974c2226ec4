//! Resolves where each tracepoint field lives, from the running kernel: classic tracepoint
//! record offsets from tracefs `format` files, BTF tracepoint argument positions from the
//! kernel's BTF. The result is the load-time global the programs read.

use std::{collections::BTreeMap, path::Path};

use memtrace_common::{EventLayouts, FieldLoc, KfreeLayout, KmallocLayout, Layouts};

use crate::{btf::Btf, tracefs::Format};

/// Layouts plus, per event and attach mode, what is missing (if anything).
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    pub layouts: Layouts,
    tp_missing: BTreeMap<&'static str, String>,
    btf_missing: BTreeMap<&'static str, String>,
}

impl Resolved {
    /// Why `event` cannot be used as a classic tracepoint, if it cannot.
    pub fn tp_missing(&self, event: &str) -> Option<&str> {
        self.tp_missing.get(event).map(String::as_str)
    }

    /// Why `event` cannot be used as a BTF tracepoint, if it cannot.
    pub fn btf_missing(&self, event: &str) -> Option<&str> {
        self.btf_missing.get(event).map(String::as_str)
    }
}

/// Where to find named fields of one event, and which of them the program needs.
trait Source {
    fn loc(&self, name: &str) -> Option<FieldLoc>;
}

/// A classic tracepoint's record.
struct Record<'a>(&'a Format);

impl Source for Record<'_> {
    fn loc(&self, name: &str) -> Option<FieldLoc> {
        self.0.field(name).map(|f| FieldLoc::new(f.offset, f.size))
    }
}

/// A BTF tracepoint's argument array: argument `i` is the `u64` at `8 * i`.
struct Args(Vec<crate::btf::Param>);

impl Source for Args {
    fn loc(&self, name: &str) -> Option<FieldLoc> {
        let i = self.0.iter().position(|p| p.name == name)?;
        let size = self.0[i].size.clamp(1, 8) as u16;
        Some(FieldLoc::new((8 * i) as u16, size))
    }
}

/// Fills `out` with the fields `names` from `src`; returns the names that are missing.
fn fill<const N: usize>(
    src: &dyn Source,
    names: [&str; N],
    out: [&mut FieldLoc; N],
) -> Vec<String> {
    let mut missing = Vec::new();
    for (name, slot) in names.into_iter().zip(out) {
        match src.loc(name) {
            Some(loc) => *slot = loc,
            None => missing.push(name.to_string()),
        }
    }
    missing
}

fn kmalloc(src: &dyn Source, l: &mut KmallocLayout) -> Vec<String> {
    fill(
        src,
        ["call_site", "ptr", "bytes_req", "bytes_alloc", "gfp_flags"],
        [
            &mut l.call_site,
            &mut l.ptr,
            &mut l.bytes_req,
            &mut l.bytes_alloc,
            &mut l.gfp_flags,
        ],
    )
}

fn kfree(src: &dyn Source, l: &mut KfreeLayout) -> Vec<String> {
    fill(src, ["call_site", "ptr"], [&mut l.call_site, &mut l.ptr])
}

type Filler = fn(&dyn Source, &mut EventLayouts) -> Vec<String>;

/// Every event the programs read: (category, event, filler).
const EVENTS: &[(&str, &str, Filler)] = &[
    ("kmem", "kmalloc", |s, l| kmalloc(s, &mut l.kmalloc)),
    ("kmem", "kfree", |s, l| kfree(s, &mut l.kfree)),
];

fn describe(missing: Vec<String>) -> Option<String> {
    if missing.is_empty() {
        None
    } else {
        Some(format!(
            "this kernel's event lacks field(s) {}",
            missing.join(", ")
        ))
    }
}

/// Resolves every event's layout from what this kernel offers.
pub fn resolve(btf: Option<&Btf>, tracefs: Option<&Path>) -> Resolved {
    let mut r = Resolved {
        layouts: Layouts::ZERO,
        ..Default::default()
    };
    for &(category, event, filler) in EVENTS {
        match tracefs.map(|dir| Format::read(dir, category, event)) {
            None => {
                r.tp_missing.insert(event, "tracefs not mounted".into());
            }
            Some(Err(e)) => {
                r.tp_missing.insert(event, e.to_string());
            }
            Some(Ok(fmt)) => {
                if let Some(why) = describe(filler(&Record(&fmt), &mut r.layouts.tp)) {
                    r.tp_missing.insert(event, why);
                }
            }
        }
        match btf.map(|b| b.tracepoint_args(event)) {
            None => {
                r.btf_missing.insert(event, "kernel BTF unavailable".into());
            }
            Some(None) => {
                r.btf_missing
                    .insert(event, format!("no btf_trace_{event} in the kernel's BTF"));
            }
            Some(Some(args)) => {
                if let Some(why) = describe(filler(&Args(args), &mut r.layouts.btf)) {
                    r.btf_missing.insert(event, why);
                }
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btf::Param;

    #[test]
    fn classic_layout_from_format() {
        let fmt = Format::parse(crate::tracefs::tests_support::KMALLOC_FORMAT).unwrap();
        let mut l = KmallocLayout::default();
        assert!(kmalloc(&Record(&fmt), &mut l).is_empty());
        assert_eq!(l.ptr, FieldLoc::new(16, 8));
        assert_eq!(l.gfp_flags, FieldLoc::new(40, 8));
    }

    #[test]
    fn btf_layout_from_args_and_missing_fields() {
        let p = |n: &str, s| Param {
            name: n.into(),
            size: s,
        };
        let args = Args(vec![
            p("call_site", 8),
            p("ptr", 8),
            p("bytes_req", 8),
            p("bytes_alloc", 8),
            p("gfp_flags", 4),
            p("node", 4),
        ]);
        let mut l = KmallocLayout::default();
        assert!(kmalloc(&args, &mut l).is_empty());
        assert_eq!(l.gfp_flags, FieldLoc::new(32, 4));
        let old = Args(vec![p("call_site", 8), p("ptr", 8)]);
        let mut l = KmallocLayout::default();
        assert_eq!(
            kmalloc(&old, &mut l),
            vec!["bytes_req", "bytes_alloc", "gfp_flags"]
        );
    }
}
