//! Requests accepted per short window of a run's measurement, and what that shows:
//! the stalls a run's percentiles blur together.
//!
//! Why (issue 13, twenty-fourth round): at 10,000 req/s every stable checkpoint held
//! the group back for 40-70 ms about once every 1.3 s. The run's p99 showed it only
//! as "high", the Prometheus rates (one-second samples) not at all; sampling a
//! replica's counters by hand found it. A load generator that counts acceptances per
//! 100 ms window sees such a stall as one window far below its neighbours.

use serde::Serialize;
use std::time::Duration;

/// The window the benchmark counts in: short enough that a stall of tens of
/// milliseconds empties a good part of one, long enough to hold hundreds of requests
/// at the rates that matter.
pub const WINDOW: Duration = Duration::from_millis(100);

/// At most this many windows are kept (a run of about 28 hours at 100 ms); a longer
/// run counts its first ones.
pub const MAX_WINDOWS: usize = 1_000_000;

/// Requests accepted in each full window from the start of the measurement.
#[derive(Clone, Debug)]
pub struct Timeline {
    window: Duration,
    counts: Vec<u32>,
}

impl Timeline {
    /// The full windows of `window` inside `span` (a partial last window is left
    /// out, so that it does not read as a stall), at most [`MAX_WINDOWS`].
    ///
    /// # Panics
    /// If `window` is zero (a bug of the caller).
    #[must_use]
    pub fn new(window: Duration, span: Duration) -> Self {
        assert!(!window.is_zero(), "a timeline's window must not be empty");
        let full = span.as_nanos() / window.as_nanos();
        let len = usize::try_from(full).unwrap_or(usize::MAX).min(MAX_WINDOWS);
        Self {
            window,
            counts: vec![0; len],
        }
    }

    /// One request accepted `since` the start of the measurement; outside every
    /// full window, it is not counted.
    pub fn record(&mut self, since: Duration) {
        let index = since.as_nanos() / self.window.as_nanos();
        if let Some(c) = usize::try_from(index)
            .ok()
            .and_then(|i| self.counts.get_mut(i))
        {
            *c = c.saturating_add(1);
        }
    }

    #[must_use]
    pub fn counts(&self) -> &[u32] {
        &self.counts
    }

    /// The windows' median (the upper one of an even count), the lowest and when it
    /// began, and how many fell below half the median (`None` without a full
    /// window). The count is relative to the median: a run stalled more than half
    /// the time has a low median, and counts few.
    #[must_use]
    pub fn summary(&self) -> Option<Windows> {
        let (lowest_index, &lowest) = self
            .counts
            .iter()
            .enumerate()
            .min_by_key(|&(i, c)| (*c, i))?;
        let mut sorted = self.counts.clone();
        sorted.sort_unstable();
        let median = sorted[sorted.len() / 2];
        let below_half_median = self
            .counts
            .iter()
            .filter(|&&c| u64::from(c) * 2 < u64::from(median))
            .count();
        Some(Windows {
            window_ms: u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX),
            windows: self.counts.len(),
            median,
            lowest,
            lowest_at_s: u32::try_from(lowest_index)
                .ok()
                .and_then(|i| self.window.checked_mul(i))
                .map_or(f64::MAX, |at| at.as_secs_f64()),
            below_half_median,
        })
    }
}

/// A run's windows in brief, as the SUMMARY and the JSON give them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Windows {
    pub window_ms: u64,
    /// Full windows in the measurement.
    pub windows: usize,
    /// Requests accepted in the median window (the upper one of an even count).
    pub median: u32,
    /// In the window with the fewest (the earliest of those), and when it began,
    /// in seconds from the start of the measurement.
    pub lowest: u32,
    pub lowest_at_s: f64,
    /// Windows with fewer than half the median: the run's stalls, next to a run that
    /// mostly flowed.
    pub below_half_median: usize,
}

/// A second of [`WINDOW`]s of 100 accepted requests each, but 30 in the fourth: a
/// run with one stall, for this module's tests and the report's.
#[cfg(test)]
pub(crate) fn stalled_once() -> Timeline {
    let mut t = Timeline::new(WINDOW, Duration::from_secs(1));
    for w in 0..10u64 {
        for i in 0..if w == 3 { 30 } else { 100 } {
            t.record(Duration::from_millis(w * 100) + Duration::from_micros(i * 900));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_stall_shows_as_the_lowest_window_and_is_counted() {
        let t = stalled_once();
        assert_eq!(t.counts()[3], 30);
        let s = t.summary().unwrap();
        assert_eq!(s.windows, 10);
        assert_eq!(s.median, 100);
        assert_eq!(s.lowest, 30);
        assert_eq!(s.lowest_at_s, 0.3);
        assert_eq!(s.below_half_median, 1);
        assert_eq!(s.window_ms, 100);
    }

    #[test]
    fn a_partial_last_window_and_late_requests_are_left_out() {
        let mut t = Timeline::new(WINDOW, ms(250));
        assert_eq!(t.counts().len(), 2);
        t.record(ms(50));
        t.record(ms(199));
        t.record(ms(200)); // the partial third window
        t.record(ms(10_000));
        assert_eq!(t.counts(), &[1, 1]);
    }

    #[test]
    fn no_full_window_gives_no_summary_and_the_count_is_bounded() {
        assert!(Timeline::new(WINDOW, ms(99)).summary().is_none());
        let long = Timeline::new(Duration::from_nanos(1), Duration::from_secs(3600));
        assert_eq!(long.counts().len(), MAX_WINDOWS);
    }
}
