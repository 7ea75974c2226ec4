//! Bounded label cardinality that keeps counters monotonic.
//!
//! At most `max` label values get their own series; the heaviest candidates get free slots
//! first, and a value that has a slot keeps it. Everything else counts in one `other` series.
//! A value admitted after it had been counting in `other` starts its own series from zero
//! (its earlier count stays in `other`), so neither series ever goes backwards and `rate()`
//! is right on both.

use std::collections::{BTreeMap, BTreeSet};

use super::OTHER;

#[derive(Debug, Clone)]
pub struct Limiter {
    max: usize,
    /// Admitted values and the counts they had when admitted (0 unless they had been in
    /// `other` before).
    kept: BTreeMap<String, Vec<u64>>,
    /// Values whose counts have been exported inside `other`.
    in_other: BTreeSet<String>,
    /// The last value exported per series (`other` included): nothing goes backwards, even
    /// when a value's source disappears (a renamed symbol, a module unloaded).
    last: BTreeMap<String, Vec<u64>>,
}

impl Limiter {
    pub fn new(max: usize) -> Self {
        Limiter {
            max,
            kept: BTreeMap::new(),
            in_other: BTreeSet::new(),
            last: BTreeMap::new(),
        }
    }

    /// Maps cumulative counters per value (each a vector of the same length; element
    /// `weight` ranks candidates) to the series to export, `other` included when non-empty.
    pub fn apply(
        &mut self,
        current: &BTreeMap<String, Vec<u64>>,
        weight: usize,
    ) -> BTreeMap<String, Vec<u64>> {
        let width = current.values().map(Vec::len).max().unwrap_or(0);
        let mut candidates: Vec<(&String, u64)> = current
            .iter()
            .filter(|(k, _)| !self.kept.contains_key(*k) && k.as_str() != OTHER)
            .map(|(k, v)| (k, v.get(weight).copied().unwrap_or(0)))
            .collect();
        candidates.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (k, _) in candidates {
            if self.kept.len() >= self.max {
                break;
            }
            let base = if self.in_other.remove(k.as_str()) {
                current[k].clone()
            } else {
                vec![0; width]
            };
            self.kept.insert(k.clone(), base);
        }

        let mut out = BTreeMap::new();
        let mut other = vec![0u64; width];
        let mut other_used = false;
        for (k, base) in &self.kept {
            let cur = current.get(k).cloned().unwrap_or_else(|| base.clone());
            let v: Vec<u64> = (0..width)
                .map(|i| {
                    let c = cur.get(i).copied().unwrap_or(0);
                    let b = base.get(i).copied().unwrap_or(0);
                    if b > 0 {
                        other[i] += b;
                        other_used = true;
                    }
                    c.saturating_sub(b)
                })
                .collect();
            out.insert(k.clone(), v);
        }
        for (k, v) in current {
            if !self.kept.contains_key(k) {
                self.in_other.insert(k.clone());
                other_used = true;
                for (o, x) in other.iter_mut().zip(v) {
                    *o += x;
                }
            }
        }
        if other_used || self.in_other.contains(OTHER) || self.last.contains_key(OTHER) {
            out.insert(OTHER.to_string(), other);
        }
        // Monotonic per series: never below what was exported before; a series once exported
        // stays.
        for (k, prev) in &self.last {
            let v = out.entry(k.clone()).or_insert_with(|| prev.clone());
            for (x, p) in v.iter_mut().zip(prev) {
                *x = (*x).max(*p);
            }
        }
        self.last = out.clone();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_vanished_value_keeps_its_last_count() {
        let mut l = Limiter::new(2);
        let out = l.apply(&m(&[("a", 10), ("b", 5)]), 0);
        assert_eq!(get(&out, "a"), Some(10));
        // "a" disappears from the source (say its symbol was renamed): its series stays.
        let out = l.apply(&m(&[("b", 6), ("a2", 11)]), 0);
        assert_eq!(get(&out, "a"), Some(10));
        assert_eq!(get(&out, "b"), Some(6));
    }

    fn m(pairs: &[(&str, u64)]) -> BTreeMap<String, Vec<u64>> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), vec![*v]))
            .collect()
    }

    fn get(out: &BTreeMap<String, Vec<u64>>, k: &str) -> Option<u64> {
        out.get(k).map(|v| v[0])
    }

    #[test]
    fn heaviest_get_slots_and_the_rest_is_other() {
        let mut l = Limiter::new(2);
        let out = l.apply(&m(&[("a", 5), ("b", 50), ("c", 20)]), 0);
        assert_eq!(get(&out, "b"), Some(50));
        assert_eq!(get(&out, "c"), Some(20));
        assert_eq!(get(&out, "a"), None);
        assert_eq!(get(&out, OTHER), Some(5));
        let total: u64 = out.values().map(|v| v[0]).sum();
        assert_eq!(total, 75, "totals stay exact");
    }

    #[test]
    fn series_stay_once_exported_and_everything_is_monotonic() {
        let mut l = Limiter::new(2);
        let mut prev = l.apply(&m(&[("a", 10), ("b", 1)]), 0);
        // "c" overtakes "b" but "b" keeps its slot; "c" counts in other.
        let steps = [
            m(&[("a", 11), ("b", 2), ("c", 100)]),
            m(&[("a", 12), ("b", 3), ("c", 200), ("d", 1)]),
            m(&[("a", 13), ("b", 4), ("c", 300), ("d", 2)]),
        ];
        for cur in steps {
            let out = l.apply(&cur, 0);
            assert!(out.contains_key("a") && out.contains_key("b"));
            assert!(!out.contains_key("c"));
            for (k, v) in &prev {
                assert!(out[k][0] >= v[0], "{k} went backwards");
            }
            let total: u64 = out.values().map(|v| v[0]).sum();
            assert_eq!(total, cur.values().map(|v| v[0]).sum::<u64>());
            prev = out;
        }
    }

    #[test]
    fn a_value_admitted_after_other_starts_from_zero() {
        let mut l = Limiter::new(1);
        let out = l.apply(&m(&[("a", 10)]), 0);
        assert_eq!(get(&out, "a"), Some(10));
        let out = l.apply(&m(&[("a", 10), ("b", 7)]), 0);
        assert_eq!(get(&out, OTHER), Some(7));
        // Grow capacity as a new limiter state would not; simulate by a wider limiter.
        let mut l2 = Limiter::new(2);
        l2.kept = l.kept.clone();
        l2.in_other = l.in_other.clone();
        l2.last = l.last.clone();
        let out = l2.apply(&m(&[("a", 10), ("b", 9)]), 0);
        assert_eq!(get(&out, "b"), Some(0), "b's earlier 9 stay in other");
        assert_eq!(get(&out, OTHER), Some(9));
        let out = l2.apply(&m(&[("a", 10), ("b", 12)]), 0);
        assert_eq!(get(&out, "b"), Some(3));
        assert_eq!(get(&out, OTHER), Some(9));
    }
}
