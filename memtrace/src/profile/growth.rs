//! Whether an estimated live size grows steadily: the leak test of `memtrace leaks`.
//!
//! A stack's live bytes are recorded at each tick (a bounded window of points). It is a
//! leak suspect when, over the window, it grew by at least a floor (two samples' worth of
//! bytes, so that one sample more is not a trend), it grew at most of the steps and fell at
//! few (a steadiness of at least [`STEADY`]: the share of steps that did not fall), and the
//! least-squares line through the points rises. Sampled sizes move in steps of about one
//! sample's weight, so flat steps are normal and count as steady.

use std::collections::VecDeque;

/// The share of non-falling steps a suspect needs.
pub const STEADY: f64 = 0.8;
/// Points a suspect needs.
pub const MIN_POINTS: usize = 4;

/// A bounded window of (seconds, bytes) points.
#[derive(Debug, Clone, Default)]
pub struct Series {
    points: VecDeque<(f64, f64)>,
}

/// How a [`Series`] moved over its window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Trend {
    /// Bytes per second, of the least-squares line.
    pub slope: f64,
    /// Last minus first point, bytes.
    pub growth: f64,
    /// The share of steps that did not fall.
    pub steadiness: f64,
    /// Seconds between the first and the last point.
    pub span: f64,
    pub points: usize,
}

impl Series {
    /// Appends a point, dropping the oldest beyond `capacity`.
    pub fn push(&mut self, t: f64, bytes: f64, capacity: usize) {
        self.points.push_back((t, bytes));
        while self.points.len() > capacity.max(2) {
            self.points.pop_front();
        }
    }

    pub fn len(&self) -> usize {
        self.points.len()
    }

    pub fn is_empty(&self) -> bool {
        self.points.is_empty()
    }

    /// The trend of the window; `None` with fewer than two points.
    pub fn trend(&self) -> Option<Trend> {
        let n = self.points.len();
        if n < 2 {
            return None;
        }
        let (first, last) = (self.points[0], self.points[n - 1]);
        let mean_t = self.points.iter().map(|p| p.0).sum::<f64>() / n as f64;
        let mean_b = self.points.iter().map(|p| p.1).sum::<f64>() / n as f64;
        let (mut cov, mut var) = (0.0, 0.0);
        for &(t, b) in &self.points {
            cov += (t - mean_t) * (b - mean_b);
            var += (t - mean_t) * (t - mean_t);
        }
        let steps = n - 1;
        let steady = self
            .points
            .iter()
            .zip(self.points.iter().skip(1))
            .filter(|(a, b)| b.1 >= a.1)
            .count();
        Some(Trend {
            slope: if var > 0.0 { cov / var } else { 0.0 },
            growth: last.1 - first.1,
            steadiness: steady as f64 / steps as f64,
            span: last.0 - first.0,
            points: n,
        })
    }

    /// Whether the window shows steady growth of at least `floor` bytes (see the module
    /// documentation).
    pub fn suspect(&self, floor: f64) -> Option<Trend> {
        let t = self.trend()?;
        (t.points >= MIN_POINTS && t.growth >= floor && t.steadiness >= STEADY && t.slope > 0.0)
            .then_some(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(values: &[f64]) -> Series {
        let mut s = Series::default();
        for (i, v) in values.iter().enumerate() {
            s.push(i as f64 * 10.0, *v, 64);
        }
        s
    }

    #[test]
    fn steady_growth_is_a_suspect() {
        let s = series(&[0.0, 1e6, 1e6, 2e6, 3e6, 3e6, 4e6]);
        let t = s.suspect(1e6).expect("grows");
        assert_eq!(t.growth, 4e6);
        assert!((t.slope - 4e6 / 60.0).abs() < 1e4, "{}", t.slope);
        assert_eq!(t.span, 60.0);
        assert_eq!(t.steadiness, 1.0);
    }

    #[test]
    fn flat_noisy_or_shrinking_sizes_are_not() {
        // Flat.
        assert!(series(&[5e6; 8]).suspect(1e6).is_none());
        // Up and down around a level.
        assert!(
            series(&[5e6, 6e6, 5e6, 6e6, 5e6, 6e6, 5e6, 7e6])
                .suspect(1e6)
                .is_none()
        );
        // Shrinking.
        assert!(series(&[8e6, 7e6, 6e6, 5e6]).suspect(1e6).is_none());
        // Growth below the floor (one sample more).
        assert!(series(&[0.0, 0.0, 0.0, 5e5]).suspect(1e6).is_none());
        // Too few points.
        assert!(series(&[0.0, 5e6, 9e6]).suspect(1e6).is_none());
        assert!(series(&[1.0]).trend().is_none());
    }

    #[test]
    fn the_window_is_bounded() {
        let mut s = Series::default();
        for i in 0..100 {
            s.push(i as f64, i as f64, 8);
        }
        assert_eq!(s.len(), 8);
        assert_eq!(s.trend().unwrap().growth, 7.0);
    }
}
