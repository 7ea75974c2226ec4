//! The running kernel: its release, page size and page-block order, migrate-type names and
//! symbol addresses, each read from the kernel itself; its BTF ([`btf`]), tracefs
//! ([`tracefs`]) and the privileges tracing it needs ([`caps`]).

pub mod btf;
pub mod caps;
pub mod tracefs;

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader},
};

use btf::Btf;

/// Where the running kernel publishes its symbol table.
pub const KALLSYMS_PATH: &str = "/proc/kallsyms";

/// The list of loaded modules; its changes trigger a reload of the symbol table
/// ([`crate::label::symbolize::Cached`]).
pub const MODULES_PATH: &str = "/proc/modules";

/// The running kernel's release (`uname -r`), `unknown` if unreadable.
pub fn release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// The page size, from sysconf (the kernel's own).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if v > 0 { v as u64 } else { 4096 }
}

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

/// The addresses of the kernel symbols `names` (in that order), from `/proc/kallsyms`.
/// They are handed to the eBPF programs only, never shown. An error names what is missing.
pub fn kallsyms_addresses(names: &[&str]) -> Result<Vec<u64>, String> {
    let path = KALLSYMS_PATH;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let mut found =
        parse_kallsyms_addresses(BufReader::new(file).lines().map_while(Result::ok), names);
    if found.contains(&Some(0)) {
        return Err(format!(
            "{path} hides addresses (kernel.kptr_restrict): memtrace needs CAP_SYSLOG (or root)"
        ));
    }
    let missing: Vec<&str> = names
        .iter()
        .zip(&found)
        .filter(|(_, a)| a.is_none())
        .map(|(n, _)| *n)
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "no {} in {path} (a kernel without CONFIG_RANDOMIZE_MEMORY?)",
            missing.join(", ")
        ));
    }
    Ok(found.iter_mut().map(|a| a.unwrap_or(0)).collect())
}

fn parse_kallsyms_addresses(
    lines: impl Iterator<Item = String>,
    names: &[&str],
) -> Vec<Option<u64>> {
    let mut found = vec![None; names.len()];
    for line in lines {
        let mut parts = line.split_ascii_whitespace();
        let (Some(addr), Some(_kind), Some(name), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            continue; // module symbols have a fourth column
        };
        if let Some(i) = names.iter().position(|n| *n == name) {
            if found[i].is_none() {
                found[i] = u64::from_str_radix(addr, 16).ok();
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_addresses_of_core_symbols_only() {
        let text = "ffffffff81000000 T _text\nffffffff82a1b2c8 D page_offset_base\n\
                    ffffffffc0001000 d vmemmap_base\t[fake_module]\n\
                    ffffffff82a1b2d0 D vmemmap_base\n";
        let found = parse_kallsyms_addresses(
            text.lines().map(String::from),
            &["page_offset_base", "vmemmap_base", "absent"],
        );
        assert_eq!(
            found,
            vec![Some(0xffffffff82a1b2c8), Some(0xffffffff82a1b2d0), None]
        );
    }

    #[test]
    fn reads_pageblock_order() {
        let text = "Page block order: 9\nPages per block:  512\n\nFree pages count per migrate type at order       0 ...\n";
        assert_eq!(parse_pageblock_order(text), Some(9));
        assert_eq!(parse_pageblock_order("nothing here"), None);
        assert_eq!(parse_pageblock_order("Page block order: x"), None);
    }
}
