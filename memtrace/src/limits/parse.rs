//! Parsers of the procfs files `memtrace limits` reads: /proc/buddyinfo, /proc/meminfo,
//! /proc/zoneinfo, and the small text forms of sysfs.

use std::collections::BTreeMap;

use super::{LimitsError, ZoneWatermarks};

pub(super) fn malformed(path: &str, line: usize, what: impl Into<String>) -> LimitsError {
    LimitsError::Malformed {
        path: path.to_string(),
        line,
        what: what.into(),
    }
}

pub(super) fn parse_num(
    tok: &str,
    path: &str,
    line: usize,
    what: &str,
) -> Result<u64, LimitsError> {
    tok.parse()
        .map_err(|_| malformed(path, line, format!("{what} {tok:?} is not a number")))
}

/// `v << order`, saturating instead of overflowing on absurd input.
pub(super) fn shl(v: u64, order: u32) -> u64 {
    1u64.checked_shl(order)
        .and_then(|m| v.checked_mul(m))
        .unwrap_or(u64::MAX)
}

/// Splits `Node 0, zone   Normal <rest>` into `(0, "Normal", rest)`.
fn parse_zone_header(line: &str) -> Option<(u32, &str, &str)> {
    let (node, rest) = line.trim_start().strip_prefix("Node")?.split_once(',')?;
    let node = node.trim().parse().ok()?;
    let rest = rest.trim_start().strip_prefix("zone")?.trim_start();
    let end = rest.find(char::is_whitespace).unwrap_or(rest.len());
    let (zone, rest) = rest.split_at(end);
    (!zone.is_empty()).then_some((node, zone, rest))
}

/// Parses /proc/buddyinfo into `(node, zone, free blocks per order)` rows. Every row must
/// have the same number of order columns (at least 1, at most 64).
pub fn parse_buddyinfo(
    text: &str,
    path: &str,
) -> Result<Vec<(u32, String, Vec<u64>)>, LimitsError> {
    let mut rows: Vec<(u32, String, Vec<u64>)> = Vec::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let n = i + 1;
        let (node, zone, rest) = parse_zone_header(line)
            .ok_or_else(|| malformed(path, n, "expected `Node N, zone NAME counts...`"))?;
        let counts = rest
            .split_whitespace()
            .map(|t| parse_num(t, path, n, "free-block count"))
            .collect::<Result<Vec<u64>, _>>()?;
        if counts.is_empty() || counts.len() > 64 {
            return Err(malformed(
                path,
                n,
                format!("{} order columns, expected 1 to 64", counts.len()),
            ));
        }
        if let Some(first) = rows
            .first()
            .map(|r| r.2.len())
            .filter(|&f| f != counts.len())
        {
            let what = format!(
                "{} order columns, but the first row has {first}",
                counts.len()
            );
            return Err(malformed(path, n, what));
        }
        rows.push((node, zone.to_string(), counts));
    }
    if rows.is_empty() {
        return Err(malformed(path, 0, "no zone rows"));
    }
    Ok(rows)
}

/// Parses /proc/meminfo `Key: value [kB]` lines into key -> value as written (the caller
/// converts kB).
pub fn parse_meminfo(text: &str, path: &str) -> Result<BTreeMap<String, u64>, LimitsError> {
    let mut out = BTreeMap::new();
    for (i, line) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let n = i + 1;
        let (key, value) = line
            .split_once(':')
            .ok_or_else(|| malformed(path, n, "expected `Key: value`"))?;
        let num = value
            .split_whitespace()
            .next()
            .ok_or_else(|| malformed(path, n, "no value"))?;
        out.insert(key.trim().to_string(), parse_num(num, path, n, "value")?);
    }
    Ok(out)
}

/// Parses /proc/zoneinfo into `(node, zone, watermarks)`. Only the first `min`, `low`,
/// `high` and `managed` lines after each zone header count (the per-cpu `high:` lines do
/// not match); a zone missing any of the four is left out.
pub fn parse_zoneinfo(
    text: &str,
    path: &str,
) -> Result<Vec<(u32, String, ZoneWatermarks)>, LimitsError> {
    type Partial = (u32, String, [Option<u64>; 4]);
    fn flush(cur: Option<Partial>, out: &mut Vec<(u32, String, ZoneWatermarks)>) {
        if let Some((node, zone, [Some(min), Some(low), Some(high), Some(managed)])) = cur {
            out.push((
                node,
                zone,
                ZoneWatermarks {
                    min,
                    low,
                    high,
                    managed,
                },
            ));
        }
    }
    let mut out = Vec::new();
    let mut cur: Option<Partial> = None;
    for (i, line) in text.lines().enumerate() {
        let n = i + 1;
        if line.starts_with("Node") {
            flush(cur.take(), &mut out);
            let (node, zone, _) = parse_zone_header(line)
                .ok_or_else(|| malformed(path, n, "expected `Node N, zone NAME`"))?;
            cur = Some((node, zone.to_string(), [None; 4]));
            continue;
        }
        let Some((_, _, slots)) = cur.as_mut() else {
            continue;
        };
        let mut toks = line.split_whitespace();
        let (Some(key), Some(val), None) = (toks.next(), toks.next(), toks.next()) else {
            continue;
        };
        let idx = match key {
            "min" => 0,
            "low" => 1,
            "high" => 2,
            "managed" => 3,
            _ => continue,
        };
        if slots[idx].is_none() {
            slots[idx] = Some(parse_num(val, path, n, key)?);
        }
    }
    flush(cur, &mut out);
    Ok(out)
}

/// True for the plain kmalloc caches `kmalloc-<digits>[k|M]` (kmalloc-8, kmalloc-1k), not
/// for dma-kmalloc-*, kmalloc-cg-*, kmalloc-rcl-*, kmalloc-rnd-* or kmalloc_buckets.
pub(super) fn is_plain_kmalloc(name: &str) -> bool {
    let Some(size) = name.strip_prefix("kmalloc-") else {
        return false;
    };
    let digits = size.trim_end_matches(['k', 'M']);
    !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
        && size.len() - digits.len() <= 1
}

/// The bracketed word of a sysfs choice file such as `always [madvise] never`.
pub(super) fn bracketed(text: &str) -> Option<&str> {
    let start = text.find('[')? + 1;
    let len = text[start..].find(']')?;
    Some(&text[start..start + len])
}
