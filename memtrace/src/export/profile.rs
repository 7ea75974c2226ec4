//! The heap profile's series: estimated live bytes per allocator and function, the samples
//! behind them, and the samples whose free was never seen.

use std::collections::BTreeMap;

use memtrace_common::Allocator;
use prometheus::proto::{MetricFamily, MetricType};

use super::{
    Exporter, names,
    proto::{counter, family, gauge},
};
use crate::{label::OTHER, profile::live::Profiler};

impl Exporter {
    /// The heap profile's families.
    pub(super) fn profile_families(&mut self, p: &Profiler, out: &mut Vec<MetricFamily>) {
        let by = p.by_function(self.symbols());
        let live = by.iter().map(|(k, v)| (k.clone(), v.0)).collect();
        let now = crate::profile::monotonic_ns();
        let mut metrics = Vec::new();
        let mut ages = Vec::new();
        let tops = top_by_allocator(&live, self.limits.callsites);
        let kept: std::collections::BTreeSet<(Allocator, &str)> = tops
            .iter()
            .flat_map(|(a, rows)| rows.iter().map(move |(f, _)| (*a, f.as_str())))
            .filter(|(_, f)| *f != OTHER)
            .collect();
        for (allocator, rows) in &tops {
            let allocator = *allocator;
            for (function, bytes) in rows {
                let bytes = *bytes;
                let labels = [("allocator", allocator.name()), ("function", function)];
                metrics.push(gauge(&labels, bytes));
                // `other`'s oldest is the oldest of the functions it sums.
                let oldest = by
                    .iter()
                    .filter(|((a, f), _)| {
                        *a == allocator
                            && (f == function
                                || (function == OTHER && !kept.contains(&(*a, f.as_str()))))
                    })
                    .map(|(_, v)| v.1)
                    .min()
                    .unwrap_or(u64::MAX);
                if oldest != u64::MAX {
                    ages.push(gauge(&labels, now.saturating_sub(oldest) as f64 / 1e9));
                }
            }
        }
        out.push(family(
            names::LIVE_BYTES,
            "Estimated bytes allocated and not yet freed, by allocator and calling function, from the heap profile's samples (allocations since profiling started; the rest of an allocator's functions in function=\"other\").",
            MetricType::GAUGE,
            metrics,
        ));
        out.push(family(
            names::LIVE_OLDEST_AGE_SECONDS,
            "Age of the oldest live sample behind memtrace_live_bytes, by allocator and calling function.",
            MetricType::GAUGE,
            ages,
        ));
        out.push(family(
            names::PROFILE_SAMPLES_TOTAL,
            "Allocations the heap profile sampled (one per --profile.sample-bytes allocated, on average).",
            MetricType::COUNTER,
            Allocator::ALL
                .iter()
                .map(|a| {
                    counter(
                        &[("allocator", a.name())],
                        p.samples().get(a).copied().unwrap_or(0) as f64,
                    )
                })
                .collect(),
        ));
        out.push(family(
            names::PROFILE_LIVE_SAMPLES,
            "Sampled allocations not yet freed (at most --profile.max-live).",
            MetricType::GAUGE,
            vec![gauge(&[], p.live_samples() as f64)],
        ));
        out.push(family(
            names::PROFILE_PHANTOM_SAMPLES_TOTAL,
            "Live samples ended without their free: reason=\"address_reused\" (their address was allocated again: a free no tracepoint reported, or one the kernel skipped while a program ran), reason=\"aged_out\" (older than --profile.max-age).",
            MetricType::COUNTER,
            vec![
                counter(&[("reason", "address_reused")], p.address_reused as f64),
                counter(&[("reason", "aged_out")], p.aged_out as f64),
            ],
        ));
    }
}

/// Each allocator's `max` largest functions, the rest summed in `other`, largest first.
fn top_by_allocator(
    live: &BTreeMap<(Allocator, String), f64>,
    max: usize,
) -> BTreeMap<Allocator, Vec<(String, f64)>> {
    let mut by: BTreeMap<Allocator, Vec<(String, f64)>> = BTreeMap::new();
    for ((a, f), v) in live {
        by.entry(*a).or_default().push((f.clone(), *v));
    }
    for rows in by.values_mut() {
        rows.sort_by(|x, y| y.1.total_cmp(&x.1).then_with(|| x.0.cmp(&y.0)));
        let mut kept: Vec<(String, f64)> = Vec::new();
        let mut other = 0.0;
        let mut has_other = false;
        for (f, v) in rows.drain(..) {
            if f == OTHER || kept.len() >= max {
                other += v;
                has_other = true;
            } else {
                kept.push((f, v));
            }
        }
        if has_other {
            kept.push((OTHER.to_string(), other));
        }
        *rows = kept;
    }
    by
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_bytes_keep_the_largest_functions_and_sum_the_rest() {
        let mut live = BTreeMap::new();
        for (i, f) in ["a", "b", "c", "d"].iter().enumerate() {
            live.insert((Allocator::Kmalloc, f.to_string()), (i + 1) as f64);
        }
        live.insert((Allocator::Kmalloc, OTHER.to_string()), 10.0);
        live.insert((Allocator::Page, "e".to_string()), 5.0);
        let by = top_by_allocator(&live, 2);
        assert_eq!(
            by[&Allocator::Kmalloc],
            [
                ("d".to_string(), 4.0),
                ("c".to_string(), 3.0),
                (OTHER.to_string(), 13.0)
            ]
        );
        assert_eq!(by[&Allocator::Page], [("e".to_string(), 5.0)]);
    }
}
