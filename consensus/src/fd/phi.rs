//! The φ accrual failure detector (Hayashibara, Défago, Yared & Katayama, SRDS 2004).
//!
//! Instead of a yes/no verdict it outputs φ = -log10(P(a heartbeat arrives later
//! than now)), from the distribution of recent inter-arrival times, modelled as a
//! normal distribution. φ = 1 means a 10% chance the peer is merely late, φ = 8 one
//! in 10^8. Applications pick a threshold; φ adapts to the network's own jitter,
//! so a jittery link needs a longer silence before φ climbs.

use std::collections::VecDeque;
use std::time::Duration;

/// Inter-arrival history of one peer's heartbeats.
#[derive(Clone, Debug)]
pub struct PhiAccrual {
    intervals: VecDeque<f64>,
    capacity: usize,
    sum: f64,
    sum_sq: f64,
    last_arrival: Duration,
    /// Floor on the standard deviation (ms): without one, a perfectly regular
    /// history would make φ explode at the first millisecond of lateness.
    min_std_dev_ms: f64,
}

impl PhiAccrual {
    /// Start at `now`, seeded with the expected interval so φ is meaningful before
    /// the first samples (as if two heartbeats had arrived on schedule).
    #[must_use]
    pub fn new(now: Duration, expected_interval: Duration, capacity: usize) -> Self {
        let mean = expected_interval.as_secs_f64() * 1000.0;
        let mut d = Self {
            intervals: VecDeque::with_capacity(capacity.max(2)),
            capacity: capacity.max(2),
            sum: 0.0,
            sum_sq: 0.0,
            last_arrival: now,
            min_std_dev_ms: (mean / 4.0).max(1.0),
        };
        d.push(mean - mean / 4.0);
        d.push(mean + mean / 4.0);
        d
    }

    fn push(&mut self, interval_ms: f64) {
        if self.intervals.len() == self.capacity {
            if let Some(old) = self.intervals.pop_front() {
                self.sum -= old;
                self.sum_sq -= old * old;
            }
        }
        self.intervals.push_back(interval_ms);
        self.sum += interval_ms;
        self.sum_sq += interval_ms * interval_ms;
    }

    /// A heartbeat arrived at `now`.
    pub fn heartbeat(&mut self, now: Duration) {
        if now <= self.last_arrival {
            return;
        }
        let interval = (now - self.last_arrival).as_secs_f64() * 1000.0;
        self.last_arrival = now;
        self.push(interval);
    }

    #[must_use]
    pub fn mean_ms(&self) -> f64 {
        self.sum / self.intervals.len() as f64
    }

    #[must_use]
    pub fn std_dev_ms(&self) -> f64 {
        let n = self.intervals.len() as f64;
        let mean = self.mean_ms();
        let variance = (self.sum_sq / n - mean * mean).max(0.0);
        variance.sqrt().max(self.min_std_dev_ms)
    }

    /// φ at `now`. Finite for any input (capped at [`PHI_MAX`]).
    #[must_use]
    pub fn phi(&self, now: Duration) -> f64 {
        let elapsed = now.saturating_sub(self.last_arrival).as_secs_f64() * 1000.0;
        phi_of(elapsed, self.mean_ms(), self.std_dev_ms())
    }
}

/// The largest φ reported: P(late) below 10^-300 is "certainly gone".
pub const PHI_MAX: f64 = 300.0;

/// φ for `elapsed` ms of silence, with the normal CDF approximated by the logistic
/// function 1 / (1 + e^(-y(1.5976 + 0.070566 y²))) (Bowling et al. 2009, max error
/// 1.4e-4). The tail is computed on whichever side keeps precision.
#[must_use]
pub fn phi_of(elapsed_ms: f64, mean_ms: f64, std_dev_ms: f64) -> f64 {
    let y = (elapsed_ms - mean_ms) / std_dev_ms;
    let e = (-y * (1.5976 + 0.070_566 * y * y)).exp();
    let p_later = if elapsed_ms > mean_ms {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    if p_later <= 0.0 || !p_later.is_finite() {
        return PHI_MAX;
    }
    (-p_later.log10()).clamp(0.0, PHI_MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn phi_grows_with_silence() {
        let mut d = PhiAccrual::new(Duration::ZERO, 100 * MS, 100);
        let mut now = Duration::ZERO;
        for _ in 0..50 {
            now += 100 * MS;
            d.heartbeat(now);
        }
        let on_time = d.phi(now + 50 * MS);
        let late = d.phi(now + 200 * MS);
        let gone = d.phi(now + 2000 * MS);
        assert!(on_time < 1.0, "{on_time}");
        assert!(late > on_time && gone > late, "{on_time} {late} {gone}");
        assert!(gone > 8.0, "{gone}");
        assert!(gone <= PHI_MAX);
    }

    #[test]
    fn jitter_widens_the_distribution_and_lowers_phi() {
        let mut steady = PhiAccrual::new(Duration::ZERO, 100 * MS, 100);
        let mut jittery = PhiAccrual::new(Duration::ZERO, 100 * MS, 100);
        let (mut a, mut b) = (Duration::ZERO, Duration::ZERO);
        for i in 0..100u64 {
            a += 100 * MS;
            steady.heartbeat(a);
            b += if i % 2 == 0 { 40 * MS } else { 160 * MS };
            jittery.heartbeat(b);
        }
        assert!(jittery.std_dev_ms() > steady.std_dev_ms());
        assert!(jittery.phi(b + 250 * MS) < steady.phi(a + 250 * MS));
    }

    #[test]
    fn the_window_forgets_old_intervals() {
        let mut d = PhiAccrual::new(Duration::ZERO, 100 * MS, 10);
        let mut now = Duration::ZERO;
        for _ in 0..10 {
            now += 1000 * MS;
            d.heartbeat(now);
        }
        assert!((d.mean_ms() - 1000.0).abs() < 1e-6);
        for _ in 0..10 {
            now += 10 * MS;
            d.heartbeat(now);
        }
        assert!((d.mean_ms() - 10.0).abs() < 1e-6, "{}", d.mean_ms());
    }

    #[test]
    fn phi_is_finite_and_monotone_over_a_wide_range() {
        let mut last = 0.0;
        for ms in (0..100_000).step_by(7) {
            let p = phi_of(f64::from(ms), 100.0, 25.0);
            assert!(p.is_finite() && p >= last - 1e-9, "{ms}: {p} < {last}");
            last = p;
        }
        assert!(last == PHI_MAX);
    }
}
