//! Facts about the running kernel that label or interpret the kernel's numbers, each read
//! from the kernel itself: page-block order, migrate-type names.

use std::collections::BTreeMap;

use crate::btf::Btf;

/// `Page block order: N` from /proc/pagetypeinfo: an extfrag fallback to a smaller block
/// than this fragments memory.
pub fn pageblock_order() -> Option<u32> {
    let text = std::fs::read_to_string("/proc/pagetypeinfo").ok()?;
    parse_pageblock_order(&text)
}

fn parse_pageblock_order(text: &str) -> Option<u32> {
    text.lines()
        .find_map(|l| l.strip_prefix("Page block order:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The kernel's `enum migratetype` names by value, lower-cased without `MIGRATE_`
/// (`unmovable`, `movable`, `reclaimable`, `highatomic`, `cma`, `isolate`). Aliases that
/// count types (`MIGRATE_PCPTYPES`, `MIGRATE_TYPES`) are skipped.
pub fn migratetype_names(btf: &Btf) -> BTreeMap<u32, String> {
    let mut out = BTreeMap::new();
    for (name, value) in btf.enum_values("migratetype").unwrap_or_default() {
        if name == "MIGRATE_PCPTYPES" || name == "MIGRATE_TYPES" || value < 0 {
            continue;
        }
        let short = name.trim_start_matches("MIGRATE_").to_ascii_lowercase();
        out.entry(value as u32).or_insert(short);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_pageblock_order() {
        let text = "Page block order: 9\nPages per block:  512\n\nFree pages count per migrate type at order       0 ...\n";
        assert_eq!(parse_pageblock_order(text), Some(9));
        assert_eq!(parse_pageblock_order("nothing here"), None);
        assert_eq!(parse_pageblock_order("Page block order: x"), None);
    }
}
