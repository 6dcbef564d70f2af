//! Parsers for `tc qdisc|class|filter show` output.
//!
//! The text form is read, not `tc -j`: iproute2 6.1 (Debian 12) prints no JSON at all for
//! classes, and its u32 filter JSON repeats the key "match" once per key so all but one key
//! are lost. The text form has been stable for many years and carries everything needed.

/// One qdisc line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Qdisc {
    /// e.g. "htb", "ingress", "fq_codel".
    pub kind: String,
    /// e.g. "4a44:" or "ffff:".
    pub handle: String,
    /// `None` for the root qdisc; "ffff:fff1" for ingress/clsact; else the parent class.
    pub parent: Option<String>,
    /// htb's `default` class minor, when shown.
    pub default_minor: Option<u32>,
}

/// One class with its statistics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Class {
    /// e.g. "htb".
    pub kind: String,
    /// The class id, `major:minor`.
    pub major: u16,
    pub minor: u16,
    /// `None` for a root class.
    pub parent: Option<String>,
    /// As tc prints them: rounded to about four digits.
    pub rate_bps: u64,
    pub ceil_bps: u64,
    /// Bytes sent through the class since it was created.
    pub bytes: u64,
}

/// One u32 key: `match VALUE/MASK at OFF`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Key {
    pub value: u32,
    pub mask: u32,
    pub off: i32,
}

/// One filter line (with its keys and redirect target, when shown).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    /// "ip", "ipv6", "all", ...
    pub protocol: String,
    pub prio: u32,
    /// Classifier: "u32", "bpf", ...
    pub kind: String,
    /// Filter handle (`fh`); `None` on the bare per-priority header line.
    pub handle: Option<String>,
    pub flowid: Option<String>,
    pub keys: Vec<Key>,
    /// `Some("*")` when the redirect target device has vanished.
    pub redirect_to: Option<String>,
}

impl Filter {
    /// A real rule rather than the per-priority header or a u32 hash table line.
    pub fn is_rule(&self) -> bool {
        match &self.handle {
            None => false,
            Some(h) => !(self.kind == "u32" && h.ends_with(':')),
        }
    }
}

fn after<'a>(tokens: &[&'a str], word: &str) -> Option<&'a str> {
    tokens
        .iter()
        .position(|t| *t == word)
        .and_then(|i| tokens.get(i + 1).copied())
}

/// Parses `tc qdisc show dev X`.
pub fn qdiscs(text: &str) -> Vec<Qdisc> {
    let mut out = Vec::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        if t.first() != Some(&"qdisc") || t.len() < 3 {
            continue;
        }
        let parent = if t.contains(&"root") {
            None
        } else {
            after(&t, "parent").map(str::to_string)
        };
        let default_minor = after(&t, "default").and_then(parse_hex_or_dec);
        out.push(Qdisc {
            kind: t[1].to_string(),
            handle: t[2].to_string(),
            parent,
            default_minor,
        });
    }
    out
}

fn parse_hex_or_dec(s: &str) -> Option<u32> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16).ok(),
        None => u32::from_str_radix(s, 16).ok(),
    }
}

/// Parses a handle "MAJ:MIN" (hex) into its parts; "MAJ:" has minor 0.
pub fn parse_classid(s: &str) -> Option<(u16, u16)> {
    let (maj, min) = s.split_once(':')?;
    let maj = u16::from_str_radix(maj, 16).ok()?;
    let min = if min.is_empty() {
        0
    } else {
        u16::from_str_radix(min, 16).ok()?
    };
    Some((maj, min))
}

/// Parses a tc rate ("4Mbit", "4600Kbit", "10Gbit", "800bit") into bit/s.
pub fn parse_rate(s: &str) -> Option<u64> {
    let units: [(&str, f64); 10] = [
        ("Tbit", 1e12),
        ("Gbit", 1e9),
        ("Mbit", 1e6),
        ("Kbit", 1e3),
        ("tbit", 1e12),
        ("gbit", 1e9),
        ("mbit", 1e6),
        ("kbit", 1e3),
        ("bit", 1.0),
        ("bps", 8.0),
    ];
    for (suffix, mult) in units {
        if let Some(num) = s.strip_suffix(suffix) {
            // tc prints a rate as a plain decimal and a unit: no sign, exponent, inf or nan
            let v = crate::decimal::parse(num)?;
            if !v.is_finite() || v < 0.0 {
                return None;
            }
            return Some((v * mult).round() as u64);
        }
    }
    None
}

/// What tc prints for a rate the kernel holds exactly (bit/s), read back: iproute2's
/// `print_rate` (tc/tc_util.c) divides by 1000 while the value is at least 1000 and either a
/// multiple of 1000 or at least 1,000,000, truncating (4,123,456 → "4123Kbit").
pub fn printed_rate(bps: u64) -> u64 {
    let (mut r, mut mult) = (bps, 1u64);
    for _ in 0..4 {
        if r < 1000 || (r % 1000 != 0 && r < 1_000_000) {
            break;
        }
        r /= 1000;
        mult *= 1000;
    }
    r * mult
}

/// Parses `tc -s class show dev X`.
pub fn classes(text: &str) -> Vec<Class> {
    let mut out: Vec<Class> = Vec::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.first() {
            Some(&"class") if t.len() >= 3 => {
                let Some((major, minor)) = parse_classid(t[2]) else {
                    continue;
                };
                let parent = if t.contains(&"root") {
                    None
                } else {
                    after(&t, "parent").map(str::to_string)
                };
                out.push(Class {
                    kind: t[1].to_string(),
                    major,
                    minor,
                    parent,
                    rate_bps: after(&t, "rate").and_then(parse_rate).unwrap_or(0),
                    ceil_bps: after(&t, "ceil").and_then(parse_rate).unwrap_or(0),
                    bytes: 0,
                });
            }
            Some(&"Sent") => {
                if let (Some(c), Some(b)) = (out.last_mut(), t.get(1)) {
                    if let Ok(b) = b.parse::<u64>() {
                        c.bytes = b;
                    }
                }
            }
            _ => {}
        }
    }
    out
}

/// Parses `tc filter show dev X [ingress|parent P]`.
pub fn filters(text: &str) -> Vec<Filter> {
    let mut out: Vec<Filter> = Vec::new();
    for line in text.lines() {
        let t: Vec<&str> = line.split_whitespace().collect();
        match t.first() {
            Some(&"filter") => {
                let Some(pref) = after(&t, "pref").or_else(|| after(&t, "prio")) else {
                    continue;
                };
                let Ok(prio) = pref.parse::<u32>() else {
                    continue;
                };
                let kind = t
                    .iter()
                    .position(|x| *x == "pref" || *x == "prio")
                    .and_then(|i| t.get(i + 2))
                    .map(|s| s.to_string())
                    .unwrap_or_default();
                let flowid = t
                    .iter()
                    .position(|x| *x == "flowid" || *x == "*flowid" || *x == "classid")
                    .and_then(|i| t.get(i + 1))
                    .filter(|s| s.contains(':'))
                    .map(|s| s.to_string());
                out.push(Filter {
                    protocol: after(&t, "protocol").unwrap_or("all").to_string(),
                    prio,
                    kind,
                    // u32 writes `fh`, most other classifiers `handle`.
                    handle: after(&t, "fh")
                        .or_else(|| after(&t, "handle"))
                        .map(str::to_string),
                    flowid,
                    keys: Vec::new(),
                    redirect_to: None,
                });
            }
            Some(&"match") => {
                if let (Some(f), Some(key)) = (out.last_mut(), parse_key(&t)) {
                    f.keys.push(key);
                }
            }
            _ => {
                if let Some(pos) = line.find("Redirect to device ") {
                    let rest = &line[pos + "Redirect to device ".len()..];
                    let dev: String = rest.chars().take_while(|c| *c != ')').collect();
                    if let Some(f) = out.last_mut() {
                        f.redirect_to = Some(dev.trim().to_string());
                    }
                }
            }
        }
    }
    out
}

/// `match c6336402/ffffffff at 16`
fn parse_key(t: &[&str]) -> Option<Key> {
    let (v, m) = t.get(1)?.split_once('/')?;
    if t.get(2) != Some(&"at") {
        return None;
    }
    Some(Key {
        value: u32::from_str_radix(v, 16).ok()?,
        mask: u32::from_str_radix(m, 16).ok()?,
        off: t.get(3)?.parse().ok()?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const QDISCS: &str = "qdisc htb 4a44: root refcnt 2 r2q 10 default 0xf direct_packets_stat 4 direct_qlen 32
qdisc pfifo 100: parent 4a44:100 limit 100p
qdisc fq_codel f: parent 4a44:f limit 1000p flows 1024 quantum 1514 target 5ms interval 100ms memory_limit 4Mb ecn drop_batch 64
qdisc noqueue 0: root refcnt 2
qdisc ingress ffff: parent ffff:fff1 ----------------
 Sent 580 bytes 9 pkt (dropped 0, overlimits 0 requeues 0)
";

    #[test]
    fn qdisc_lines() {
        let q = qdiscs(QDISCS);
        assert_eq!(q.len(), 5);
        assert_eq!(q[0].kind, "htb");
        assert_eq!(q[0].handle, "4a44:");
        assert_eq!(q[0].parent, None);
        assert_eq!(q[0].default_minor, Some(0xf));
        assert_eq!(q[1].parent.as_deref(), Some("4a44:100"));
        assert_eq!(q[2].kind, "fq_codel");
        assert_eq!(q[4].kind, "ingress");
        assert_eq!(q[4].parent.as_deref(), Some("ffff:fff1"));
    }

    const CLASSES: &str = "class htb 4a44:100 parent 4a44:a leaf 100: prio 0 rate 4Mbit ceil 4600Kbit burst 1600b cburst 1599b 
 Sent 123456789012 bytes 3 pkt (dropped 0, overlimits 0 requeues 0) 
 backlog 0b 0p requeues 0
 lended: 0 borrowed: 0 giants: 0
 tokens: 50000 ctokens: 43468

class htb 4a44:1 root rate 10Gbit ceil 10Gbit burst 0b cburst 0b 
 Sent 0 bytes 0 pkt (dropped 0, overlimits 0 requeues 0) 

class htb 4a44:a parent 4a44:1 rate 20Mbit ceil 20Mbit burst 1600b cburst 1600b 
";

    #[test]
    fn class_lines_and_counters() {
        let c = classes(CLASSES);
        assert_eq!(c.len(), 3);
        assert_eq!((c[0].major, c[0].minor), (0x4a44, 0x100));
        assert_eq!(c[0].parent.as_deref(), Some("4a44:a"));
        assert_eq!(c[0].rate_bps, 4_000_000);
        assert_eq!(c[0].ceil_bps, 4_600_000);
        assert_eq!(c[0].bytes, 123_456_789_012);
        assert_eq!(c[1].parent, None);
        assert_eq!(c[1].rate_bps, 10_000_000_000);
        assert_eq!(c[2].bytes, 0);
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("800bit"), Some(800));
        assert_eq!(parse_rate("4123Kbit"), Some(4_123_000));
        assert_eq!(parse_rate("1.5Mbit"), Some(1_500_000));
        assert_eq!(parse_rate("12bps"), Some(96));
        assert_eq!(parse_rate("fast"), None);
        assert_eq!(parse_rate("-1bit"), None);
        assert_eq!(parse_rate("NaNbit"), None);
    }

    #[test]
    fn classids() {
        assert_eq!(parse_classid("4a44:100"), Some((0x4a44, 0x100)));
        assert_eq!(parse_classid("4a44:"), Some((0x4a44, 0)));
        assert_eq!(parse_classid("zz:1"), None);
        assert_eq!(parse_classid("12345:1"), None);
        assert_eq!(parse_classid("nocolon"), None);
    }

    const FILTERS: &str = "filter protocol ip pref 4 u32 chain 0 
filter protocol ip pref 4 u32 chain 0 fh 801: ht divisor 1 
filter protocol ip pref 4 u32 chain 0 fh 801::800 order 2048 key ht 801 bkt 0 terminal flowid not_in_hw 
  match c0000202/ffffffff at 12
  match 1fa00000/ffff0000 at 20
	action order 1: mirred (Egress Redirect to device jdshape0) stolen
	index 2 ref 1 bind 1

filter parent 4a44: protocol ipv6 pref 257 u32 chain 0 fh 801::800 order 2048 key ht 801 bkt 0 *flowid 4a44:101 not_in_hw 
  match 20010db8/ffffffff at 24
  match 00010000/ffffffff at 28
  match 00000000/ffffffff at 32
  match 00000002/ffffffff at 36
filter ingress protocol all pref 10 u32 chain 0 fh 800::800 order 2048 key ht 800 bkt 0 flowid 1:1 not_in_hw 
  match 00000000/00000000 at 0
	action order 1: mirred (Egress Redirect to device *) stolen
filter protocol all pref 49152 bpf chain 0 handle 0x1 flowid 1:2 prog.o direct-action
";

    #[test]
    fn filter_lines() {
        let f = filters(FILTERS);
        assert_eq!(f.len(), 6);
        assert!(!f[0].is_rule());
        assert!(!f[1].is_rule());
        assert!(f[2].is_rule());
        assert_eq!(f[2].protocol, "ip");
        assert_eq!(f[2].prio, 4);
        assert_eq!(f[2].kind, "u32");
        assert_eq!(f[2].handle.as_deref(), Some("801::800"));
        assert_eq!(f[2].flowid, None);
        assert_eq!(f[2].redirect_to.as_deref(), Some("jdshape0"));
        assert_eq!(
            f[2].keys,
            vec![
                Key {
                    value: 0xc000_0202,
                    mask: 0xffff_ffff,
                    off: 12
                },
                Key {
                    value: 0x1fa0_0000,
                    mask: 0xffff_0000,
                    off: 20
                }
            ]
        );
        assert_eq!(f[3].flowid.as_deref(), Some("4a44:101"));
        assert_eq!(f[3].keys.len(), 4);
        assert_eq!(f[3].redirect_to, None);
        assert_eq!(f[4].redirect_to.as_deref(), Some("*"));
        assert_eq!(f[4].flowid.as_deref(), Some("1:1"));
        assert_eq!(f[5].kind, "bpf");
        assert!(f[5].is_rule());
    }

    #[test]
    fn garbage_is_ignored_not_a_panic() {
        let junk = "filter pref\nfilter pref x\nmatch zz/zz at q\nclass\nclass htb\nSent\nqdisc\n\u{0}\u{ffff}";
        assert!(filters(junk).is_empty());
        assert!(classes(junk).is_empty());
        assert!(qdiscs(junk).is_empty());
    }
}
