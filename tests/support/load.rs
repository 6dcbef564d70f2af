//! Household load and measurement tools, run as `homenet` subcommands inside the namespaces:
//!
//! - `sink --listen ADDR [--listen ADDR]...`: TCP discard server counting bytes;
//! - `upload --to ADDR [--rate-mbps R | --greedy] [--seconds S]`: a TCP upload to the sink,
//!   paced at a rate or as fast as TCP goes;
//! - `echo --listen ADDR [--listen ADDR]...`: UDP echo server;
//! - `ping --to ADDR [--interval-ms 100] [--seconds S]`: UDP round trips, p50/p95/max;
//! - `source --listen ADDR... [--rate-mbps R]` and `download --from ADDR [--seconds S]`: the
//!   other direction, a server sending to whoever connects (a stand-in media server).
//!
//! Every tool speaks JSON lines on stdout: servers first print `{"listening":[...]}` once bound
//! (so callers await readiness instead of sleeping), then one line per event or per second;
//! clients print a final summary line. All stop on SIGTERM/SIGINT.
#![allow(dead_code)]

use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Command-line options of the form `--key value` and bare `--flag`s.
#[derive(Debug, Default)]
pub struct Args {
    pairs: Vec<(String, Option<String>)>,
}

impl Args {
    /// Parses `args` (without the subcommand). `flags` lists the options that take no value.
    pub fn parse(args: &[String], flags: &[&str]) -> Result<Args, String> {
        let mut pairs = Vec::new();
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let key = a
                .strip_prefix("--")
                .ok_or_else(|| format!("unexpected argument {a:?}"))?;
            if flags.contains(&key) {
                pairs.push((key.to_string(), None));
            } else {
                let v = it.next().ok_or_else(|| format!("--{key} needs a value"))?;
                pairs.push((key.to_string(), Some(v.clone())));
            }
        }
        Ok(Args { pairs })
    }

    /// Whether `--key` was given.
    pub fn has(&self, key: &str) -> bool {
        self.pairs.iter().any(|(k, _)| k == key)
    }

    /// The last value of `--key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .and_then(|(_, v)| v.as_deref())
    }

    /// Every value of a repeated `--key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.pairs
            .iter()
            .filter(|(k, _)| k == key)
            .filter_map(|(_, v)| v.as_deref())
            .collect()
    }

    /// `--key` parsed, or `default` when absent.
    pub fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> Result<T, String> {
        match self.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{key}: {v:?} is not a valid number")),
        }
    }

    /// `--key` as a socket address (`1.2.3.4:5` or `[2001:db8::1]:5`).
    pub fn addr(&self, key: &str) -> Result<SocketAddr, String> {
        let v = self
            .get(key)
            .ok_or_else(|| format!("--{key} is required"))?;
        v.parse()
            .map_err(|_| format!("--{key}: {v:?} is not an address:port"))
    }

    /// Every `--key` as a socket address; at least one.
    pub fn addrs(&self, key: &str) -> Result<Vec<SocketAddr>, String> {
        let all = self.all(key);
        if all.is_empty() {
            return Err(format!("--{key} is required"));
        }
        all.iter()
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{key}: {v:?} is not an address:port"))
            })
            .collect()
    }
}

/// Set by SIGTERM/SIGINT: tools finish and print their summary.
fn stop_flag() -> Arc<AtomicBool> {
    let flag = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        let _ = signal_hook::flag::register(sig, Arc::clone(&flag));
    }
    flag
}

fn emit(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
    let _ = out.flush();
}

fn bound_line(addrs: &[SocketAddr]) -> serde_json::Value {
    serde_json::json!({ "listening": addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>() })
}

/// An IPv6 wildcard listener would also take IPv4 unless told otherwise; keep them apart so
/// `--listen 0.0.0.0:P --listen [::]:P` works.
fn tcp_listen(addr: SocketAddr) -> Result<TcpListener, String> {
    use nix::sys::socket::{
        bind, listen, setsockopt, socket, sockopt, AddressFamily, Backlog, SockFlag, SockType,
        SockaddrStorage,
    };
    let family = if addr.is_ipv6() {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    };
    let fd = socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)
        .map_err(|e| format!("socket: {e}"))?;
    setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| format!("SO_REUSEADDR: {e}"))?;
    if addr.is_ipv6() {
        setsockopt(&fd, sockopt::Ipv6V6Only, &true).map_err(|e| format!("IPV6_V6ONLY: {e}"))?;
    }
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &SockaddrStorage::from(addr),
    )
    .map_err(|e| format!("bind {addr}: {e}"))?;
    listen(&fd, Backlog::new(64).map_err(|e| e.to_string())?)
        .map_err(|e| format!("listen {addr}: {e}"))?;
    Ok(TcpListener::from(fd))
}

/// `homenet sink`: accepts TCP connections and discards what they send. Prints
/// `{"accept":PEER}` per connection and `{"bytes":TOTAL,"rate_bps":R,"conns":N}` each second.
pub fn sink_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let addrs = a.addrs("listen")?;
    let stop = stop_flag();
    let total = Arc::new(AtomicU64::new(0));
    let conns = Arc::new(AtomicUsize::new(0));
    let mut bound = Vec::new();
    for addr in addrs {
        let l = tcp_listen(addr)?;
        bound.push(l.local_addr().map_err(|e| e.to_string())?);
        let (total, conns) = (Arc::clone(&total), Arc::clone(&conns));
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { continue };
                if let Ok(peer) = s.peer_addr() {
                    emit(&serde_json::json!({ "accept": peer.to_string() }));
                }
                let (total, conns) = (Arc::clone(&total), Arc::clone(&conns));
                conns.fetch_add(1, Ordering::Relaxed);
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) => break,
                            Ok(n) => {
                                total.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) if e.kind() == ErrorKind::Interrupted => {}
                            Err(_) => break,
                        }
                    }
                    conns.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
    }
    emit(&bound_line(&bound));
    let mut last = (Instant::now(), 0u64);
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if last.0.elapsed() >= Duration::from_secs(1) {
            let now = total.load(Ordering::Relaxed);
            let rate = rate_bps(now.wrapping_sub(last.1), last.0.elapsed());
            emit(&serde_json::json!({
                "bytes": now, "rate_bps": rate, "conns": conns.load(Ordering::Relaxed)
            }));
            last = (Instant::now(), now);
        }
    }
    Ok(())
}

/// Bits per second for `bytes` over `elapsed`.
pub fn rate_bps(bytes: u64, elapsed: Duration) -> u64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0;
    }
    (bytes as f64 * 8.0 / secs) as u64
}

/// How many bytes a paced sender may have sent `elapsed` after starting at `rate_bps`.
pub fn paced_allowance(rate_bps: u64, elapsed: Duration) -> u64 {
    let bits = u128::from(rate_bps).saturating_mul(elapsed.as_micros()) / 1_000_000;
    u64::try_from(bits / 8).unwrap_or(u64::MAX)
}

/// Summary of an upload or a download.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadSummary {
    /// Bytes written to the socket.
    pub bytes: u64,
    /// Seconds spent.
    pub seconds: f64,
    /// Average rate, bit/s.
    pub rate_bps: u64,
}

/// `homenet upload`: sends to `--to` at `--rate-mbps` (or `--greedy`) for `--seconds` (default
/// until SIGTERM); prints `{"upload":{bytes,seconds,rate_bps}}` at the end.
pub fn upload_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &["greedy"])?;
    let to = a.addr("to")?;
    let rate: Option<u64> = if a.has("greedy") {
        None
    } else {
        let mbps: f64 = a.num("rate-mbps", f64::NAN)?;
        if !(mbps.is_finite() && mbps > 0.0) {
            return Err("give --rate-mbps R (> 0) or --greedy".into());
        }
        Some((mbps * 1e6) as u64)
    };
    let seconds: f64 = a.num("seconds", f64::INFINITY)?;
    let stop = stop_flag();
    let s = TcpStream::connect_timeout(&to, Duration::from_secs(5))
        .map_err(|e| format!("connect {to}: {e}"))?;
    let start = Instant::now();
    let sent = send_paced(s, rate, seconds, &stop).map_err(|e| format!("{to}: {e}"))?;
    let elapsed = start.elapsed();
    let sum = UploadSummary {
        bytes: sent,
        seconds: elapsed.as_secs_f64(),
        rate_bps: rate_bps(sent, elapsed),
    };
    emit(&serde_json::json!({ "upload": sum }));
    Ok(())
}

/// `homenet echo`: returns every UDP datagram to its sender.
pub fn echo_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let stop = stop_flag();
    let mut bound = Vec::new();
    let mut handles = Vec::new();
    for addr in a.addrs("listen")? {
        let sock = UdpSocket::bind(addr).map_err(|e| format!("bind {addr}: {e}"))?;
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .map_err(|e| e.to_string())?;
        bound.push(sock.local_addr().map_err(|e| e.to_string())?);
        let stop = Arc::clone(&stop);
        handles.push(std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, peer)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], peer);
                }
            }
        }));
    }
    emit(&bound_line(&bound));
    for h in handles {
        let _ = h.join();
    }
    Ok(())
}

/// Round-trip statistics.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RttStats {
    /// Probes sent.
    pub sent: u64,
    /// Probes answered.
    pub received: u64,
    /// Median RTT, ms.
    pub p50_ms: f64,
    /// 95th percentile RTT, ms.
    pub p95_ms: f64,
    /// Largest RTT, ms.
    pub max_ms: f64,
}

/// The `p`-th percentile (0..=100, nearest rank) of `samples`; 0 when empty.
pub fn percentile(samples: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Statistics of `rtts_ms` out of `sent` probes.
pub fn rtt_stats(sent: u64, rtts_ms: &[f64]) -> RttStats {
    RttStats {
        sent,
        received: rtts_ms.len() as u64,
        p50_ms: percentile(rtts_ms, 50.0),
        p95_ms: percentile(rtts_ms, 95.0),
        max_ms: rtts_ms.iter().copied().fold(0.0, f64::max),
    }
}

/// `homenet ping`: a UDP probe every `--interval-ms` (100) to an echo server for `--seconds`
/// (default until SIGTERM). Prints `{"window":RttStats}` each second (the last second's
/// probes, and their RTTs as `rtts_ms`) and `{"ping":RttStats}` at the end; a probe unanswered after 2 s is lost.
pub fn ping_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let to = a.addr("to")?;
    let interval = Duration::from_millis(a.num("interval-ms", 100u64)?.max(1));
    let seconds: f64 = a.num("seconds", f64::INFINITY)?;
    let stop = stop_flag();
    let bind: SocketAddr = if to.is_ipv6() {
        "[::]:0".parse().map_err(|_| "bad bind")?
    } else {
        "0.0.0.0:0".parse().map_err(|_| "bad bind")?
    };
    let sock = UdpSocket::bind(bind).map_err(|e| format!("bind: {e}"))?;
    sock.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    let start = Instant::now();
    let outstanding: Mutex<HashMap<u64, Instant>> = Mutex::new(HashMap::new());
    let mut all = Vec::new();
    let mut window = Vec::new();
    let (mut sent, mut window_sent) = (0u64, 0u64);
    let mut next_send = start;
    let mut next_report = start + Duration::from_secs(1);
    let mut buf = [0u8; 64];
    let sending =
        |now: Instant| !stop.load(Ordering::Relaxed) && (now - start).as_secs_f64() < seconds;
    let mut drain_until: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if drain_until.is_none() && !sending(now) {
            drain_until = Some(now + Duration::from_secs(2));
        }
        if let Some(d) = drain_until {
            let empty = outstanding.lock().map(|o| o.is_empty()).unwrap_or(true);
            if now >= d || empty {
                break;
            }
        }
        // Close the window before the probe due at the same instant, so the probe and its
        // answer fall into the same window.
        if now >= next_report {
            emit(&serde_json::json!({
                "window": rtt_stats(window_sent, &window), "rtts_ms": window
            }));
            window.clear();
            window_sent = 0;
            next_report += Duration::from_secs(1);
        }
        if drain_until.is_none() && now >= next_send {
            let mut pkt = [0u8; 32];
            pkt[..8].copy_from_slice(&sent.to_be_bytes());
            if sock.send(&pkt).is_ok() {
                if let Ok(mut o) = outstanding.lock() {
                    o.insert(sent, now);
                    o.retain(|_, t| now.duration_since(*t) < Duration::from_secs(2));
                }
            }
            sent = sent.wrapping_add(1);
            window_sent = window_sent.wrapping_add(1);
            next_send += interval;
        }
        let wake = if drain_until.is_some() {
            now + Duration::from_millis(50)
        } else {
            next_send.min(next_report)
        };
        let wait = wake
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let _ = sock.set_read_timeout(Some(wait));
        if let Ok(n) = sock.recv(&mut buf) {
            if n >= 8 {
                let mut seq = [0u8; 8];
                seq.copy_from_slice(&buf[..8]);
                let seq = u64::from_be_bytes(seq);
                let t = outstanding.lock().ok().and_then(|mut o| o.remove(&seq));
                if let Some(t) = t {
                    let ms = t.elapsed().as_secs_f64() * 1000.0;
                    all.push(ms);
                    window.push(ms);
                }
            }
        }
    }
    emit(&serde_json::json!({ "ping": rtt_stats(sent, &all) }));
    Ok(())
}

/// `homenet source --listen ADDR... [--rate-mbps R]`: a TCP server that sends to every
/// connection (paced per connection, or as fast as TCP goes), like a media server streaming.
/// Prints `{"listening":[..]}` and `{"accept":PEER}` per connection.
pub fn source_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let rate: Option<u64> = match a.get("rate-mbps") {
        None => None,
        Some(_) => {
            let mbps: f64 = a.num("rate-mbps", 0.0)?;
            if !(mbps.is_finite() && mbps > 0.0) {
                return Err("--rate-mbps must be > 0".into());
            }
            Some((mbps * 1e6) as u64)
        }
    };
    let stop = stop_flag();
    let mut bound = Vec::new();
    for addr in a.addrs("listen")? {
        let l = tcp_listen(addr)?;
        bound.push(l.local_addr().map_err(|e| e.to_string())?);
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                if let Ok(peer) = s.peer_addr() {
                    emit(&serde_json::json!({ "accept": peer.to_string() }));
                }
                let stop = Arc::clone(&stop);
                std::thread::spawn(move || {
                    let _ = send_paced(s, rate, f64::INFINITY, &stop);
                });
            }
        });
    }
    emit(&bound_line(&bound));
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// Writes to `s` at `rate` (None: greedy) for `seconds` or until `stop`; returns bytes sent.
fn send_paced(
    mut s: TcpStream,
    rate: Option<u64>,
    seconds: f64,
    stop: &AtomicBool,
) -> Result<u64, String> {
    // Short write timeouts let a blocked greedy sender notice SIGTERM.
    s.set_write_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let chunk = vec![0x5au8; 16 * 1024];
    let start = Instant::now();
    let mut sent: u64 = 0;
    while !stop.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < seconds {
        let want = match rate {
            None => chunk.len(),
            Some(r) => {
                let allowed = paced_allowance(r, start.elapsed()).saturating_sub(sent);
                if allowed == 0 {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                }
                (allowed as usize).min(chunk.len())
            }
        };
        match s.write(&chunk[..want]) {
            Ok(n) => sent = sent.saturating_add(n as u64),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("send: {e}")),
        }
    }
    Ok(sent)
}

/// `homenet download --from ADDR [--seconds S]`: connects, reads and counts for `--seconds`
/// (default until SIGTERM or the end of the stream); prints `{"download":{bytes,seconds,
/// rate_bps}}`.
pub fn download_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let from = a.addr("from")?;
    let seconds: f64 = a.num("seconds", f64::INFINITY)?;
    let stop = stop_flag();
    let mut s = TcpStream::connect_timeout(&from, Duration::from_secs(5))
        .map_err(|e| format!("connect {from}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64 * 1024];
    let start = Instant::now();
    let mut got: u64 = 0;
    while !stop.load(Ordering::Relaxed) && start.elapsed().as_secs_f64() < seconds {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got = got.saturating_add(n as u64),
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => return Err(format!("receive from {from}: {e}")),
        }
    }
    let elapsed = start.elapsed();
    let sum = UploadSummary {
        bytes: got,
        seconds: elapsed.as_secs_f64(),
        rate_bps: rate_bps(got, elapsed),
    };
    emit(&serde_json::json!({ "download": sum }));
    Ok(())
}

/// `homenet probe --to ADDR [--timeout-ms N]`: succeeds once a TCP connection to ADDR opens
/// (for servers that announce no readiness of their own), fails after the timeout (10 s).
pub fn probe_main(args: &[String]) -> Result<(), String> {
    let a = Args::parse(args, &[])?;
    let to = a.addr("to")?;
    let deadline = Instant::now() + Duration::from_millis(a.num("timeout-ms", 10_000u64)?);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let err = match TcpStream::connect_timeout(&to, left.max(Duration::from_millis(1))) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(format!("{to} not reachable: {err}"));
        }
        // Nothing to await on a server that is not ours: retry at a short, bounded pace.
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 95.0), 95.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0, f64::NAN, 1.0], 50.0), 1.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
    }

    #[test]
    fn stats_count_losses() {
        let s = rtt_stats(10, &[1.0, 2.0, 3.0]);
        assert_eq!((s.sent, s.received), (10, 3));
        assert_eq!(s.max_ms, 3.0);
        assert_eq!(s.p50_ms, 2.0);
    }

    #[test]
    fn pacing_allowance() {
        assert_eq!(
            paced_allowance(8_000_000, Duration::from_secs(1)),
            1_000_000
        );
        assert_eq!(
            paced_allowance(8_000_000, Duration::from_millis(10)),
            10_000
        );
        assert_eq!(paced_allowance(0, Duration::from_secs(5)), 0);
        assert_eq!(
            paced_allowance(u64::MAX, Duration::from_secs(u64::MAX / 2)),
            u64::MAX
        );
    }

    #[test]
    fn rates() {
        assert_eq!(rate_bps(1_000_000, Duration::from_secs(2)), 4_000_000);
        assert_eq!(rate_bps(5, Duration::ZERO), 0);
    }

    #[test]
    fn args_parse_and_reject() {
        let v = |s: &str| s.split_whitespace().map(String::from).collect::<Vec<_>>();
        let a = Args::parse(&v("--to 1.2.3.4:5 --greedy --seconds 3"), &["greedy"]).unwrap();
        assert!(a.has("greedy"));
        assert_eq!(a.addr("to").unwrap().port(), 5);
        assert_eq!(a.num("seconds", 0.0).unwrap(), 3.0);
        assert!(Args::parse(&v("--to"), &[]).is_err());
        assert!(Args::parse(&v("stray"), &[]).is_err());
        let a = Args::parse(&v("--seconds x --to nope"), &[]).unwrap();
        assert!(a.num("seconds", 0u64).is_err());
        assert!(a.addr("to").is_err());
        let a = Args::parse(&v("--listen 0.0.0.0:1 --listen [::]:1"), &[]).unwrap();
        assert_eq!(a.addrs("listen").unwrap().len(), 2);
    }
}
