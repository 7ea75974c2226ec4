//! The heap profile's series: estimated live bytes per allocator and function, the samples
//! behind them, and the samples whose free was never seen.

use std::collections::{BTreeMap, BTreeSet};

use memtrace_common::Allocator;
use prometheus::proto::{MetricFamily, MetricType};

use super::{
    Exporter, names,
    proto::{counter, family, gauge},
};
use crate::{label::OTHER, profile::live::Profiler};

impl Exporter {
    /// The heap profile's families (the `profile` collector's).
    pub fn profile_families(&mut self, p: &Profiler, out: &mut Vec<MetricFamily>) {
        let by = p.by_function(self.symbols());
        let now = crate::profile::monotonic_ns();
        let max = self.limits.callsites;
        let mut metrics = Vec::new();
        let mut ages = Vec::new();
        for a in Allocator::ALL {
            let current: BTreeMap<&str, (f64, u64)> = by
                .iter()
                .filter(|((x, _), _)| *x == a)
                .map(|((_, f), v)| (f.as_str(), *v))
                .collect();
            let series = self.live_series.entry(a).or_default();
            let rows = series.apply(&current, max);
            for (function, (bytes, oldest)) in rows {
                let labels = [("allocator", a.name()), ("function", function.as_str())];
                metrics.push(gauge(&labels, bytes));
                if oldest != u64::MAX {
                    ages.push(gauge(&labels, now.saturating_sub(oldest) as f64 / 1e9));
                }
            }
        }
        out.push(family(
            names::LIVE_BYTES,
            "Estimated bytes allocated and not yet freed, by allocator and calling function, from the heap profile's samples (allocations since profiling started; at most --callsites.max functions per allocator, the rest in function=\"other\"; a series once exported stays, at 0 when nothing of it is live).",
            MetricType::GAUGE,
            metrics,
        ));
        out.push(family(
            names::LIVE_OLDEST_AGE_SECONDS,
            "Age of the oldest live sample behind memtrace_live_bytes, by allocator and calling function (absent while nothing of it is live).",
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
            "Live samples ended without their free: reason=\"address_reused\" (their address was sampled again: a free no tracepoint reported, or one the kernel skipped while a program ran), reason=\"aged_out\" (older than --profile.max-age).",
            MetricType::COUNTER,
            vec![
                counter(&[("reason", "address_reused")], p.address_reused as f64),
                counter(&[("reason", "aged_out")], p.aged_out as f64),
            ],
        ));
    }
}

/// The bounded `function` label of one allocator's `memtrace_live_bytes`: a function, once
/// given a series, keeps it (at 0 while nothing of it is live), so series neither flap nor
/// grow past the bound; functions that find no free series sum in `other`.
#[derive(Debug, Default, Clone)]
pub(super) struct LiveSeries {
    kept: BTreeSet<String>,
    other: bool,
}

impl LiveSeries {
    /// The series for `current` (function → (live bytes, oldest sample time)): at most `max`
    /// functions, the largest first admitted, then `other` (the sum of the rest, their
    /// oldest time) once anything has gone there.
    fn apply(
        &mut self,
        current: &BTreeMap<&str, (f64, u64)>,
        max: usize,
    ) -> Vec<(String, (f64, u64))> {
        let mut fresh: Vec<(&str, f64)> = current
            .iter()
            .filter(|(f, _)| **f != OTHER && !self.kept.contains(**f))
            .map(|(f, v)| (*f, v.0))
            .collect();
        fresh.sort_by(|a, b| b.1.total_cmp(&a.1).then_with(|| a.0.cmp(b.0)));
        for (f, _) in fresh {
            if self.kept.len() >= max {
                break;
            }
            self.kept.insert(f.to_string());
        }
        let mut out: Vec<(String, (f64, u64))> = self
            .kept
            .iter()
            .map(|f| {
                (
                    f.clone(),
                    current.get(f.as_str()).copied().unwrap_or((0.0, u64::MAX)),
                )
            })
            .collect();
        let mut other = (0.0, u64::MAX);
        for (f, v) in current {
            if !self.kept.contains(*f) {
                other.0 += v.0;
                other.1 = other.1.min(v.1);
                self.other = true;
            }
        }
        if self.other {
            out.push((OTHER.to_string(), other));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_series_are_bounded_and_stay_once_exported() {
        let mut s = LiveSeries::default();
        let cur: BTreeMap<&str, (f64, u64)> = [
            ("a", (1.0, 5)),
            ("b", (2.0, 6)),
            ("c", (3.0, 7)),
            ("d", (4.0, 8)),
        ]
        .into();
        let rows = s.apply(&cur, 2);
        assert_eq!(
            rows,
            [
                ("c".to_string(), (3.0, 7)),
                ("d".to_string(), (4.0, 8)),
                (OTHER.to_string(), (3.0, 5))
            ]
        );
        // d frees everything: its series stays at 0; e, new and large, goes to other.
        let cur: BTreeMap<&str, (f64, u64)> = [("c", (3.0, 7)), ("e", (9.0, 9))].into();
        let rows = s.apply(&cur, 2);
        assert_eq!(
            rows,
            [
                ("c".to_string(), (3.0, 7)),
                ("d".to_string(), (0.0, u64::MAX)),
                (OTHER.to_string(), (9.0, 9))
            ]
        );
        // Nothing live at all: the same series, at 0.
        let rows = s.apply(&BTreeMap::new(), 2);
        assert_eq!(rows.len(), 3);
        assert!(rows.iter().all(|r| r.1.0 == 0.0));
    }
}
