//! Per-viewer measured bandwidth: rings of cumulative byte counters, sampled once per tick,
//! turned into 1/5/10-minute averages for the status file.
//!
//! Counters come from the kernel (the viewer's tc class, or conntrack) and can go backwards:
//! nlbwmon zeroes conntrack counters and an interface restart zeroes tc. A decrease is taken
//! as a reset to zero, so the figures stay right instead of spiking.

use std::collections::HashMap;
use std::net::IpAddr;

use crate::status::Averages;

/// How much history a ring keeps, and how long an unseen viewer is remembered, in seconds.
pub const HISTORY_SECS: f64 = 600.0;

/// A fixed-size ring of `(monotonic seconds, cumulative bytes)` samples covering 10 minutes at
/// the configured interval. Memory is fixed at creation, independent of uptime.
#[derive(Clone, Debug)]
pub struct RateRing {
    /// `(t, total)`: `total` is the byte count since the ring began, resets folded in.
    samples: Vec<(f64, u64)>,
    /// Index of the oldest sample.
    head: usize,
    len: usize,
    interval: f64,
    last_raw: Option<u64>,
    total: u64,
}

impl RateRing {
    /// A ring for samples every `interval_secs` (clamped to at least 1 s).
    pub fn new(interval_secs: u32) -> RateRing {
        let interval = f64::from(interval_secs.max(1));
        // One sample per interval over the history, the window's start sample, and one spare
        // for ticks that come a little early.
        let capacity = (HISTORY_SECS / interval).ceil() as usize + 2;
        RateRing {
            samples: vec![(0.0, 0); capacity],
            head: 0,
            len: 0,
            interval,
            last_raw: None,
            total: 0,
        }
    }

    /// Number of samples the ring can hold.
    pub fn capacity(&self) -> usize {
        self.samples.len()
    }

    /// Number of samples held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Records the cumulative `counter` seen at monotonic time `t` (seconds). A counter lower
    /// than the previous one means it was reset to zero. A sample not later than the newest
    /// one is ignored (a clock that went backwards must not produce negative rates).
    pub fn push(&mut self, t: f64, counter: u64) {
        if !t.is_finite() {
            return;
        }
        if let Some((last_t, _)) = self.newest() {
            if t <= last_t {
                return;
            }
        }
        let delta = match self.last_raw {
            Some(prev) if counter >= prev => counter - prev,
            Some(_) => counter,
            // The first sample is the baseline: what was counted before is not ours to rate.
            None => 0,
        };
        self.last_raw = Some(counter);
        self.total = self.total.wrapping_add(delta);
        let cap = self.samples.len();
        if self.len < cap {
            self.samples[(self.head + self.len) % cap] = (t, self.total);
            self.len += 1;
        } else {
            self.samples[self.head] = (t, self.total);
            self.head = (self.head + 1) % cap;
        }
    }

    fn get(&self, i: usize) -> (f64, u64) {
        self.samples[(self.head + i) % self.samples.len()]
    }

    fn newest(&self) -> Option<(f64, u64)> {
        self.len.checked_sub(1).map(|i| self.get(i))
    }

    /// Bits per second between two samples (0 when they are the same instant).
    fn rate(from: (f64, u64), to: (f64, u64)) -> u64 {
        let dt = to.0 - from.0;
        if dt <= 0.0 {
            return 0;
        }
        let bytes = to.1.wrapping_sub(from.1);
        // f64 → u64 saturates; a u64 of bytes times 8 would not fit in u64.
        (bytes as f64 * 8.0 / dt).round() as u64
    }

    /// Average bits/s over the last `window` seconds before `now`, from the oldest sample
    /// inside the window (half an interval of slack for tick jitter) to the newest one; a ring
    /// younger than the window uses all it has. 0 with fewer than two samples.
    pub fn average(&self, now: f64, window: f64) -> u64 {
        let Some(newest) = self.newest() else {
            return 0;
        };
        let start = now - window - self.interval / 2.0;
        let oldest_in = (0..self.len)
            .map(|i| self.get(i))
            .find(|(t, _)| *t >= start)
            .unwrap_or(newest);
        Self::rate(oldest_in, newest)
    }

    /// The 1, 5 and 10-minute averages in bits/s.
    pub fn averages(&self, now: f64) -> Averages {
        Averages {
            m1: self.average(now, 60.0),
            m5: self.average(now, 300.0),
            m10: self.average(now, 600.0),
        }
    }

    /// Bits/s over the last sample interval.
    pub fn current(&self) -> u64 {
        match self.len {
            0 | 1 => 0,
            n => Self::rate(self.get(n - 2), self.get(n - 1)),
        }
    }
}

#[derive(Clone, Debug)]
struct Entry {
    ring: RateRing,
    last_seen: f64,
}

/// Measured bandwidth per viewer address.
#[derive(Clone, Debug)]
pub struct Monitor {
    interval: u32,
    viewers: HashMap<IpAddr, Entry>,
}

impl Monitor {
    /// A monitor for ticks every `interval_secs`.
    pub fn new(interval_secs: u32) -> Monitor {
        Monitor {
            interval: interval_secs,
            viewers: HashMap::new(),
        }
    }

    /// Records this tick's cumulative byte counter per address and forgets addresses unseen
    /// for 10 minutes.
    pub fn update(&mut self, now: f64, counters: &HashMap<IpAddr, u64>) {
        for (ip, counter) in counters {
            let interval = self.interval;
            let e = self.viewers.entry(*ip).or_insert_with(|| Entry {
                ring: RateRing::new(interval),
                last_seen: now,
            });
            e.ring.push(now, *counter);
            e.last_seen = now;
        }
        self.viewers.retain(|_, e| now - e.last_seen < HISTORY_SECS);
    }

    /// The ring of one address, if it was seen in the last 10 minutes.
    pub fn get(&self, ip: &IpAddr) -> Option<&RateRing> {
        self.viewers.get(ip).map(|e| &e.ring)
    }

    /// The averages of one address; zeros when unknown.
    pub fn averages(&self, ip: &IpAddr, now: f64) -> Averages {
        self.get(ip).map(|r| r.averages(now)).unwrap_or_default()
    }

    /// Number of addresses remembered.
    pub fn len(&self) -> usize {
        self.viewers.len()
    }

    /// True when no address is remembered.
    pub fn is_empty(&self) -> bool {
        self.viewers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MB: u64 = 1_000_000;

    /// Feeds `bytes_per_tick` for `ticks` ticks of `interval` seconds starting at `t0`.
    fn feed(ring: &mut RateRing, t0: f64, start: u64, interval: f64, ticks: u32, per: u64) -> u64 {
        let mut c = start;
        for i in 0..ticks {
            c += per;
            ring.push(t0 + interval * f64::from(i + 1), c);
        }
        c
    }

    #[test]
    fn capacity_is_fixed_by_interval() {
        assert_eq!(RateRing::new(5).capacity(), 122);
        assert_eq!(RateRing::new(1).capacity(), 602);
        assert_eq!(RateRing::new(0).capacity(), 602);
        assert_eq!(RateRing::new(300).capacity(), 4);
        assert_eq!(RateRing::new(7).capacity(), 88);
        let mut r = RateRing::new(5);
        for i in 0..10_000u64 {
            r.push(i as f64 * 5.0, i * 1000);
        }
        assert_eq!(r.len(), r.capacity(), "memory stays bounded");
        assert_eq!(r.samples.len(), 122);
    }

    #[test]
    fn steady_rate() {
        let mut r = RateRing::new(5);
        r.push(0.0, 0);
        // 625 kB every 5 s = 1 Mbit/s.
        feed(&mut r, 0.0, 0, 5.0, 200, 625_000);
        let a = r.averages(1000.0);
        assert_eq!(
            a,
            Averages {
                m1: MB,
                m5: MB,
                m10: MB
            }
        );
        assert_eq!(r.current(), MB);
    }

    #[test]
    fn young_ring_uses_what_it_has() {
        let mut r = RateRing::new(5);
        assert_eq!(r.averages(0.0), Averages::default());
        r.push(100.0, 5_000_000);
        assert_eq!(
            r.averages(100.0),
            Averages::default(),
            "one sample: no rate"
        );
        assert_eq!(r.current(), 0);
        r.push(105.0, 5_000_000 + 1_250_000);
        let a = r.averages(105.0);
        assert_eq!(
            a,
            Averages {
                m1: 2 * MB,
                m5: 2 * MB,
                m10: 2 * MB
            }
        );
    }

    #[test]
    fn windows_differ_when_the_rate_changes() {
        let mut r = RateRing::new(5);
        r.push(0.0, 0);
        // 8 minutes at 1 Mbit/s, then 2 minutes at 4 Mbit/s.
        let c = feed(&mut r, 0.0, 0, 5.0, 96, 625_000);
        feed(&mut r, 480.0, c, 5.0, 24, 2_500_000);
        let a = r.averages(600.0);
        assert_eq!(a.m1, 4 * MB);
        // 5 min: 3 min at 1 + 2 min at 4 = 11/5 Mbit/s.
        assert_eq!(a.m5, 2_200_000);
        // 10 min: 8 at 1 + 2 at 4 = 16/10.
        assert_eq!(a.m10, 1_600_000);
        assert_eq!(r.current(), 4 * MB);
    }

    #[test]
    fn counter_reset_is_not_a_spike() {
        let mut r = RateRing::new(5);
        r.push(0.0, 10_000_000);
        r.push(5.0, 10_625_000); // +1 Mbit/s
        r.push(10.0, 300_000); // reset (nlbwmon or interface restart): 300 kB since zero
        assert_eq!(r.current(), 480_000);
        r.push(15.0, 925_000);
        assert_eq!(r.current(), MB);
        // 625k + 300k + 625k bytes over 15 s.
        assert_eq!(r.average(15.0, 60.0), 826_667);
    }

    #[test]
    fn reset_to_zero_and_idle() {
        let mut r = RateRing::new(5);
        r.push(0.0, 500);
        r.push(5.0, 0);
        r.push(10.0, 0);
        assert_eq!(r.current(), 0);
        assert_eq!(r.average(10.0, 60.0), 0);
    }

    #[test]
    fn huge_counters_wrap_without_panic() {
        let mut r = RateRing::new(5);
        r.push(0.0, u64::MAX - 1000);
        r.push(5.0, u64::MAX);
        assert_eq!(r.current(), 1600);
        // The hardware counter wrapped: seen as a reset, 3000 bytes since zero.
        r.push(10.0, 3000);
        assert_eq!(r.current(), 4800);
        // The folded total itself wraps around u64 after enough traffic.
        let mut r = RateRing::new(1);
        r.total = u64::MAX - 10;
        r.last_raw = Some(0);
        r.push(1.0, 0);
        r.push(2.0, 100);
        assert_eq!(r.current(), 800);
        assert_eq!(r.average(2.0, 60.0), 800);
    }

    #[test]
    fn time_going_backwards_is_ignored() {
        let mut r = RateRing::new(5);
        r.push(10.0, 0);
        r.push(15.0, 625_000);
        r.push(12.0, 99_999_999);
        r.push(15.0, 99_999_999);
        r.push(f64::NAN, 1);
        assert_eq!(r.len(), 2);
        assert_eq!(r.current(), MB);
    }

    #[test]
    fn jittery_ticks_still_span_the_window() {
        let mut r = RateRing::new(5);
        let mut c = 0;
        let mut t = 0.0;
        r.push(t, c);
        for i in 0..200 {
            // ±0.4 s of jitter, 1 Mbit/s on average.
            let step = if i % 2 == 0 { 5.4 } else { 4.6 };
            t += step;
            c += (step * 125_000.0) as u64;
            r.push(t, c);
        }
        let a = r.averages(t);
        for v in [a.m1, a.m5, a.m10] {
            assert!((990_000..=1_010_000).contains(&v), "{a:?}");
        }
    }

    proptest::proptest! {
        /// Whatever the counters do (growth, resets, huge jumps) and however the ticks jitter,
        /// every average lies between the slowest and the fastest interval, and a ring younger
        /// than 10 minutes reports exactly bytes-since-start over time-since-start.
        #[test]
        fn averages_are_bounded_by_interval_rates(
            // Counters up to 2^56: 150 such steps cannot wrap the ring's u64 byte total (a total
            // that wraps is 2^64 bytes in ten minutes, beyond any link).
            steps in proptest::collection::vec((1u32..20, 0u64..(1u64 << 56), 0u8..10), 1..150),
            interval in 1u32..30,
        ) {
            let mut r = RateRing::new(interval);
            let (mut t, mut raw, mut folded) = (0.0f64, 0u64, 0u64);
            let mut wrapped = false;
            r.push(t, raw);
            let mut rates = Vec::new();
            for (dt, big, kind) in steps {
                t += f64::from(dt);
                let next = match kind {
                    0 => big,                               // anything, reset or jump
                    1 => big % 1000,                        // small after a reset
                    _ => raw.saturating_add(big % 10_000_000),
                };
                let delta = if next >= raw { next - raw } else { next };
                // The ring keeps a wrapping u64 byte total: more than 2^64 bytes (18 EB) inside
                // one window is outside what it measures, so such runs are not judged.
                wrapped |= folded.checked_add(delta).is_none();
                folded = folded.wrapping_add(delta);
                rates.push(delta as f64 * 8.0 / f64::from(dt));
                raw = next;
                r.push(t, raw);
            }
            if wrapped {
                return Ok(());
            }
            // A rate beyond u64 saturates (`rate()`), so the bounds do too.
            let cap = u64::MAX as f64;
            let lo = rates.iter().cloned().fold(f64::INFINITY, f64::min).min(cap);
            let hi = rates.iter().cloned().fold(0.0, f64::max).min(cap);
            let a = r.averages(t);
            for v in [a.m1, a.m5, a.m10, r.current()] {
                let v = v as f64;
                proptest::prop_assert!(v >= lo.floor() - 1.0 && v <= hi.ceil() + 1.0,
                    "{} not in [{}, {}]", v, lo, hi);
            }
            if t <= 600.0 && r.len() < r.capacity() {
                let expect = (folded as f64 * 8.0 / t).round() as u64;
                proptest::prop_assert_eq!(a.m10, expect);
            }
        }
    }

    #[test]
    fn monitor_tracks_and_forgets() {
        let a: IpAddr = "203.0.113.7".parse().unwrap();
        let b: IpAddr = "2001:db8::7".parse().unwrap();
        let mut m = Monitor::new(5);
        let mut now = 0.0;
        let mut ca = 0u64;
        for _ in 0..24 {
            let mut counters = HashMap::from([(a, ca)]);
            if now < 60.0 {
                counters.insert(b, (now as u64) * 250_000);
            }
            m.update(now, &counters);
            ca += 625_000;
            now += 5.0;
        }
        let last = now - 5.0;
        assert_eq!(m.averages(&a, last).m1, MB);
        assert_eq!(m.get(&a).unwrap().current(), MB);
        assert_eq!(m.len(), 2, "b is remembered for a while");
        assert_eq!(m.averages(&b, last).m10, 2 * MB);
        // b stopped at t=55; after 10 minutes unseen it is forgotten.
        for _ in 0..120 {
            m.update(now, &HashMap::from([(a, ca)]));
            ca += 625_000;
            now += 5.0;
        }
        assert!(m.get(&b).is_none());
        assert_eq!(m.averages(&b, now), Averages::default());
        assert_eq!(m.len(), 1);
        assert!(!m.is_empty());
    }
}
