//! Reconnect delays: exponential backoff with "equal jitter" from a seeded RNG.
//!
//! Equal jitter (half fixed, half random) keeps a floor under each delay, so a flapping broker
//! is not hammered, while still spreading many clients apart. The RNG is ChaCha8 seeded from
//! the options, so a simulation with one seed waits exactly the same times on every run.

use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::options::ReconnectOptions;

pub struct Backoff {
    min: Duration,
    max: Duration,
    /// Consecutive failures since the last successful connection.
    failures: u32,
    rng: ChaCha8Rng,
}

impl Backoff {
    pub fn new(options: &ReconnectOptions) -> Backoff {
        let min = options.min_delay.max(Duration::from_millis(1));
        Backoff {
            min,
            max: options.max_delay.max(min),
            failures: 0,
            rng: ChaCha8Rng::seed_from_u64(options.seed),
        }
    }

    /// The delay before the next attempt; grows with each call until `reset`.
    pub fn next_delay(&mut self) -> Duration {
        // 2^failures, saturating well before overflow (2^20 × min exceeds any sane max).
        let factor = 1u32 << self.failures.min(20);
        self.failures = self.failures.saturating_add(1);
        let ceiling = self.min.saturating_mul(factor).min(self.max);
        let half = ceiling / 2;
        let jitter_nanos = self.rng.random_range(0..=half.as_nanos() as u64);
        (half + Duration::from_nanos(jitter_nanos)).max(self.min.min(ceiling))
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// After a successful connection the next loss starts from the minimum delay again.
    pub fn reset(&mut self) {
        self.failures = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(seed: u64) -> ReconnectOptions {
        ReconnectOptions {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(2),
            seed,
            max_attempts: None,
        }
    }

    #[test]
    fn grows_exponentially_within_bounds_and_resets() {
        let mut backoff = Backoff::new(&options(7));
        let delays: Vec<Duration> = (0..10).map(|_| backoff.next_delay()).collect();
        for (i, d) in delays.iter().enumerate() {
            let ceiling = (Duration::from_millis(100) * (1 << i)).min(Duration::from_secs(2));
            assert!(*d <= ceiling, "delay {i} = {d:?} above {ceiling:?}");
            assert!(
                *d >= Duration::from_millis(100),
                "delay {i} = {d:?} below min"
            );
            assert!(
                *d >= ceiling / 2,
                "delay {i} = {d:?} below half the ceiling"
            );
        }
        assert!(delays[9] >= Duration::from_secs(1));
        backoff.reset();
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let run = |seed| {
            let mut b = Backoff::new(&options(seed));
            (0..8).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(1), run(1));
        assert_ne!(run(1), run(2));
    }
}
