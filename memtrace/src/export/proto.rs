//! Building Prometheus metric families by hand: the exporter emits constant families at
//! scrape time (the ebpf_exporter model), so every sample is made here.

use memtrace_common::{SIZE_BUCKETS, SizeStats, size_bucket_upper};
use prometheus::proto::{self, LabelPair, MetricFamily, MetricType};

pub(super) fn labels(pairs: &[(&str, &str)]) -> Vec<LabelPair> {
    pairs
        .iter()
        .map(|(k, v)| {
            let mut l = LabelPair::default();
            l.set_name((*k).to_string());
            l.set_value((*v).to_string());
            l
        })
        .collect()
}

pub(super) fn family(
    name: &str,
    help: &str,
    kind: MetricType,
    metrics: Vec<proto::Metric>,
) -> MetricFamily {
    let mut f = MetricFamily::default();
    f.set_name(name.to_string());
    f.set_help(help.to_string());
    f.set_field_type(kind);
    f.set_metric(metrics);
    f
}

pub(super) fn counter(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut c = proto::Counter::default();
    c.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_counter(c);
    m
}

pub(super) fn gauge(pairs: &[(&str, &str)], v: f64) -> proto::Metric {
    let mut g = proto::Gauge::default();
    g.set_value(v);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_gauge(g);
    m
}

/// A Prometheus histogram from a [`SizeStats`]: cumulative buckets at the powers of two from
/// 8 B to 4 MiB, sum = bytes allocated.
pub(super) fn histogram(pairs: &[(&str, &str)], s: &SizeStats) -> proto::Metric {
    let mut h = proto::Histogram::default();
    let mut cumulative = 0u64;
    let mut buckets = Vec::with_capacity(SIZE_BUCKETS - 1);
    for (idx, n) in s.buckets.iter().enumerate() {
        cumulative += n;
        if let Some(le) = size_bucket_upper(idx) {
            let mut b = proto::Bucket::default();
            b.set_upper_bound(le as f64);
            b.set_cumulative_count(cumulative);
            buckets.push(b);
        }
    }
    h.set_bucket(buckets);
    h.set_sample_count(cumulative);
    h.set_sample_sum(s.allocated_bytes as f64);
    let mut m = proto::Metric::from_label(labels(pairs));
    m.set_histogram(h);
    m
}
