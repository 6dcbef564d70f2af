//! The uplink's capacity found from its delay under load (`bandwidth.capacity 'auto'`), in the
//! spirit of cake-autorate (github.com/lynxthecat/cake-autorate, whose defaults these follow):
//! round trips to a few reflectors on the internet are measured while the uplink carries load;
//! a baseline follows the shortest of them (down fast, up very slowly, so a queue never becomes
//! the baseline); when enough recent round trips sit well above the baseline the modem's queue
//! is filling, so the capacity is below what is being sent: the estimate drops at once to a
//! fraction of what the uplink achieved. While the uplink runs near the estimate and the delay
//! stays clean, the estimate creeps up, so a link that got faster is found again.
//!
//! Why delay and not throughput alone: a saturated link's throughput *is* its capacity, but
//! throughput below the estimate says nothing (the household may simply not be sending); only a
//! queue that grows tells that the estimate is above the link. Why round trips to reflectors
//! rather than the household's TCP round trips from conntrack: conntrack holds no timing, and
//! the kernel's per-socket RTT exists only for the router's own sockets.
//!
//! Without a starting capacity (no `upload_mbps`, no SQM), the estimate stays unknown until the
//! first queue is seen under load: a link that is never filled needs no management, and the
//! rate the link achieved while its queue grew is the best measurement of it there is.
//!
//! Pure: times and samples come in as plain numbers; `probe` does the I/O.

use std::collections::VecDeque;

/// Tuning, in the units cake-autorate uses (its README and defaults).
#[derive(Clone, Debug, PartialEq)]
pub struct Params {
    /// The estimate never goes below / above these.
    pub min_bps: u64,
    pub max_bps: u64,
    /// A round trip this far above the baseline is a delayed sample.
    pub delay_thr_ms: f64,
    /// Bufferbloat: at least `detect_thr` delayed samples among the last `window`.
    pub window: usize,
    pub detect_thr: usize,
    /// On bufferbloat: estimate = min(achieved, estimate) × this.
    pub down_factor: f64,
    /// Under high load with clean delay: estimate × this, at most once per `up_every_s`.
    pub up_factor: f64,
    pub up_every_s: f64,
    /// After a decrease, no other decrease for this long (the window must refill with samples
    /// taken after the change).
    pub down_refractory_s: f64,
    /// High load: achieved ≥ this share of the estimate.
    pub high_load_pct: f64,
    /// Below this achieved rate the uplink is idle: no probes.
    pub idle_bps: u64,
    /// Baseline EWMA factors: towards a higher sample / a lower sample.
    pub alpha_up: f64,
    pub alpha_down: f64,
}

impl Default for Params {
    fn default() -> Params {
        Params {
            min_bps: 1_000_000,
            max_bps: 1_000_000_000,
            delay_thr_ms: 15.0,
            window: 6,
            detect_thr: 2,
            down_factor: 0.85,
            up_factor: 1.02,
            up_every_s: 1.0,
            down_refractory_s: 1.0,
            high_load_pct: 75.0,
            idle_bps: 500_000,
            alpha_up: 0.001,
            alpha_down: 0.9,
        }
    }
}

/// Why the estimate last changed, for the log and the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The modem's queue grew under load: lowered.
    Bufferbloat,
    /// The link ran near the estimate with clean delay: raised.
    Raised,
    /// First found (no starting capacity): the rate achieved while the queue grew.
    Found,
}

#[derive(Clone, Debug)]
pub struct Estimator {
    params: Params,
    estimate: Option<u64>,
    baseline_ms: Option<f64>,
    /// The last `window` samples: delayed or not.
    recent: VecDeque<bool>,
    last_down: Option<f64>,
    last_up: Option<f64>,
}

impl Estimator {
    /// `start`: `upload_mbps` or SQM's upload when they exist.
    pub fn new(params: Params, start: Option<u64>) -> Estimator {
        let estimate = start.map(|s| s.clamp(params.min_bps, params.max_bps));
        Estimator {
            recent: VecDeque::with_capacity(params.window),
            params,
            estimate,
            baseline_ms: None,
            last_down: None,
            last_up: None,
        }
    }

    /// The capacity estimate, bit/s; `None` until known.
    pub fn estimate(&self) -> Option<u64> {
        self.estimate
    }

    /// The baseline round trip, ms.
    pub fn baseline_ms(&self) -> Option<f64> {
        self.baseline_ms
    }

    /// Whether probes should run now: only while the uplink carries load. Probes to an idle
    /// link would measure nothing and cost the reflectors for nothing.
    pub fn wants_probes(&self, achieved_bps: u64) -> bool {
        achieved_bps >= self.params.idle_bps
    }

    /// One round trip measured. Non-finite or negative samples are ignored.
    pub fn on_rtt(&mut self, rtt_ms: f64) {
        if !rtt_ms.is_finite() || rtt_ms < 0.0 {
            return;
        }
        let p = &self.params;
        let base = match self.baseline_ms {
            None => rtt_ms,
            Some(b) if rtt_ms < b => b + p.alpha_down * (rtt_ms - b),
            Some(b) => b + p.alpha_up * (rtt_ms - b),
        };
        self.baseline_ms = Some(base);
        if self.recent.len() == p.window.max(1) {
            self.recent.pop_front();
        }
        self.recent.push_back(rtt_ms - base > p.delay_thr_ms);
    }

    fn bloated(&self) -> bool {
        self.recent.iter().filter(|d| **d).count() >= self.params.detect_thr.max(1)
    }

    /// The uplink's achieved rate at `now` (seconds, monotonic); returns what changed, if
    /// anything.
    pub fn on_rate(&mut self, now: f64, achieved_bps: u64) -> Option<Change> {
        let p = self.params.clone();
        if !self.wants_probes(achieved_bps) {
            // Idle: nothing is measured, the estimate stays as it is.
            self.recent.clear();
            return None;
        }
        if self.bloated() {
            if self
                .last_down
                .is_some_and(|t| now - t < p.down_refractory_s)
            {
                return None;
            }
            let (next, change) = match self.estimate {
                Some(e) => (
                    (achieved_bps.min(e) as f64 * p.down_factor) as u64,
                    Change::Bufferbloat,
                ),
                // The link was full: what it carried is what it can carry.
                None => (achieved_bps, Change::Found),
            };
            self.estimate = Some(next.clamp(p.min_bps, p.max_bps));
            self.last_down = Some(now);
            self.recent.clear();
            return Some(change);
        }
        let e = self.estimate?;
        let high = achieved_bps as f64 >= e as f64 * p.high_load_pct / 100.0;
        // Raise only on a clean window: a delayed sample that is not yet bufferbloat is still
        // no reason to believe in more.
        let clean = !self.recent.is_empty() && self.recent.iter().all(|d| !*d);
        let settled = self
            .last_down
            .is_none_or(|t| now - t >= p.down_refractory_s);
        if high && clean && settled && self.last_up.is_none_or(|t| now - t >= p.up_every_s) {
            let next = ((e as f64 * p.up_factor) as u64).clamp(p.min_bps, p.max_bps);
            self.last_up = Some(now);
            if next != e {
                self.estimate = Some(next);
                return Some(Change::Raised);
            }
        }
        None
    }
}

/// Probe traffic, for the README and `check`: one probe of `size` bytes (IP + ICMP headers
/// included) and its echo, every `interval_s` to each of `reflectors`: bytes per minute on the
/// uplink and the downlink together.
pub fn probe_bytes_per_minute(size: u64, interval_s: f64, reflectors: u64) -> u64 {
    if interval_s <= 0.0 {
        return 0;
    }
    (2.0 * size as f64 * reflectors as f64 * 60.0 / interval_s) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: u64 = 1_000_000;

    /// Feeds `secs` seconds of 5 probes a second at `rtt`, with the uplink at `rate`.
    fn run(e: &mut Estimator, from: f64, secs: u32, rate: u64, rtt: f64) -> Vec<Change> {
        let mut out = Vec::new();
        for i in 0..secs * 5 {
            e.on_rtt(rtt);
            if let Some(c) = e.on_rate(from + i as f64 * 0.2, rate) {
                out.push(c);
            }
        }
        out
    }

    #[test]
    fn a_filling_queue_lowers_the_estimate_at_once() {
        let mut e = Estimator::new(Params::default(), Some(20 * M));
        run(&mut e, 0.0, 5, 18 * M, 10.0);
        assert!(
            e.estimate().unwrap() >= 20 * M,
            "high load, clean delay: held or raised"
        );
        // The link drops to 10: the uplink carries 10 and the queue grows (RTT 60 ms).
        let changes = run(&mut e, 5.0, 1, 10 * M, 60.0);
        assert_eq!(changes.first(), Some(&Change::Bufferbloat));
        assert_eq!(e.estimate(), Some(8_500_000), "0.85 × the achieved 10");
        // The baseline did not follow the queue.
        assert!(e.baseline_ms().unwrap() < 11.0);
    }

    #[test]
    fn clean_load_raises_slowly_and_never_past_the_max() {
        let mut e = Estimator::new(Params::default(), Some(10 * M));
        let changes = run(&mut e, 0.0, 10, 9 * M, 10.0);
        assert!(changes.iter().all(|c| *c == Change::Raised));
        // At most 2 % a second: 10 s → about +22 %.
        let est = e.estimate().unwrap();
        assert!(est > 10 * M && est < 12_300_000, "{est}");
        let p = Params {
            max_bps: 10_500_000,
            ..Params::default()
        };
        let mut e = Estimator::new(p, Some(10 * M));
        run(&mut e, 0.0, 30, 10 * M, 10.0);
        assert_eq!(e.estimate(), Some(10_500_000));
    }

    #[test]
    fn low_load_or_idle_changes_nothing_and_wants_no_probes() {
        let mut e = Estimator::new(Params::default(), Some(20 * M));
        // Half the estimate: not high load, nothing to learn.
        assert!(run(&mut e, 0.0, 10, 10 * M, 10.0).is_empty());
        assert_eq!(e.estimate(), Some(20 * M));
        assert!(!e.wants_probes(100_000));
        assert!(e.wants_probes(5 * M));
        // Delayed samples while idle (someone else's queue) never lower it.
        assert!(run(&mut e, 10.0, 5, 100_000, 80.0).is_empty());
        assert_eq!(e.estimate(), Some(20 * M));
    }

    #[test]
    fn unknown_until_the_link_is_seen_full() {
        let mut e = Estimator::new(Params::default(), None);
        assert!(run(&mut e, 0.0, 10, 12 * M, 10.0).is_empty());
        assert_eq!(e.estimate(), None, "a link never filled needs no estimate");
        let changes = run(&mut e, 10.0, 1, 14 * M, 70.0);
        assert_eq!(changes.first(), Some(&Change::Found));
        assert_eq!(e.estimate(), Some(14 * M));
    }

    #[test]
    fn follows_a_link_that_steps_down_and_up_again() {
        // 20 → 10 → 20 Mbit/s. The sender keeps the uplink at the estimate × 0.9 (the budget),
        // capped by the link; the queue grows whenever the sender is above the link.
        let mut e = Estimator::new(Params::default(), Some(20 * M));
        let mut t = 0.0;
        let mut at = |e: &mut Estimator, link: u64, secs: u32| {
            for _ in 0..secs * 5 {
                let send = (e.estimate().unwrap() as f64 * 0.9) as u64;
                let rtt = if send > link { 80.0 } else { 10.0 };
                e.on_rtt(rtt);
                e.on_rate(t, send.min(link));
                t += 0.2;
            }
            e.estimate().unwrap()
        };
        // Sending 90 % of the estimate on a 20 Mbit/s link: the estimate settles near the
        // link (rises on clean load, falls back when it overshoots and the queue grows).
        let est = at(&mut e, 20 * M, 10);
        assert!((17 * M..=23 * M).contains(&est), "{est}");
        // Within 10 s of the drop the estimate is at or under the link.
        let est = at(&mut e, 10 * M, 10);
        assert!(est * 9 / 10 <= 10 * M, "{est}");
        assert!(est >= 6 * M, "not collapsed: {est}");
        // Back to 20: climbs back, 2 % a second (capped by the queue if it overshoots).
        let est = at(&mut e, 20 * M, 40);
        assert!(est >= 16 * M, "{est}");
    }

    #[test]
    fn bad_samples_are_ignored_and_memory_is_bounded() {
        let mut e = Estimator::new(Params::default(), Some(20 * M));
        for x in [f64::NAN, f64::INFINITY, -1.0] {
            e.on_rtt(x);
        }
        assert_eq!(e.baseline_ms(), None);
        for _ in 0..10_000 {
            e.on_rtt(10.0);
        }
        assert!(e.recent.len() <= Params::default().window);
    }

    #[test]
    fn probe_traffic_is_small() {
        // 84-byte ICMP echoes (20 IP + 8 ICMP + 56 payload), 5 a second to one reflector at a
        // time: 50 kB a minute both ways, only while the uplink carries load.
        assert_eq!(probe_bytes_per_minute(84, 0.2, 1), 50_400);
        assert_eq!(probe_bytes_per_minute(84, 0.0, 1), 0);
    }
}
