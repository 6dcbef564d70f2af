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
        let prev = self.last.replace((now, counter));
        let (t0, c0) = prev?;
        let dt = now - t0;
        if dt <= 0.0 {
            self.last = Some((t0, c0));
            return None;
        }
        let delta = counter_delta(c0, counter, dt)?;
        Some((delta as f64 * 8.0 / dt) as u64)
    }
}

/// Bytes a counter advanced from `c0` to `c1` in `dt` seconds, across a 32-bit wrap; None for
/// a reset.
fn counter_delta(c0: u64, c1: u64, dt: f64) -> Option<u64> {
    if c1 >= c0 {
        Some(c1 - c0)
    } else if c0 <= u32::MAX as u64 && c1 <= u32::MAX as u64 {
        let wrapped = (u32::MAX as u64 - c0) + c1 + 1;
        // A wrap is only plausible if it implies a sane rate; otherwise it was a reset.
        (wrapped as f64 * 8.0 / dt < 100e9).then_some(wrapped)
    } else {
        None
    }
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
        let (t_last, total) = self.samples.back().copied().unwrap_or((now, 0));
        let prev = self.last_counter.replace(counter);
        let total = match prev {
            None => 0,
            Some(_) if now <= t_last => {
                self.last_counter = prev;
                return None;
            }
            Some(c0) => match counter_delta(c0, counter, now - t_last) {
                Some(d) => total.saturating_add(d),
                None => {
                    self.samples.clear();
                    0
                }
            },
        };
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
}

/// Resolves a netifd logical interface (e.g. `wan`) to its layer-3 device with
/// `ubus call network.interface.<name> status`, run without a shell.
pub fn resolve_interface(name: &str) -> Result<String, String> {
    resolve_interface_with("ubus", name, UBUS_TIMEOUT)
}

/// How long `ubus` may take: ubusd answers a status call in milliseconds.
const UBUS_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

fn resolve_interface_with(
    ubus: &str,
    name: &str,
    limit: std::time::Duration,
) -> Result<String, String> {
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(format!("'{name}' is not a netifd interface name"));
    }
    let (ok, stdout, _) = crate::child::run(
        ubus,
        &["call", &format!("network.interface.{name}"), "status"],
        None,
        limit,
    )
    .map_err(|e| {
        format!("cannot run ubus to find the device of interface '{name}' ({e}); set network.wan_device")
    })?;
    if !ok {
        return Err(format!(
            "ubus knows no interface '{name}'; set network.wan_interface or network.wan_device"
        ));
    }
    parse_ubus_status(stdout.as_bytes()).ok_or_else(|| {
        format!("interface '{name}' has no device (is it up?); set network.wan_device")
    })
}

/// The device in a `network.interface.X status` reply: `l3_device`, else `device`.
pub fn parse_ubus_status(json: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(json).ok()?;
    ["l3_device", "device"]
        .iter()
        .filter_map(|k| v.get(k).and_then(|d| d.as_str()))
        .find(|d| !d.is_empty())
        .map(str::to_string)
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
        fs::write(dir.join("tx_bytes"), "garbage").unwrap();
        assert!(read_tx_bytes(&root, "wan0").is_err());
        fs::remove_dir_all(&root).unwrap();
    }

    /// A stuck ubus (ubusd hung, or the call never answered) must not stop the daemon: the call
    /// has a deadline. A script that sleeps stands in for it.
    #[test]
    fn a_stuck_ubus_is_killed_at_the_deadline() {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("jd-ubus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let fake = dir.join("ubus");
        fs::write(&fake, "#!/bin/sh\nexec sleep 30\n").unwrap();
        fs::set_permissions(&fake, fs::Permissions::from_mode(0o755)).unwrap();
        let t0 = std::time::Instant::now();
        let r = resolve_interface_with(
            fake.to_str().unwrap(),
            "wan",
            std::time::Duration::from_millis(300),
        );
        let _ = fs::remove_dir_all(&dir);
        let e = r.unwrap_err();
        assert!(e.contains("ubus") && e.contains("wan"), "{e}");
        assert!(
            t0.elapsed() < std::time::Duration::from_secs(5),
            "{:?}",
            t0.elapsed()
        );
    }

    #[test]
    fn ubus_status_device() {
        assert_eq!(
            parse_ubus_status(br#"{"up":true,"l3_device":"pppoe-wan","device":"eth1"}"#),
            Some("pppoe-wan".into())
        );
        assert_eq!(
            parse_ubus_status(br#"{"up":true,"device":"eth1"}"#),
            Some("eth1".into())
        );
        assert_eq!(parse_ubus_status(br#"{"up":false}"#), None);
        assert_eq!(parse_ubus_status(b"garbage"), None);
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
