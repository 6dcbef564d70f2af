//! Observation adapters for the WAN link: interface byte counters, rates over real elapsed
//! time, the WAN device behind a logical interface, and the capacity SQM was configured with.

use std::fs;
use std::io;
use std::path::Path;

/// Reads a device's transmitted bytes from sysfs (`<sys>/class/net/<dev>/statistics/tx_bytes`).
pub fn read_tx_bytes(sys_root: &Path, dev: &str) -> io::Result<u64> {
    if dev.is_empty() || dev.contains('/') || dev == "." || dev == ".." {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("'{dev}' is not a device name"),
        ));
    }
    let p = sys_root
        .join("class/net")
        .join(dev)
        .join("statistics/tx_bytes");
    let text = fs::read_to_string(&p)
        .map_err(|e| io::Error::new(e.kind(), format!("WAN device {dev} not readable: {e}")))?;
    text.trim().parse().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} holds no number", p.display()),
        )
    })
}

/// Turns a cumulative byte counter into bits per second over real elapsed time.
#[derive(Clone, Debug, Default)]
pub struct RateMeter {
    last: Option<(f64, u64)>,
}

impl RateMeter {
    /// Feeds a sample at monotonic time `now` (seconds). Returns the rate since the previous
    /// sample, or `None` for the first sample and after a counter reset (device re-created).
    /// A 32-bit counter that wrapped is recognised and counted across the wrap.
    pub fn update(&mut self, now: f64, counter: u64) -> Option<u64> {
        self.update_within(now, counter, None)
    }

    /// Like [`RateMeter::update`], with the fastest rate the link can carry: a delta beyond
    /// it is not traffic but a counter that started again (a PPPoE reconnect re-creates
    /// `pppoe-wan` from zero, which would otherwise read as a 32-bit wrap worth gigabits), and
    /// gives `None` while the meter restarts from the new value.
    pub fn update_within(&mut self, now: f64, counter: u64, max_bps: Option<u64>) -> Option<u64> {
        let prev = self.last.replace((now, counter));
        let (t0, c0) = prev?;
        let dt = now - t0;
        if dt <= 0.0 {
            self.last = Some((t0, c0));
            return None;
        }
        let delta = counter_delta(c0, counter, dt, max_bps)?;
        Some((delta as f64 * 8.0 / dt) as u64)
    }

    /// Forgets the last sample: the next one starts a new series (another device).
    pub fn reset(&mut self) {
        self.last = None;
    }
}

/// Bytes a counter advanced from `c0` to `c1` in `dt` seconds, across a 32-bit wrap; None for
/// a reset. A step beyond `max_bps` (the fastest the link could carry; 100 Gbit/s when
/// unknown) is a counter that started again, not traffic, whichever way it went.
fn counter_delta(c0: u64, c1: u64, dt: f64, max_bps: Option<u64>) -> Option<u64> {
    let delta = if c1 >= c0 {
        c1 - c0
    } else if c0 <= u32::MAX as u64 && c1 <= u32::MAX as u64 {
        (u32::MAX as u64 - c0) + c1 + 1
    } else {
        return None;
    };
    let max = max_bps.map_or(100e9, |m| m as f64);
    (delta as f64 * 8.0 / dt <= max).then_some(delta)
}

/// The rate over the last `window` seconds from samples taken more often than that (a
/// sliding window): an increase shows up within one sampling step of filling the window,
/// not one whole window later.
#[derive(Clone, Debug)]
pub struct WindowMeter {
    window: f64,
    /// (time, bytes counted since the first sample), oldest first; bounded by the window.
    samples: std::collections::VecDeque<(f64, u64)>,
    last_counter: Option<u64>,
}

impl WindowMeter {
    pub fn new(window_s: f64) -> WindowMeter {
        WindowMeter {
            window: window_s,
            samples: std::collections::VecDeque::new(),
            last_counter: None,
        }
    }

    /// Feeds a sample; returns bits/s over the newest span of at least the window, or None
    /// until the samples span one (also after a counter reset, which starts afresh).
    pub fn update(&mut self, now: f64, counter: u64) -> Option<u64> {
        self.update_within(now, counter, None)
    }

    /// Like [`WindowMeter::update`], a step beyond `max_bps` being a reset (see
    /// [`RateMeter::update_within`]).
    pub fn update_within(&mut self, now: f64, counter: u64, max_bps: Option<u64>) -> Option<u64> {
        let (t_last, total) = self.samples.back().copied().unwrap_or((now, 0));
        let prev = self.last_counter.replace(counter);
        let total = match prev {
            None => 0,
            Some(_) if now <= t_last => {
                self.last_counter = prev;
                return None;
            }
            Some(c0) => match counter_delta(c0, counter, now - t_last, max_bps) {
                Some(d) => total.saturating_add(d),
                None => {
                    self.samples.clear();
                    0
                }
            },
        };
        // After a long pause (the caller skipped sampling) the old sample would average the
        // pause in: start the window afresh.
        if self
            .samples
            .back()
            .is_some_and(|(t, _)| now - t > 4.0 * self.window)
        {
            self.samples.clear();
        }
        self.samples.push_back((now, total));
        while self.samples.len() > 2 && now - self.samples[1].0 >= self.window {
            self.samples.pop_front();
        }
        // Bounded even when samples come far faster than the window.
        while self.samples.len() > 64 {
            self.samples.pop_front();
        }
        let (t0, b0) = *self.samples.front()?;
        let dt = now - t0;
        if dt < self.window * 0.9 {
            return None;
        }
        Some(((total - b0) as f64 * 8.0 / dt) as u64)
    }

    /// Forgets every sample: the next one starts a new series (another device).
    pub fn reset(&mut self) {
        self.samples.clear();
        self.last_counter = None;
    }
}

/// A device's interface index: a device deleted and created again under the same name (a
/// PPPoE reconnect) gets a new one, and its counters start from zero.
pub fn read_ifindex(sys_root: &Path, dev: &str) -> Option<u32> {
    if dev.is_empty() || dev.contains('/') || dev == "." || dev == ".." {
        return None;
    }
    let p = sys_root.join("class/net").join(dev).join("ifindex");
    fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Resolves a netifd logical interface (e.g. `wan`) to its layer-3 device with
/// `ubus call network.interface.<name> status`, run without a shell.
pub fn resolve_interface(name: &str) -> Result<String, String> {
    crate::netifd::resolve_device(&mut crate::netifd::Ubus, name, "network.wan_device")
}

/// The upload rate (bit/s) sqm-scripts is configured with for `device`: the `upload` option
/// (kbit/s) of an enabled `config queue` whose `interface` is that device.
pub fn sqm_upload_bps(sqm_config: &[u8], device: &str) -> Option<u64> {
    let pkg = crate::uci::parse(sqm_config).ok()?;
    pkg.sections
        .iter()
        .filter(|s| s.stype == "queue")
        .filter(|s| {
            let get = |n: &str| {
                s.get(n)
                    .and_then(|o| o.value.items().last().map(|v| v.to_string()))
                    .unwrap_or_default()
            };
            crate::config::parse_bool(&get("enabled")) == Some(true) && get("interface") == device
        })
        .find_map(|s| {
            s.get("upload").and_then(|o| {
                o.value
                    .items()
                    .last()
                    .and_then(|u| u.trim().parse::<u64>().ok())
            })
        })
        .filter(|&kbit| kbit > 0)
        .map(|kbit| kbit * 1000)
}

#[cfg(test)]
mod tests {

    #[test]
    fn window_meter_slides() {
        let mut m = WindowMeter::new(0.5);
        assert_eq!(m.update(0.0, 0), None);
        assert_eq!(
            m.update(0.25, 125_000),
            None,
            "the window is not spanned yet"
        );
        // 250 kB in 0.5 s = 4 Mbit/s.
        assert_eq!(m.update(0.5, 250_000), Some(4_000_000));
        // A jump: 1 MB in the last 0.25 s; the window 0.25..0.75 holds 1.125 MB.
        assert_eq!(m.update(0.75, 1_250_000), Some(18_000_000));
        assert_eq!(m.update(1.0, 2_250_000), Some(32_000_000));
    }

    #[test]
    fn window_meter_reset_wrap_and_bounds() {
        let mut m = WindowMeter::new(0.5);
        m.update(0.0, u32::MAX as u64 - 999);
        // A 32-bit wrap counts across.
        assert_eq!(m.update(0.5, 1000), Some(32_000));
        // A reset (a 64-bit counter going back) starts afresh.
        let mut m = WindowMeter::new(0.5);
        m.update(0.5, 10_000_000_000);
        assert_eq!(m.update(1.0, 10), None);
        assert_eq!(m.update(1.5, 62_510), Some(1_000_000));
        // Time not moving forward is ignored.
        assert_eq!(m.update(1.5, 99_999_999), None);
        assert_eq!(m.update(2.0, 125_010), Some(1_000_000));
        // A long pause is not averaged in.
        assert_eq!(m.update(60.0, 200_000_000), None);
        assert_eq!(m.update(60.5, 200_062_500), Some(1_000_000));
        // Many samples within one window stay bounded.
        let mut m = WindowMeter::new(1000.0);
        for i in 0..10_000u64 {
            m.update(i as f64 * 0.001, i);
        }
        assert!(m.samples.len() <= 64);
    }

    use super::*;

    #[test]
    fn rate_over_elapsed_time() {
        let mut m = RateMeter::default();
        assert_eq!(m.update(10.0, 1000), None);
        assert_eq!(m.update(12.0, 1000 + 250_000), Some(1_000_000));
        assert_eq!(m.update(12.5, 1000 + 250_000 + 62_500), Some(1_000_000));
    }

    #[test]
    fn same_instant_is_ignored() {
        let mut m = RateMeter::default();
        m.update(1.0, 100);
        assert_eq!(m.update(1.0, 200), None);
        assert_eq!(m.update(2.0, 225), Some(1000));
    }

    #[test]
    fn wrap_of_32_bit_counter() {
        let mut m = RateMeter::default();
        m.update(0.0, u32::MAX as u64 - 99);
        assert_eq!(m.update(1.0, 100), Some(200 * 8));
    }

    #[test]
    fn reset_is_not_a_wrap_when_the_link_cannot_carry_it() {
        // pppoe-wan re-created: the counter falls from 300 MB to 2 MB. Read as a 32-bit wrap
        // that would be ~4 GB in 5 s; a 20 Mbit/s link (bound 100 Mbit/s) cannot.
        let mut m = RateMeter::default();
        m.update_within(0.0, 300_000_000, Some(100_000_000));
        assert_eq!(m.update_within(5.0, 2_000_000, Some(100_000_000)), None);
        // Then it measures from the new base.
        assert_eq!(
            m.update_within(10.0, 2_000_000 + 12_500_000, Some(100_000_000)),
            Some(20_000_000)
        );
        // Without the bound, the same reset is taken for a wrap: the false spike.
        let mut m = RateMeter::default();
        m.update(0.0, 300_000_000);
        assert!(m.update(5.0, 2_000_000).unwrap() > 1_000_000_000);
        // A genuine wrap at link speed stays counted.
        let mut m = RateMeter::default();
        m.update_within(0.0, u32::MAX as u64 - 999, Some(100_000_000));
        assert_eq!(
            m.update_within(1.0, 1000, Some(100_000_000)),
            Some(2000 * 8)
        );
        // A jump upwards beyond the link (another device's counter) is dropped too.
        let mut m = RateMeter::default();
        m.update_within(0.0, 1000, Some(100_000_000));
        assert_eq!(
            m.update_within(1.0, 10_000_000_000, Some(100_000_000)),
            None
        );
        assert_eq!(
            m.update_within(2.0, 10_000_000_000 + 125_000, Some(100_000_000)),
            Some(1_000_000)
        );
        m.reset();
        assert_eq!(m.update_within(3.0, 5, Some(100_000_000)), None);
    }

    #[test]
    fn reset_of_64_bit_counter() {
        let mut m = RateMeter::default();
        m.update(0.0, 10_000_000_000);
        assert_eq!(m.update(1.0, 5), None);
        assert_eq!(m.update(2.0, 130), Some(1000));
    }

    #[test]
    fn reads_sysfs_counter() {
        let root = std::env::temp_dir().join(format!("jd-sys-{}", std::process::id()));
        let dir = root.join("class/net/wan0/statistics");
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("tx_bytes"), "12345\n").unwrap();
        assert_eq!(read_tx_bytes(&root, "wan0").unwrap(), 12345);
        let e = read_tx_bytes(&root, "nope").unwrap_err();
        assert!(e.to_string().contains("nope"));
        assert!(read_tx_bytes(&root, "../x").is_err());
        fs::write(root.join("class/net/wan0/ifindex"), "7\n").unwrap();
        assert_eq!(read_ifindex(&root, "wan0"), Some(7));
        assert_eq!(read_ifindex(&root, "nope"), None);
        assert_eq!(read_ifindex(&root, ".."), None);
        fs::write(dir.join("tx_bytes"), "garbage").unwrap();
        assert!(read_tx_bytes(&root, "wan0").is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn sqm_capacity() {
        let cfg = b"config queue 'eth1'\n\toption enabled '1'\n\toption interface 'eth1'\n\toption download '85000'\n\toption upload '18000'\n\nconfig queue\n\toption enabled '0'\n\toption interface 'wan2'\n\toption upload '5000'\n";
        assert_eq!(sqm_upload_bps(cfg, "eth1"), Some(18_000_000));
        assert_eq!(sqm_upload_bps(cfg, "wan2"), None, "disabled queue");
        assert_eq!(sqm_upload_bps(cfg, "eth9"), None);
        assert_eq!(
            sqm_upload_bps(b"config queue\n option interface 'x", "x"),
            None
        );
    }
}
