//! A fixed-size log-linear latency histogram: recording is an index computation and an add, so
//! the read loop never allocates, and memory stays the same however long the run.
//!
//! Values below 256 ns are exact; above, each power of two is split into 128 buckets, so a
//! reported percentile is at most 1/128 (0.8 %) above the true sample.

use serde::Serialize;

/// Values at or below this are kept exactly (one bucket each).
const EXACT_MAX: u64 = 256;
/// Buckets per power of two above `EXACT_MAX`.
const SUB_BUCKETS: u64 = 128;
/// Largest recordable latency: 2^40 ns, about 18 minutes; larger values are clamped.
const VALUE_MAX: u64 = 1 << 40;
/// Full buckets for 2^8 ..= 2^40 - 1, then one for the clamp value 2^40.
const BUCKETS: usize = (EXACT_MAX + (40 - 8) * SUB_BUCKETS + 1) as usize;

#[derive(Clone)]
pub struct Histogram {
    counts: Box<[u64]>,
    count: u64,
    sum: u128,
    min: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Histogram")
            .field("count", &self.count)
            .field("min", &self.min)
            .field("max", &self.max)
            .finish()
    }
}

/// Percentiles of a histogram, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub samples: u64,
    pub min_ns: u64,
    pub mean_ns: u64,
    pub p50_ns: u64,
    pub p90_ns: u64,
    pub p99_ns: u64,
    pub p999_ns: u64,
    pub max_ns: u64,
}

fn index(value: u64) -> usize {
    if value < EXACT_MAX {
        return value as usize;
    }
    let exponent = 63 - u64::from(value.leading_zeros()); // >= 8
    let shift = exponent - 7;
    let mantissa = value >> shift; // in [128, 256)
    (EXACT_MAX + (shift - 1) * SUB_BUCKETS + (mantissa - SUB_BUCKETS)) as usize
}

/// The largest value that falls in bucket `index`.
fn bucket_high(index: usize) -> u64 {
    let index = index as u64;
    if index < EXACT_MAX {
        return index;
    }
    let shift = (index - EXACT_MAX) / SUB_BUCKETS + 1;
    let mantissa = (index - EXACT_MAX) % SUB_BUCKETS + SUB_BUCKETS;
    ((mantissa + 1) << shift) - 1
}

impl Histogram {
    pub fn new() -> Histogram {
        Histogram {
            counts: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            sum: 0,
            min: u64::MAX,
            max: 0,
        }
    }

    pub fn record(&mut self, value_ns: u64) {
        let value = value_ns.min(VALUE_MAX);
        self.counts[index(value)] += 1;
        self.count += 1;
        self.sum += u128::from(value);
        self.min = self.min.min(value);
        self.max = self.max.max(value);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (mine, theirs) in self.counts.iter_mut().zip(other.counts.iter()) {
            *mine += theirs;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.min = self.min.min(other.min);
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The nearest-rank percentile (`p` in 0..=100): the smallest recorded value such that at
    /// least `p` % of the samples are at or below it, reported as its bucket's upper bound
    /// (never above the largest sample). 0 for an empty histogram.
    pub fn percentile(&self, p: f64) -> u64 {
        if self.count == 0 {
            return 0;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0) * self.count as f64).ceil() as u64;
        let rank = rank.max(1);
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                return bucket_high(i).min(self.max).max(self.min);
            }
        }
        self.max
    }

    pub fn summary(&self) -> Summary {
        Summary {
            samples: self.count,
            min_ns: if self.count == 0 { 0 } else { self.min },
            mean_ns: if self.count == 0 {
                0
            } else {
                (self.sum / u128::from(self.count)) as u64
            },
            p50_ns: self.percentile(50.0),
            p90_ns: self.percentile(90.0),
            p99_ns: self.percentile(99.0),
            p999_ns: self.percentile(99.9),
            max_ns: self.max,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact nearest-rank percentile of a sorted sample.
    fn exact(sorted: &[u64], p: f64) -> u64 {
        let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
        sorted[rank - 1]
    }

    #[test]
    fn buckets_are_contiguous_and_ordered() {
        let mut previous_high = None;
        for i in 0..BUCKETS {
            let high = bucket_high(i);
            if let Some(previous) = previous_high {
                assert!(high > previous, "bucket {i}");
                assert_eq!(index(previous + 1), i, "first value of bucket {i}");
            }
            assert_eq!(index(high), i, "last value of bucket {i}");
            previous_high = Some(high);
        }
        assert_eq!(index(VALUE_MAX), BUCKETS - 1);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::new();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), 50);
        assert_eq!(h.percentile(99.0), 99);
        assert_eq!(h.percentile(100.0), 100);
        assert_eq!(h.percentile(0.0), 1);
        let s = h.summary();
        assert_eq!(
            (s.samples, s.min_ns, s.max_ns, s.mean_ns),
            (100, 1, 100, 50)
        );
    }

    #[test]
    fn large_values_within_one_part_in_128() {
        // A spread of latencies from 1 µs to 50 ms (a deterministic pseudo-random walk).
        let mut values = Vec::new();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut h = Histogram::new();
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = 1_000 + x % 50_000_000;
            values.push(v);
            h.record(v);
        }
        values.sort_unstable();
        for p in [1.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            let truth = exact(&values, p);
            let got = h.percentile(p);
            assert!(got >= truth, "p{p}: {got} < {truth}");
            assert!(got - truth <= truth / 128, "p{p}: {got} vs {truth}");
        }
        assert_eq!(h.percentile(100.0), *values.last().unwrap());
    }

    #[test]
    fn merge_equals_recording_together() {
        let (mut a, mut b, mut both) = (Histogram::new(), Histogram::new(), Histogram::new());
        for v in [5, 900, 70_000, 3_000_000] {
            a.record(v);
            both.record(v);
        }
        for v in [1, 450, 12_345_678] {
            b.record(v);
            both.record(v);
        }
        a.merge(&b);
        assert_eq!(a.summary(), both.summary());
    }

    #[test]
    fn empty_and_clamped() {
        let h = Histogram::new();
        assert_eq!(h.percentile(99.0), 0);
        assert_eq!(h.summary().min_ns, 0);
        let mut h = Histogram::new();
        h.record(u64::MAX);
        assert_eq!(h.percentile(50.0), VALUE_MAX);
    }
}
