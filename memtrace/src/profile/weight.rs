//! The estimator: what one sample stands for.
//!
//! The programs sample allocations by bytes (see [`memtrace_common::SampleGaps`]): the gaps
//! between sample points along the stream of allocated bytes are drawn from the exponential
//! distribution of mean `m` (`--profile.sample-bytes`), so the sample points form a Poisson
//! process of rate `1/m`, and an allocation of `n` bytes holds at least one of them, and is
//! sampled, with probability `p(n) = 1 - exp(-n/m)`, independently of every other
//! allocation. Weighing each sampled allocation by `1/p(n)` objects and `n/p(n)` bytes gives
//! unbiased (Horvitz–Thompson) estimates of the objects and bytes allocated, and, summed over
//! the samples not yet freed, of those still live; the same estimator as Go's and tcmalloc's
//! heap profiles.
//!
//! **Error.** Each allocation contributes `n/p` with probability `p` and 0 otherwise, so the
//! variance of an estimated total of bytes is `Σ n²(1-p)/p` over the allocations it covers.
//! For allocations much smaller than `m` that is about `m · total`: the relative standard
//! error is `1/sqrt(k)`, where `k ≈ total/m` is the number of samples behind the estimate
//! (100 samples: ±10 %; 10 000: ±1 %). Allocations much larger than `m` are nearly always
//! sampled with weight ~1 and add almost no error. [`Estimator::relative_error`] computes it for a
//! stream of equal allocations; the unit tests check estimates on synthetic streams against
//! it.
//!
//! The table holds [`GAP_SLOTS`] quantiles of the exponential distribution, at the midpoints
//! of equal-probability bins; its largest gap is about `7.6 m` (a true exponential goes
//! beyond with probability 1/2048). [`Estimator`] uses the table's own mean as `m`.

use memtrace_common::{GAP_SLOTS, SampleGaps};

/// The gaps table for a sampling mean of `mean` bytes (at least 1).
pub fn gaps(mean: u64) -> SampleGaps {
    let mut g = SampleGaps::ZERO;
    let mean = mean.max(1) as f64;
    for (i, slot) in g.gaps.iter_mut().enumerate() {
        // The upper tail's quantile at the bin's midpoint: -ln(1 - u) with u = (i + ½) / N.
        let tail = 1.0 - (i as f64 + 0.5) / GAP_SLOTS as f64;
        *slot = ((-tail.ln()) * mean).round().max(1.0) as u64;
    }
    g
}

/// Turns samples into estimates (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimator {
    /// The mean gap of the table the programs draw from, in bytes.
    pub mean: f64,
}

impl Estimator {
    /// The estimator of a gaps table.
    pub fn of(g: &SampleGaps) -> Estimator {
        let sum: f64 = g.gaps.iter().map(|&x| x as f64).sum();
        Estimator {
            mean: sum / GAP_SLOTS as f64,
        }
    }

    /// The probability that an allocation of `bytes` is sampled.
    pub fn probability(&self, bytes: u64) -> f64 {
        -(-(bytes as f64) / self.mean).exp_m1()
    }

    /// (objects, bytes) that a sampled allocation of `bytes` stands for.
    pub fn weight(&self, bytes: u64) -> (f64, f64) {
        let p = self.probability(bytes);
        if p <= 0.0 {
            return (0.0, 0.0);
        }
        (1.0 / p, bytes as f64 / p)
    }

    /// The relative standard error of the estimated bytes of `count` allocations of `bytes`
    /// each (see the module documentation).
    pub fn relative_error(&self, bytes: u64, count: u64) -> f64 {
        let p = self.probability(bytes);
        if p <= 0.0 || count == 0 {
            return f64::INFINITY;
        }
        ((1.0 - p) / (p * count as f64)).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use memtrace_common::sample_step;

    /// xorshift64*: a small deterministic generator standing in for bpf_get_prandom_u32.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u32 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u32
        }
    }

    /// Runs the programs' countdown over `sizes` (one CPU) and returns the estimated
    /// (objects, bytes) and the number of samples.
    fn estimate(sizes: &[u64], mean: u64, seed: u64) -> (f64, f64, usize) {
        let g = gaps(mean);
        let e = Estimator::of(&g);
        let mut rng = Rng(seed | 1);
        let mut countdown = 0;
        let (mut objects, mut bytes, mut samples) = (0.0, 0.0, 0);
        for &n in sizes {
            let sampled = sample_step(&mut countdown, n, || {
                g.gaps[rng.next() as usize & (GAP_SLOTS - 1)]
            });
            if sampled {
                let (o, b) = e.weight(n);
                objects += o;
                bytes += b;
                samples += 1;
            }
        }
        (objects, bytes, samples)
    }

    #[test]
    fn the_table_is_exponential() {
        let g = gaps(512 * 1024);
        let e = Estimator::of(&g);
        // Midpoint quantiles lose a little of the tail's mean.
        assert!((e.mean / (512.0 * 1024.0) - 1.0).abs() < 0.01, "{}", e.mean);
        assert!(g.gaps.windows(2).all(|w| w[0] <= w[1]));
        // The median of Exp(m) is m ln 2.
        let median = g.gaps[GAP_SLOTS / 2] as f64;
        assert!((median / (512.0 * 1024.0 * std::f64::consts::LN_2) - 1.0).abs() < 0.01);
        assert!(gaps(0).gaps.iter().all(|&x| x >= 1));
    }

    #[test]
    fn weights_are_inverse_probabilities() {
        let e = Estimator { mean: 1000.0 };
        let (o, b) = e.weight(1000);
        let p = 1.0 - (-1.0f64).exp();
        assert!((o - 1.0 / p).abs() < 1e-9);
        assert!((b - 1000.0 / p).abs() < 1e-6);
        // Far above the mean an allocation is always sampled, weight one.
        let (o, b) = e.weight(1 << 30);
        assert!((o - 1.0).abs() < 1e-9 && (b - (1u64 << 30) as f64).abs() < 1e-3);
        // Far below, it stands for mean / bytes objects.
        let (o, _) = e.weight(1);
        assert!((o - 1000.5).abs() < 0.01, "{o}");
    }

    /// Streams of equal allocations: the estimate lies within 4 standard errors of the
    /// truth, and the error the module documents is the one seen over many seeds.
    #[test]
    fn equal_allocations_are_estimated_within_the_stated_error() {
        let mean = 64 * 1024;
        for (size, count) in [(64u64, 400_000usize), (4096, 20_000), (1 << 20, 200)] {
            let sizes = vec![size; count];
            let truth = (size * count as u64) as f64;
            let stated = Estimator::of(&gaps(mean)).relative_error(size, count as u64);
            let mut errors = Vec::new();
            for seed in 1..=40 {
                let (objects, bytes, _) = estimate(&sizes, mean, seed * 7919);
                let err = bytes / truth - 1.0;
                assert!(
                    err.abs() <= 4.0 * stated + 1e-9,
                    "{count} × {size} B, seed {seed}: estimate off by {:.2} % (stated error {:.2} %)",
                    err * 100.0,
                    stated * 100.0
                );
                assert!(((objects / count as f64) - 1.0).abs() <= 4.0 * stated + 1e-9);
                errors.push(err);
            }
            // Unbiased: the mean error over 40 runs is within 4 standard errors of the mean.
            let bias = errors.iter().sum::<f64>() / errors.len() as f64;
            assert!(
                bias.abs() <= 4.0 * stated / (errors.len() as f64).sqrt() + 1e-9,
                "{size} B: bias {:.3} % (stated error {:.3} %)",
                bias * 100.0,
                stated * 100.0
            );
            // And the spread is the stated error (within a factor of 2 either way).
            let rms = (errors.iter().map(|e| e * e).sum::<f64>() / errors.len() as f64).sqrt();
            if stated > 1e-3 {
                assert!(
                    rms > stated / 2.0 && rms < stated * 2.0,
                    "{size} B: rms error {rms} vs stated {stated}"
                );
            }
        }
    }

    /// A mixed stream (the sizes a kernel allocates, small to large, in a fixed pattern):
    /// totals within 4 standard errors, computed from the stream itself.
    #[test]
    fn mixed_sizes_are_estimated_within_the_stated_error() {
        let mean = 512 * 1024;
        let pattern = [8u64, 32, 64, 192, 256, 1024, 4096, 8192, 65536, 3 << 20];
        let sizes: Vec<u64> = (0..300_000).map(|i| pattern[i % pattern.len()]).collect();
        let e = Estimator::of(&gaps(mean));
        let truth: f64 = sizes.iter().map(|&n| n as f64).sum();
        let variance: f64 = sizes
            .iter()
            .map(|&n| {
                let p = e.probability(n);
                (n as f64).powi(2) * (1.0 - p) / p
            })
            .sum();
        let sd = variance.sqrt() / truth;
        for seed in 1..=20 {
            let (_, bytes, samples) = estimate(&sizes, mean, seed * 104_729);
            assert!(samples > 0);
            let err = bytes / truth - 1.0;
            assert!(
                err.abs() <= 4.0 * sd,
                "seed {seed}: off by {:.2} %, sd {:.2} %",
                err * 100.0,
                sd * 100.0
            );
        }
    }
}
