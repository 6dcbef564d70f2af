//! The pure core: from one tick's observations and the previous tick's memory, decide every
//! stream's share, each user's Jellyfin limit, which streams to restart and each viewer's tc
//! class. No I/O here; everything is plain data so it can be tested exhaustively.

use ipnet::IpNet;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

/// Limits are rounded down to this step so tiny measurement noise never rewrites a policy.
pub const LIMIT_STEP_BPS: u64 = 100_000;
/// A raise must be at least this large (relative) to be worth applying.
pub const RAISE_MIN_PCT: u64 = 10;
/// A raise must hold for this many consecutive ticks before it is applied.
pub const RAISE_HOLD_TICKS: u32 = 3;
/// A stream whose bitrate exceeds its new limit by more than this renegotiates. Up to it the
/// stream still fits its share with headers (a limit is the share less `LIMIT_HEADROOM_PCT`:
/// 1.08 × 1.06 < 1.15), only with less room to refill: a small cut costs no restart, and the
/// restart that `restart_min_interval` allows is kept for a change that needs it.
pub const EXCEED_TOLERANCE_PCT: u64 = 8;
/// A transcode renegotiates upward only when the limit is this much above its bitrate.
pub const UPGRADE_FACTOR_PCT: u64 = 150;
/// An uplink running at this share of its capacity is saturated.
pub const SATURATED_PCT: u64 = 97;
/// Users who stopped streaming get their original limit back after this long.
pub const RESTORE_AFTER_S: f64 = 300.0;
/// A stream's Jellyfin limit is its share less this much. Shares, classes and the budget
/// count bytes on the wire; Jellyfin's limit is a media bitrate. The difference carries
/// TCP/IP and Ethernet headers (about 5 % of a full-size packet) and leaves about 10 % so a
/// player refills its buffer (the prefill after a start, seek or restart) while the stream
/// plays on. More room refills faster but lets bigger segment bursts through the class. A stream whose class is exactly its media bitrate receives about 95 % of what it
/// plays and drains its buffer until it stalls.
pub const LIMIT_HEADROOM_PCT: u64 = 15;
/// What a stream needs at the least on the wire, in percent of its media bitrate: the media
/// plus headers, with no room to refill its buffer.
pub const CRITICAL_PCT: u64 = 106;

/// How the budget is divided: the configuration's own enum (`bandwidth.algorithm`).
pub use crate::config::Algorithm;

/// Per-user rules from `config user` sections.
#[derive(Clone, Debug, PartialEq)]
pub struct UserRule {
    pub name: String,
    pub weight: f64,
    pub min_bps: Option<u64>,
    pub max_bps: Option<u64>,
    pub exempt: bool,
}

/// The settings the decision needs, in bits per second.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    /// `None`: capacity unknown, so nothing is managed.
    pub capacity_bps: Option<u64>,
    pub target_pct: f64,
    pub reserve_bps: u64,
    pub algorithm: Algorithm,
    pub min_bps: u64,
    pub max_bps: u64,
    pub burst_pct: u32,
    pub internal: Vec<IpNet>,
    pub users: Vec<UserRule>,
    pub restart_playback: bool,
    pub restart_min_interval_s: f64,
}

impl Policy {
    fn rule(&self, user: &str) -> Option<&UserRule> {
        self.users
            .iter()
            .find(|u| u.name.eq_ignore_ascii_case(user))
    }
}

/// One Jellyfin session that is playing something.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StreamIn {
    pub session_id: String,
    pub user_id: String,
    pub user_name: String,
    pub remote_ip: Option<IpAddr>,
    pub paused: bool,
    pub transcoding: bool,
    /// What the stream uses now: the transcode target, else the source bitrate.
    pub stream_bps: Option<u64>,
    /// The source file's bitrate (what it would use unlimited).
    pub source_bps: Option<u64>,
    pub supports_remote_control: bool,
}

/// One tick's observations.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct Input {
    /// Monotonic seconds.
    pub now: f64,
    /// WAN upload rate; `None` until two samples exist.
    pub wan_tx_bps: Option<u64>,
    /// Measured Jellyfin upload to external viewers; `None` when nothing measures it.
    pub jellyfin_bps: Option<u64>,
    pub streams: Vec<StreamIn>,
}

/// What the decision remembers about a stream between ticks.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct StreamMemory {
    /// The share in force.
    pub applied_bps: u64,
    /// Consecutive ticks a higher share has been available, and the smallest such share.
    pub raise_ticks: u32,
    pub raise_floor_bps: u64,
    pub last_restart: Option<f64>,
    pub restarts: u32,
    /// The user limit this stream last (re)negotiated under, if known.
    pub negotiated_limit_bps: Option<u64>,
    /// Monotonic second the session was last seen playing.
    pub last_seen: f64,
    /// Consecutive ticks after a restart that the stream stayed above its new limit.
    pub over_limit_ticks: u32,
    /// The client plays above its limit even after a restart (a direct-play client that
    /// ignores the server's cap): restarting it again only interrupts it.
    pub ignores_limit: bool,
}

/// Ticks after a restart a stream may still report its old bitrate before it counts as a
/// client that ignores limits (the session list can lag the new playback by a tick).
pub const IGNORES_LIMIT_TICKS: u32 = 3;

#[derive(Clone, Debug, PartialEq, Default)]
pub struct State {
    pub streams: HashMap<String, StreamMemory>,
    /// user id → (name, monotonic second it was last seen streaming externally).
    pub users_seen: HashMap<String, (String, f64)>,
    /// Last tick's measured non-Jellyfin upload.
    pub last_other_bps: Option<u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Share {
    pub session_id: String,
    pub bps: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UserLimit {
    pub user_id: String,
    pub user_name: String,
    pub limit_bps: u64,
}

/// One viewer's class. `rate_bps` 0 means counting only: the class must not cap (the plan
/// then has `managing` false).
#[derive(Clone, Debug, PartialEq)]
pub struct ViewerShare {
    pub ip: IpAddr,
    pub rate_bps: u64,
    pub ceil_bps: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Restart {
    pub session_id: String,
    pub user_name: String,
    pub limit_bps: u64,
    pub reason: RestartReason,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RestartReason {
    /// The stream's bitrate is above its new limit.
    Exceeds,
    /// A transcode can have a much better bitrate now.
    Upgrade,
}

#[derive(Clone, Debug, PartialEq, Default)]
pub struct Plan {
    /// Whether limits are managed at all this tick (capacity known).
    pub managing: bool,
    pub budget_bps: u64,
    pub other_bps: u64,
    pub shares: Vec<Share>,
    /// Desired Jellyfin limit per user with external streams.
    pub user_limits: Vec<UserLimit>,
    /// Users who stopped streaming long enough ago to get their original limit back.
    pub restore_users: Vec<String>,
    pub restarts: Vec<Restart>,
    /// One tc class per external viewer address.
    pub viewers: Vec<ViewerShare>,
}

/// True when `ip` is outside every internal range. IPv4-mapped IPv6 counts as IPv4.
pub fn is_external(ip: IpAddr, internal: &[IpNet]) -> bool {
    let ip = canonical(ip);
    if ip.is_loopback() || ip.is_unspecified() {
        return false;
    }
    !internal.iter().any(|net| net.contains(&ip))
}

/// IPv4-mapped IPv6 (`::ffff:a.b.c.d`) becomes plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6
            .to_ipv4_mapped()
            .map(IpAddr::V4)
            .unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

/// budget = capacity × target − max(measured other traffic, reserve), never negative.
pub fn budget(capacity_bps: u64, target_pct: f64, other_bps: u64, reserve_bps: u64) -> u64 {
    let usable = (capacity_bps as f64 * target_pct.clamp(0.0, 100.0) / 100.0) as u64;
    usable.saturating_sub(other_bps.max(reserve_bps))
}

/// One claimant in the max-min fair division.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Claim {
    pub weight: f64,
    pub min: u64,
    pub max: u64,
}

/// Weighted max-min fair shares of `budget` within each claim's `[min, max]`.
///
/// When the minimums alone exceed the budget every claim gets its minimum (the floor is a
/// promise to viewers); otherwise the total never exceeds the budget. Deterministic.
pub fn max_min_fair(budget: u64, claims: &[Claim]) -> Vec<u64> {
    let floors: Vec<u64> = claims.iter().map(|c| c.min.min(c.max)).collect();
    let floor = sat_sum(floors.iter().copied());
    if floor >= budget {
        return floors;
    }
    let cap = sat_sum(claims.iter().map(|c| c.max.max(c.min)));
    if cap <= budget {
        return claims.iter().map(|c| c.max.max(c.min)).collect();
    }
    // Find the water level λ where Σ clamp(wᵢ·λ, minᵢ, maxᵢ) = budget. The sum is monotone in
    // λ, so bisection converges; 200 rounds reach f64 precision for any realistic input.
    let share = |c: &Claim, level: f64| -> f64 {
        (c.weight.max(1e-9) * level).clamp(c.min as f64, c.max.max(c.min) as f64)
    };
    let total = |level: f64| -> f64 { claims.iter().map(|c| share(c, level)).sum() };
    let (mut lo, mut hi) = (0.0f64, 1.0f64);
    while total(hi) < budget as f64 && hi < 1e18 {
        hi *= 2.0;
    }
    for _ in 0..200 {
        let mid = (lo + hi) / 2.0;
        if total(mid) <= budget as f64 {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    // Floors keep the total within the budget; each share stays within its bounds.
    claims
        .iter()
        .map(|c| (share(c, lo).floor() as u64).clamp(c.min.min(c.max), c.max.max(c.min)))
        .collect()
}

/// Σ that stops at u64::MAX: figures come from the server and the configuration.
fn sat_sum(it: impl Iterator<Item = u64>) -> u64 {
    it.fold(0u64, u64::saturating_add)
}

/// `a * pa >= b * pb` without overflow (products of u64 and a percentage fit in u128).
fn pct_ge(a: u64, pa: u64, b: u64, pb: u64) -> bool {
    a as u128 * pa as u128 >= b as u128 * pb as u128
}

fn round_down(bps: u64) -> u64 {
    (bps / LIMIT_STEP_BPS) * LIMIT_STEP_BPS
}

/// Claims of streams that cannot renegotiate now (`needs[i]` > 0: no remote control, a
/// client that ignores limits, or a restart too recent to repeat) become exactly what their
/// stream needs: no more (it cannot use more; the rest goes to the others) and, as far as the
/// budget goes after every other stream's minimum, no less (the router must not starve a
/// player that cannot be told to slow down).
///
/// When the needs do not all fit: if an equal fraction of each extra need still covers every
/// stream's bare need (media plus headers, `CRITICAL_PCT`), each gets that fraction; otherwise
/// the smallest needs are met in full first, so as few players as possible run dry.
pub fn with_floors(budget: u64, base: &[Claim], needs: &[u64]) -> Vec<Claim> {
    let need = |c: &Claim, n: u64| n.clamp(c.min, c.max.max(c.min));
    let extra: Vec<u64> = base
        .iter()
        .zip(needs)
        .map(|(c, &n)| if n == 0 { 0 } else { need(c, n) - c.min })
        .collect();
    let wanted: u64 = extra.iter().fold(0, |a, e| a.saturating_add(*e));
    let mins: u64 = base.iter().fold(0, |a, c| a.saturating_add(c.min));
    let room = budget.saturating_sub(mins);
    let granted: Vec<u64> = if wanted <= room {
        extra.clone()
    } else {
        let fair: Vec<u64> = extra
            .iter()
            .map(|&e| (e as u128 * room as u128 / wanted.max(1) as u128) as u64)
            .collect();
        let enough = base.iter().zip(needs).zip(&fair).all(|((c, &n), &f)| {
            n == 0
                || pct_ge(
                    c.min.saturating_add(f),
                    100 + LIMIT_HEADROOM_PCT,
                    need(c, n),
                    CRITICAL_PCT,
                )
        });
        if enough {
            fair
        } else {
            let mut order: Vec<usize> = (0..extra.len()).filter(|&i| extra[i] > 0).collect();
            order.sort_by_key(|&i| (extra[i], i));
            let mut left = room;
            let mut g = vec![0; extra.len()];
            for i in order {
                g[i] = extra[i].min(left);
                left -= g[i];
            }
            g
        }
    };
    base.iter()
        .zip(needs)
        .zip(&granted)
        .map(|((c, &n), &g)| {
            if n == 0 {
                *c
            } else {
                Claim {
                    weight: c.weight,
                    min: c.min.saturating_add(g),
                    max: need(c, n),
                }
            }
        })
        .collect()
}

/// The Jellyfin limit (media bitrate) that fits a share (wire rate) with headroom.
pub fn limit_for_share(share_bps: u64) -> u64 {
    round_down(share_bps.saturating_mul(100) / (100 + LIMIT_HEADROOM_PCT)).max(LIMIT_STEP_BPS)
}

/// The decision for one tick. Pure: the same inputs give the same plan and memory.
pub fn decide(prev: &State, input: &Input, policy: &Policy) -> (Plan, State) {
    let mut plan = Plan::default();
    let mut next = State::default();

    // External, playing, non-exempt streams compete for the budget. Exempt ones are never
    // limited but their traffic still comes out of it.
    let mut competing: Vec<&StreamIn> = Vec::new();
    let mut exempt_bps: u64 = 0;
    for s in &input.streams {
        let Some(ip) = s.remote_ip else { continue };
        if !is_external(ip, &policy.internal) {
            continue;
        }
        let rule = policy.rule(&s.user_name);
        if rule.is_some_and(|r| r.exempt) {
            if !s.paused {
                exempt_bps = exempt_bps.saturating_add(s.stream_bps.unwrap_or(0));
            }
            continue;
        }
        competing.push(s);
    }
    // Sort so the division never depends on the order Jellyfin lists sessions in.
    competing.sort_by(|a, b| a.session_id.cmp(&b.session_id));

    let estimated_jf = sat_sum(
        competing
            .iter()
            .filter(|s| !s.paused)
            .map(|s| s.stream_bps.unwrap_or(0)),
    )
    .saturating_add(exempt_bps);
    let jf = input.jellyfin_bps.unwrap_or(estimated_jf);
    let other_now = input.wan_tx_bps.unwrap_or(0).saturating_sub(jf);
    // Two speeds: the router's classes follow the other traffic of this tick (cheap to
    // change, and the household's latency depends on it), while Jellyfin limits — which may
    // restart playback — follow other traffic only once two ticks in a row confirm it, so a
    // one-tick burst never costs a viewer a restart.
    let other_confirmed = prev.last_other_bps.map_or(other_now, |p| p.min(other_now));
    plan.other_bps = other_now;
    next.last_other_bps = Some(other_now);

    let Some(capacity) = policy.capacity_bps else {
        // Without a capacity nothing can be divided, and a guess would throttle viewers for
        // nothing: every remote viewer gets a counting-only class (rate 0 = no cap), so the
        // per-viewer figures go on. Users are remembered so they are still restored.
        next.users_seen = prev.users_seen.clone();
        next.last_other_bps = Some(other_now);
        let ips: BTreeSet<IpAddr> = competing
            .iter()
            .filter_map(|s| s.remote_ip.map(canonical))
            .collect();
        plan.viewers = ips
            .into_iter()
            .map(|ip| ViewerShare {
                ip,
                rate_bps: 0,
                ceil_bps: 0,
            })
            .collect();
        return (plan, next);
    };
    plan.managing = true;
    // A saturated uplink hides how much the household really wants (the modem caps what
    // leaves): assume it wants at least the headroom more, so the queue drains at once.
    let usable = (capacity as f64 * policy.target_pct.clamp(0.0, 100.0) / 100.0) as u64;
    let saturated = input
        .wan_tx_bps
        .is_some_and(|w| w.saturating_mul(100) >= capacity.saturating_mul(SATURATED_PCT));
    let other_fast = if saturated {
        other_now.saturating_add(capacity.saturating_sub(usable))
    } else {
        other_now
    };
    plan.budget_bps = budget(capacity, policy.target_pct, other_fast, policy.reserve_bps)
        .saturating_sub(exempt_bps);
    let limit_budget = budget(
        capacity,
        policy.target_pct,
        other_confirmed,
        policy.reserve_bps,
    )
    .saturating_sub(exempt_bps);

    let base: Vec<Claim> = competing
        .iter()
        .map(|s| {
            let rule = policy.rule(&s.user_name);
            let min = rule.and_then(|r| r.min_bps).unwrap_or(policy.min_bps);
            let mut max = rule
                .and_then(|r| r.max_bps)
                .unwrap_or(policy.max_bps)
                .max(min);
            if policy.algorithm == Algorithm::Demand {
                if let Some(src) = s.source_bps.or(s.stream_bps) {
                    max = max.min(src).max(min);
                }
            }
            let weight = match policy.algorithm {
                Algorithm::Priority => rule.map(|r| r.weight).unwrap_or(1.0),
                _ => 1.0,
            };
            // A paused stream uses nothing now; it keeps only its floor so it can resume.
            let max = if s.paused { min } else { max };
            Claim { weight, min, max }
        })
        .collect();
    // What a stream that cannot renegotiate now needs so it does not drain its player: a
    // share whose limit is its current bitrate.
    let needs: Vec<u64> = competing
        .iter()
        .map(|s| {
            let mem = prev.streams.get(&s.session_id);
            let stuck = !s.paused
                && (!policy.restart_playback
                    || !s.supports_remote_control
                    || mem.is_some_and(|m| {
                        m.ignores_limit
                            || m.last_restart
                                .is_some_and(|t| input.now - t < policy.restart_min_interval_s)
                    }));
            match (stuck, s.stream_bps) {
                (true, Some(bps)) => bps.saturating_mul(100 + LIMIT_HEADROOM_PCT) / 100,
                _ => 0,
            }
        })
        .collect();
    let claims = |budget: u64| with_floors(budget, &base, &needs);
    let claims_limit = claims(limit_budget);
    let claims_fast = claims(plan.budget_bps);
    let targets = max_min_fair(limit_budget, &claims_limit);
    let fast = max_min_fair(plan.budget_bps, &claims_fast);
    let claims = claims_limit;

    let mut per_user: BTreeMap<&str, (String, u64)> = BTreeMap::new();
    let mut per_ip: BTreeMap<IpAddr, u64> = BTreeMap::new();
    let mut fast_share: HashMap<&str, u64> = HashMap::new();
    for ((((s, &target), claim), &fast), fast_claim) in competing
        .iter()
        .zip(&targets)
        .zip(&claims)
        .zip(&fast)
        .zip(&claims_fast)
    {
        let target = round_down(target).max(claim.min).max(LIMIT_STEP_BPS);
        let mut mem = prev.streams.get(&s.session_id).cloned().unwrap_or_default();
        let fresh = mem.applied_bps == 0;
        if s.paused && !fresh {
            // Keep a paused stream's share as it was: it neither needs less nor more.
        } else if fresh || target <= mem.applied_bps {
            mem.applied_bps = target;
            mem.raise_ticks = 0;
        } else if pct_ge(target, 100, mem.applied_bps, 100 + RAISE_MIN_PCT) {
            mem.raise_floor_bps = if mem.raise_ticks == 0 {
                target
            } else {
                mem.raise_floor_bps.min(target)
            };
            mem.raise_ticks = mem.raise_ticks.saturating_add(1);
            if mem.raise_ticks >= RAISE_HOLD_TICKS {
                mem.applied_bps = mem.raise_floor_bps;
                mem.raise_ticks = 0;
            }
        } else {
            mem.raise_ticks = 0;
        }
        mem.last_seen = input.now;
        let share = mem.applied_bps;
        plan.shares.push(Share {
            session_id: s.session_id.clone(),
            bps: share,
        });
        let e = per_user
            .entry(s.user_id.as_str())
            .or_insert((s.user_name.clone(), u64::MAX));
        e.1 = e.1.min(limit_for_share(share));
        if let Some(ip) = s.remote_ip {
            // The class never grants more than the Jellyfin share, and drops at once with
            // this tick's budget.
            let rate = share.min(round_down(fast).max(fast_claim.min));
            fast_share.insert(s.session_id.as_str(), rate);
            // Nor more than the stream can use (its bitrate with the limit's headroom): a
            // transcoder sends segments at whatever its class allows, and a 12 Mbit/s stream
            // bursting at a 16 Mbit/s share fills the modem's queue the moment the household
            // sends too. What the class does not take stays free for the household.
            let class = match s.stream_bps {
                Some(bps) if !s.paused => rate.min(
                    bps.saturating_mul(100 + LIMIT_HEADROOM_PCT)
                        .div_ceil(100)
                        .max(fast_claim.min),
                ),
                _ => rate,
            };
            let v = per_ip.entry(canonical(ip)).or_insert(0);
            *v = v.saturating_add(class);
        }
        next.streams.insert(s.session_id.clone(), mem);
    }

    for (uid, (name, limit)) in &per_user {
        plan.user_limits.push(UserLimit {
            user_id: uid.to_string(),
            user_name: name.clone(),
            limit_bps: *limit,
        });
        next.users_seen
            .insert(uid.to_string(), (name.clone(), input.now));
    }
    for (uid, (name, seen)) in &prev.users_seen {
        if next.users_seen.contains_key(uid) {
            continue;
        }
        if input.now - seen >= RESTORE_AFTER_S {
            plan.restore_users.push(uid.clone());
        } else {
            next.users_seen.insert(uid.clone(), (name.clone(), *seen));
        }
    }
    plan.restore_users.sort();

    // Restarts: a stream renegotiates only when it must (above its new limit) or when a much
    // better bitrate is available to a transcode; never paused, never without remote control,
    // never more often than the minimum interval.
    for s in &competing {
        let Some(limit) = plan
            .user_limits
            .iter()
            .find(|u| u.user_id == s.user_id)
            .map(|u| u.limit_bps)
        else {
            continue;
        };
        let Some(mem) = next.streams.get_mut(&s.session_id) else {
            continue;
        };
        if !policy.restart_playback || s.paused || !s.supports_remote_control {
            continue;
        }
        let Some(rate) = s.stream_bps else { continue };
        // A client still above the limit it renegotiated for ignores limits: the router holds
        // it, restarts would only interrupt it.
        let above = |lim: u64| !pct_ge(lim, 100 + EXCEED_TOLERANCE_PCT, rate, 100);
        if mem.last_restart.is_some() && mem.negotiated_limit_bps.is_some_and(above) {
            mem.over_limit_ticks += 1;
            if mem.over_limit_ticks >= IGNORES_LIMIT_TICKS {
                mem.ignores_limit = true;
            }
        } else {
            mem.over_limit_ticks = 0;
        }
        if mem.ignores_limit {
            continue;
        }
        if let Some(last) = mem.last_restart {
            if input.now - last < policy.restart_min_interval_s {
                continue;
            }
        }
        let reason = if !pct_ge(limit, 100 + EXCEED_TOLERANCE_PCT, rate, 100) {
            Some(RestartReason::Exceeds)
        } else if s.transcoding
            && pct_ge(limit, 100, rate, UPGRADE_FACTOR_PCT)
            && s.source_bps
                .is_some_and(|src| pct_ge(src, 100, rate, UPGRADE_FACTOR_PCT))
            && mem.negotiated_limit_bps.is_some_and(|n| n < limit)
        {
            Some(RestartReason::Upgrade)
        } else {
            None
        };
        if mem.negotiated_limit_bps.is_none() {
            mem.negotiated_limit_bps = Some(limit);
        }
        if let Some(reason) = reason {
            // A restart is costly, so renegotiate for where the budget is now, not for where
            // the confirmed figure still lags: a household upload that is still ramping up
            // would otherwise leave the new stream above its class and stalling.
            let fast = fast_share.get(s.session_id.as_str()).copied();
            let limit = match (reason, fast) {
                (RestartReason::Exceeds, Some(f)) => limit.min(limit_for_share(f)),
                _ => limit,
            };
            if let (RestartReason::Exceeds, Some(f)) = (reason, fast) {
                mem.applied_bps = mem.applied_bps.min(f);
            }
            mem.last_restart = Some(input.now);
            mem.restarts = mem.restarts.saturating_add(1);
            mem.negotiated_limit_bps = Some(limit);
            if let Some(u) = plan.user_limits.iter_mut().find(|u| u.user_id == s.user_id) {
                u.limit_bps = u.limit_bps.min(limit);
            }
            plan.restarts.push(Restart {
                session_id: s.session_id.clone(),
                user_name: s.user_name.clone(),
                limit_bps: limit,
                reason,
            });
        }
    }
    // A restart makes a session vanish from the playing list for a moment, and viewers
    // reconnect: keep what we know of recently seen sessions, so the minimum interval
    // between restarts and the hysteresis survive the gap.
    let keep_s = policy.restart_min_interval_s.max(RESTORE_AFTER_S);
    for (id, mem) in &prev.streams {
        if !next.streams.contains_key(id) && input.now - mem.last_seen < keep_s {
            next.streams.insert(id.clone(), mem.clone());
        }
    }

    for (ip, rate) in per_ip {
        let ceil = rate.saturating_mul(policy.burst_pct as u64) / 100;
        plan.viewers.push(ViewerShare {
            ip,
            rate_bps: rate,
            ceil_bps: ceil.max(rate),
        });
    }
    (plan, next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const M: u64 = 1_000_000;

    /// The Jellyfin limit of a share: the share less the headroom, rounded down.
    fn lim(share: u64) -> u64 {
        limit_for_share(share)
    }

    /// Ordinary figures, the edges of Jellyfin's int32 and of u64.
    fn extreme() -> impl Strategy<Value = u64> {
        prop_oneof![
            0u64..50_000_000,
            Just(i32::MAX as u64),
            Just(2 * i32::MAX as u64),
            Just(i64::MAX as u64),
            Just(u64::MAX),
            Just(u64::MAX / 100 + 1),
            any::<u64>(),
        ]
    }

    fn policy() -> Policy {
        Policy {
            capacity_bps: Some(20 * M),
            target_pct: 90.0,
            reserve_bps: 2 * M,
            algorithm: Algorithm::Equal,
            min_bps: M,
            max_bps: 20 * M,
            burst_pct: 115,
            internal: ["192.168.0.0/16", "10.0.0.0/8", "172.16.0.0/12", "fc00::/7"]
                .iter()
                .map(|s| s.parse().unwrap())
                .collect(),
            users: vec![],
            restart_playback: true,
            restart_min_interval_s: 600.0,
        }
    }

    fn stream(id: &str, user: &str, ip: &str, bps: u64) -> StreamIn {
        StreamIn {
            session_id: id.into(),
            user_id: format!("uid-{user}"),
            user_name: user.into(),
            remote_ip: Some(ip.parse().unwrap()),
            paused: false,
            transcoding: true,
            stream_bps: Some(bps),
            source_bps: Some(bps),
            supports_remote_control: true,
        }
    }

    fn input(now: f64, wan: u64, jf: u64, streams: Vec<StreamIn>) -> Input {
        Input {
            now,
            wan_tx_bps: Some(wan),
            jellyfin_bps: Some(jf),
            streams,
        }
    }

    #[test]
    fn external_classification() {
        let p = policy();
        let ext = |s: &str| is_external(s.parse().unwrap(), &p.internal);
        assert!(ext("203.0.113.7"));
        assert!(ext("2001:db8::1"));
        assert!(ext("100.64.0.1"), "CGNAT is remote, as Jellyfin treats it");
        assert!(!ext("192.168.1.20"));
        assert!(!ext("10.1.2.3"));
        assert!(!ext("172.20.0.1"));
        assert!(!ext("fd00::5"));
        assert!(!ext("127.0.0.1"));
        assert!(!ext("::1"));
        assert!(!ext("::ffff:192.168.1.9"), "mapped IPv4 counts as IPv4");
        assert!(ext("::ffff:203.0.113.9"));
        assert!(!ext("0.0.0.0"));
    }

    #[test]
    fn budget_formula() {
        assert_eq!(budget(20 * M, 90.0, 0, 2 * M), 16 * M);
        assert_eq!(budget(20 * M, 90.0, 5 * M, 2 * M), 13 * M);
        assert_eq!(budget(20 * M, 90.0, 30 * M, 2 * M), 0);
        assert_eq!(budget(20 * M, 100.0, 0, 0), 20 * M);
        assert_eq!(budget(0, 90.0, 0, 0), 0);
    }

    #[test]
    fn fair_equal_split() {
        let c = Claim {
            weight: 1.0,
            min: M,
            max: 20 * M,
        };
        assert_eq!(max_min_fair(16 * M, &[c, c]), vec![8 * M, 8 * M]);
    }

    #[test]
    fn fair_respects_max_and_redistributes() {
        let a = Claim {
            weight: 1.0,
            min: M,
            max: 3 * M,
        };
        let b = Claim {
            weight: 1.0,
            min: M,
            max: 20 * M,
        };
        assert_eq!(max_min_fair(16 * M, &[a, b]), vec![3 * M, 13 * M]);
    }

    #[test]
    fn fair_minimums_force_overcommit() {
        let c = Claim {
            weight: 1.0,
            min: 2 * M,
            max: 20 * M,
        };
        assert_eq!(max_min_fair(3 * M, &[c, c, c]), vec![2 * M, 2 * M, 2 * M]);
    }

    #[test]
    fn fair_weights() {
        let a = Claim {
            weight: 3.0,
            min: 0,
            max: 100 * M,
        };
        let b = Claim {
            weight: 1.0,
            min: 0,
            max: 100 * M,
        };
        let out = max_min_fair(16 * M, &[a, b]);
        assert_eq!(out, vec![12 * M, 4 * M]);
    }

    #[test]
    fn fair_all_saturated_leaves_budget_unused() {
        let c = Claim {
            weight: 1.0,
            min: M,
            max: 2 * M,
        };
        assert_eq!(max_min_fair(16 * M, &[c, c]), vec![2 * M, 2 * M]);
    }

    #[test]
    fn fair_empty_and_zero_budget() {
        assert!(max_min_fair(10 * M, &[]).is_empty());
        let c = Claim {
            weight: 1.0,
            min: 0,
            max: 5 * M,
        };
        assert_eq!(max_min_fair(0, &[c]), vec![0]);
    }

    #[test]
    fn one_external_stream_gets_a_limit_at_once() {
        let (plan, _) = decide(
            &State::default(),
            &input(
                0.0,
                4 * M,
                4 * M,
                vec![stream("s1", "alice", "203.0.113.7", 4 * M)],
            ),
            &policy(),
        );
        assert!(plan.managing);
        assert_eq!(plan.budget_bps, 16 * M);
        assert_eq!(plan.user_limits.len(), 1);
        assert_eq!(plan.user_limits[0].limit_bps, lim(16 * M));
        assert_eq!(plan.viewers[0].ip, "203.0.113.7".parse::<IpAddr>().unwrap());
        // The whole budget is hers to renegotiate for, but her class carries only what her
        // 4 Mbit/s stream can use (with the limit's headroom): its bursts stay small.
        assert_eq!(plan.viewers[0].rate_bps, 4_600_000);
        assert_eq!(plan.viewers[0].ceil_bps, 4_600_000 * 115 / 100);
        assert!(
            plan.restarts.is_empty(),
            "a 4 Mbit stream under a 16 Mbit limit stays"
        );
    }

    #[test]
    fn internal_streams_are_never_limited() {
        let (plan, _) = decide(
            &State::default(),
            &input(
                0.0,
                0,
                0,
                vec![stream("s1", "carol", "192.168.1.20", 8 * M)],
            ),
            &policy(),
        );
        assert!(plan.user_limits.is_empty());
        assert!(plan.viewers.is_empty());
        assert!(plan.shares.is_empty());
    }

    #[test]
    fn two_external_streams_split_the_budget() {
        let (plan, _) = decide(
            &State::default(),
            &input(
                0.0,
                8 * M,
                8 * M,
                vec![
                    stream("s1", "alice", "203.0.113.7", 4 * M),
                    stream("s2", "bob", "198.51.100.9", 4 * M),
                ],
            ),
            &policy(),
        );
        let limits: Vec<u64> = plan.user_limits.iter().map(|u| u.limit_bps).collect();
        assert_eq!(limits, vec![lim(8 * M), lim(8 * M)]);
    }

    #[test]
    fn every_limit_leaves_room_for_headers_and_a_refill() {
        for share in (1..=400).map(|i| i * 250_000) {
            let l = lim(share);
            // Headers (~5 %) plus a refill margin (~5 % or more) fit inside the class.
            assert!(l * 110 <= share * 100, "share {share} limit {l}");
            // And no more is given away than the headroom and the rounding step.
            assert!(l * (100 + LIMIT_HEADROOM_PCT) + LIMIT_STEP_BPS * 115 >= share * 100);
        }
        assert_eq!(
            lim(0),
            LIMIT_STEP_BPS,
            "a limit is never 0 (0 means none in Jellyfin)"
        );
    }

    #[test]
    fn a_stream_as_fast_as_its_class_renegotiates_to_fit_it() {
        // Two 8 Mbit/s transcodes, budget 16: classes of 8 each would carry only about 7.6 of
        // media (headers) and the players would drain. Both renegotiate below their class.
        let streams = vec![
            stream("s1", "alice", "203.0.113.7", 8 * M),
            stream("s2", "bob", "198.51.100.9", 8 * M),
        ];
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 16 * M, 16 * M, streams),
            &policy(),
        );
        assert_eq!(plan.restarts.len(), 2);
        for (r, v) in plan.restarts.iter().zip(&plan.viewers) {
            assert_eq!(r.reason, RestartReason::Exceeds);
            assert_eq!(v.rate_bps, 8 * M);
            assert!(r.limit_bps * 110 <= v.rate_bps * 100, "{r:?} in {v:?}");
        }
    }

    #[test]
    fn floors_for_streams_that_cannot_slow_down_fit_the_budget() {
        let c = Claim {
            weight: 1.0,
            min: M,
            max: 10 * M,
        };
        let bounds =
            |out: Vec<Claim>| -> Vec<(u64, u64)> { out.iter().map(|c| (c.min, c.max)).collect() };
        // Room for every need: the claims are the needs (within [min, max]); the flexible
        // stream keeps its own bounds.
        let out = with_floors(16 * M, &[c, c, c], &[0, 5 * M, 30 * M]);
        assert_eq!(
            bounds(out),
            vec![(M, 10 * M), (5 * M, 5 * M), (10 * M, 10 * M)]
        );
        // A little short (needs 8 + 8, room 15 after the flexible minimum): both get the same
        // fraction, still above their bare need.
        let out = with_floors(16 * M, &[c, c, c], &[0, 8 * M, 8 * M]);
        assert_eq!(
            bounds(out),
            vec![(M, 10 * M), (7_500_000, 8 * M), (7_500_000, 8 * M)]
        );
        // Far short (needs 5 + 10, room 6): the smaller need is met in full, the larger gets
        // the rest; the flexible stream keeps its minimum.
        let out = with_floors(9 * M, &[c, c, c], &[0, 5 * M, 30 * M]);
        assert_eq!(
            bounds(out),
            vec![(M, 10 * M), (5 * M, 5 * M), (3 * M, 10 * M)]
        );
        // A budget below the minimums adds nothing to the floors.
        let out = with_floors(2 * M, &[c, c, c], &[0, 5 * M, 9 * M]);
        assert_eq!(bounds(out), vec![(M, 10 * M), (M, 5 * M), (M, 9 * M)]);
    }

    #[test]
    fn a_stream_that_cannot_be_restarted_keeps_a_class_it_fits_in() {
        // bob's client has no remote control and plays 6 Mbit/s: an equal split of 12 would
        // give him 6 on the wire, about 5.7 of media: he would drain. He keeps 6.9.
        let mut bob = stream("s2", "bob", "198.51.100.9", 6 * M);
        bob.supports_remote_control = false;
        let streams = vec![stream("s1", "alice", "203.0.113.7", 4 * M), bob];
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 16 * M, 10 * M, streams),
            &policy(),
        );
        // other 6 → budget 12.
        assert_eq!(plan.budget_bps, 12 * M);
        let rates: Vec<u64> = plan.viewers.iter().map(|v| v.rate_bps).collect();
        // Viewers come sorted by address: bob (198.51…) first.
        // alice's share is the other 5.1; her 4 Mbit/s stream's class is what it uses, 4.6.
        assert_eq!(plan.shares[0].bps, 12 * M - 6_900_000);
        assert_eq!(rates, vec![6_900_000, 4_600_000]);
        assert!(plan.restarts.is_empty());
    }

    #[test]
    fn what_a_fixed_stream_cannot_use_goes_to_the_others() {
        // bob's client (no remote control) plays 4 Mbit/s whatever happens: he needs 4.6 on
        // the wire, not half the budget. alice gets the other 11.4 and her 8 Mbit/s transcode
        // fits without a restart.
        let mut bob = stream("s2", "bob", "198.51.100.9", 4 * M);
        bob.supports_remote_control = false;
        let alice = stream("s1", "alice", "203.0.113.7", 8 * M);
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 12 * M, 12 * M, vec![alice, bob]),
            &policy(),
        );
        assert!(plan.restarts.is_empty(), "{:?}", plan.restarts);
        assert_eq!(plan.shares[0].bps, 11_400_000);
        // Her class: what her 8 Mbit/s stream uses, with the headroom (9.2 of the 11.4).
        let rates: Vec<u64> = plan.viewers.iter().map(|v| v.rate_bps).collect();
        assert_eq!(rates, vec![4_600_000, 9_200_000]);
    }

    #[test]
    fn a_restarted_stream_is_not_starved_while_it_may_not_restart_again() {
        // restart_min_interval 600: alice and bob renegotiated at 6.9 when they met. dave
        // joins 10 s later: an equal third (5.3) would leave their streams above their classes
        // for ten minutes. They keep as much of their need (7.9) as the budget allows after
        // dave's minimum; dave, who can still renegotiate, gets the minimum.
        let p = policy();
        let a = stream("s1", "alice", "203.0.113.7", 8 * M);
        let b = stream("s2", "bob", "198.51.100.9", 8 * M);
        let (plan, st) = decide(
            &State::default(),
            &input(0.0, 16 * M, 16 * M, vec![a.clone(), b.clone()]),
            &p,
        );
        assert_eq!(plan.restarts.len(), 2);
        let a = stream("s1", "alice", "203.0.113.7", lim(8 * M));
        let b = stream("s2", "bob", "198.51.100.9", lim(8 * M));
        let d = stream("s3", "dave", "198.51.100.10", 8 * M);
        let (plan, _) = decide(&st, &input(10.0, 14 * M, 14 * M, vec![a, b, d]), &p);
        assert!(plan.restarts.iter().all(|r| r.session_id == "s3"));
        let rates: BTreeMap<IpAddr, u64> =
            plan.viewers.iter().map(|v| (v.ip, v.rate_bps)).collect();
        let rate = |ip: &str| rates[&ip.parse::<IpAddr>().unwrap()];
        // 16 − 1 for dave = 15, shared by the two equal needs: 7.5 each.
        assert_eq!(rate("203.0.113.7"), 7_500_000);
        assert_eq!(rate("198.51.100.9"), 7_500_000);
        assert_eq!(rate("198.51.100.10"), M);
        assert!(rates.values().sum::<u64>() <= plan.budget_bps);
    }

    #[test]
    fn a_client_that_ignores_limits_is_restarted_once_then_held_by_the_router() {
        let mut p = policy();
        p.restart_min_interval_s = 20.0;
        // A direct-play client of a 12 Mbit/s file with remote control; household at 10.
        let s = vec![stream("s1", "alice", "203.0.113.7", 12 * M)];
        let mut st = State::default();
        let mut restarts = 0;
        for t in 0..60 {
            let (plan, n) = decide(&st, &input(t as f64 * 2.0, 22 * M, 12 * M, s.clone()), &p);
            restarts += plan.restarts.len();
            st = n;
        }
        assert_eq!(restarts, 1, "one restart, then never again");
        assert!(st.streams["s1"].ignores_limit);
        // Not restarted, still held: the class is this tick's budget (a saturated uplink: 6),
        // never above, whatever the stream needs.
        let (plan, _) = decide(&st, &input(200.0, 22 * M, 12 * M, s), &p);
        assert_eq!(plan.budget_bps, 6 * M);
        assert_eq!(plan.viewers[0].rate_bps, 6 * M);
        assert!(plan.restarts.is_empty());
    }

    #[test]
    fn rising_household_upload_lowers_limits_and_restarts_only_exceeding_streams() {
        let p = policy();
        let streams = vec![
            stream("s1", "alice", "203.0.113.7", 6 * M),
            stream("s2", "bob", "198.51.100.9", 2 * M),
        ];
        let (plan, st) = decide(
            &State::default(),
            &input(0.0, 8 * M, 8 * M, streams.clone()),
            &p,
        );
        assert_eq!(plan.user_limits[0].limit_bps, lim(8 * M));
        assert!(plan.restarts.is_empty());
        // The household starts a 10 Mbit/s upload: the router's classes follow at once...
        let (plan, st) = decide(&st, &input(5.0, 18 * M, 8 * M, streams.clone()), &p);
        assert_eq!(plan.budget_bps, 8 * M);
        let rates: Vec<u64> = plan.viewers.iter().map(|v| v.rate_bps).collect();
        // bob (198.51…) plays 2 Mbit/s: his class is what he uses, 2.3.
        assert_eq!(rates, vec![2_300_000, 4 * M]);
        // ...but one tick is not trusted enough to change Jellyfin limits or restart anyone.
        assert_eq!(plan.user_limits[0].limit_bps, lim(8 * M));
        assert!(plan.restarts.is_empty());
        // ...the second confirms it: budget 18 - 10 = 8, 4 each.
        let (plan, _) = decide(&st, &input(6.0, 18 * M, 8 * M, streams), &p);
        assert_eq!(plan.budget_bps, 8 * M);
        let limits: Vec<u64> = plan.user_limits.iter().map(|u| u.limit_bps).collect();
        assert_eq!(limits, vec![lim(4 * M), lim(4 * M)]);
        assert_eq!(plan.restarts.len(), 1);
        assert_eq!(plan.restarts[0].session_id, "s1");
        assert_eq!(plan.restarts[0].reason, RestartReason::Exceeds);
    }

    #[test]
    fn restarts_respect_min_interval_pause_and_remote_control() {
        let p = policy();
        let mut s = stream("s1", "alice", "203.0.113.7", 12 * M);
        // 12 Mbit stream, budget 16 → fine.
        let (plan, st) = decide(
            &State::default(),
            &input(0.0, 12 * M, 12 * M, vec![s.clone()]),
            &p,
        );
        assert!(plan.restarts.is_empty());
        // Household takes 10 (seen twice): budget 8 → restart.
        let (_, st) = decide(&st, &input(4.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        let (plan, st) = decide(&st, &input(5.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        assert_eq!(plan.restarts.len(), 1);
        // The stream still reports 12 (ignores the limit): no second restart within 600 s.
        let (plan, st2) = decide(&st, &input(10.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        assert!(plan.restarts.is_empty());
        let (plan, _) = decide(&st2, &input(700.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        assert_eq!(
            plan.restarts.len(),
            1,
            "after the interval it may try again"
        );

        s.paused = true;
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 22 * M, 12 * M, vec![s.clone()]),
            &p,
        );
        assert!(plan.restarts.is_empty(), "never restart a paused session");
        s.paused = false;
        s.supports_remote_control = false;
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 22 * M, 12 * M, vec![s.clone()]),
            &p,
        );
        assert!(
            plan.restarts.is_empty(),
            "never restart without remote control"
        );
        let mut p2 = p.clone();
        p2.restart_playback = false;
        s.supports_remote_control = true;
        let (plan, _) = decide(&State::default(), &input(0.0, 22 * M, 12 * M, vec![s]), &p2);
        assert!(plan.restarts.is_empty());
    }

    #[test]
    fn decrease_is_immediate_increase_needs_hold() {
        let p = policy();
        let s = vec![stream("s1", "alice", "203.0.113.7", 3 * M)];
        // other = 10 → budget 8.
        let (plan, st) = decide(&State::default(), &input(0.0, 13 * M, 3 * M, s.clone()), &p);
        assert_eq!(plan.user_limits[0].limit_bps, lim(8 * M));
        // other drops to 0 → budget 16, but it must hold for RAISE_HOLD_TICKS ticks.
        let mut st = st;
        for tick in 1..RAISE_HOLD_TICKS {
            let (plan, n) = decide(&st, &input(tick as f64, 3 * M, 3 * M, s.clone()), &p);
            assert_eq!(plan.user_limits[0].limit_bps, lim(8 * M), "tick {tick}");
            st = n;
        }
        let (plan, st) = decide(&st, &input(9.0, 3 * M, 3 * M, s.clone()), &p);
        assert_eq!(plan.user_limits[0].limit_bps, lim(16 * M));
        // A fall applies as soon as it is confirmed by a second sample.
        let (_, st) = decide(&st, &input(10.0, 15 * M, 3 * M, s.clone()), &p);
        let (plan, _) = decide(&st, &input(11.0, 15 * M, 3 * M, s), &p);
        assert_eq!(plan.user_limits[0].limit_bps, lim(6 * M));
    }

    #[test]
    fn interrupted_raise_starts_over() {
        let p = policy();
        let s = vec![stream("s1", "alice", "203.0.113.7", 3 * M)];
        let (_, mut st) = decide(&State::default(), &input(0.0, 13 * M, 3 * M, s.clone()), &p);
        // The raise needs RAISE_HOLD_TICKS quiet ticks; a confirmed fall in between resets it.
        let pattern = [3, 13, 13, 3, 13, 13, 3, 13, 13];
        for (i, w) in pattern.iter().enumerate() {
            let (plan, n) = decide(&st, &input(i as f64 + 1.0, w * M, 3 * M, s.clone()), &p);
            assert_eq!(
                plan.user_limits[0].limit_bps,
                lim(8 * M),
                "no flapping at {i}"
            );
            st = n;
        }
    }

    #[test]
    fn restart_interval_survives_a_session_vanishing_briefly() {
        let p = policy();
        let s = stream("s1", "alice", "203.0.113.7", 12 * M);
        let (_, st) = decide(
            &State::default(),
            &input(0.0, 12 * M, 12 * M, vec![s.clone()]),
            &p,
        );
        let (_, st) = decide(&st, &input(1.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        let (plan, st) = decide(&st, &input(2.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        assert_eq!(plan.restarts.len(), 1);
        // The restart stops the session for a tick...
        let (_, st) = decide(&st, &input(3.0, 22 * M, 12 * M, vec![]), &p);
        // ...and when it is back (still above its limit) it is not restarted again.
        let (plan, st) = decide(&st, &input(4.0, 22 * M, 12 * M, vec![s.clone()]), &p);
        assert!(plan.restarts.is_empty());
        assert_eq!(st.streams["s1"].restarts, 1);
        // Long gone sessions are forgotten.
        let (_, st) = decide(&st, &input(4.0 + 601.0, 0, 0, vec![]), &p);
        assert!(st.streams.is_empty());
    }

    #[test]
    fn a_restart_renegotiates_for_the_current_budget() {
        let p = policy();
        let s = vec![stream("s1", "alice", "203.0.113.7", 13 * M)];
        let (_, st) = decide(
            &State::default(),
            &input(0.0, 13 * M, 13 * M, s.clone()),
            &p,
        );
        // A household upload ramping up: 6 then 12 Mbit/s of other traffic.
        let (plan, st) = decide(&st, &input(1.0, 19 * M, 13 * M, s.clone()), &p);
        assert!(plan.restarts.is_empty(), "not confirmed yet");
        let (plan, _) = decide(&st, &input(2.0, 25 * M, 13 * M, s), &p);
        // Confirmed other 6 → share 12, limit 10 < 13: restart. This tick's other is 12 on a saturated
        // uplink (+2 headroom) → budget 4, which is what the stream renegotiates for.
        assert_eq!(plan.restarts.len(), 1);
        assert_eq!(plan.restarts[0].limit_bps, lim(4 * M));
        assert_eq!(plan.user_limits[0].limit_bps, lim(4 * M));
        assert_eq!(plan.viewers[0].rate_bps, 4 * M);
    }

    #[test]
    fn a_saturated_uplink_cuts_the_classes_deeper() {
        let p = policy();
        let s = vec![
            stream("s1", "alice", "203.0.113.7", 8 * M),
            stream("s2", "bob", "198.51.100.9", 8 * M),
        ];
        let (_, st) = decide(
            &State::default(),
            &input(0.0, 16 * M, 16 * M, s.clone()),
            &p,
        );
        // The household starts: the modem caps the uplink at 20, 4 of it is theirs so far.
        let (plan, _) = decide(&st, &input(1.0, 20 * M, 16 * M, s.clone()), &p);
        // 18 − (4 + 2 headroom) = 12, not 14: the queue drains instead of staying full.
        assert_eq!(plan.budget_bps, 12 * M);
        assert_eq!(plan.other_bps, 4 * M);
        // Below saturation nothing is added.
        let (plan, _) = decide(&st, &input(1.0, 19 * M, 15 * M, s), &p);
        assert_eq!(plan.budget_bps, 14 * M);
    }

    #[test]
    fn one_tick_spike_of_other_traffic_does_not_cut() {
        let p = policy();
        let s = vec![stream("s1", "alice", "203.0.113.7", 3 * M)];
        let (plan, st) = decide(&State::default(), &input(0.0, 3 * M, 3 * M, s.clone()), &p);
        assert_eq!(plan.user_limits[0].limit_bps, lim(16 * M));
        // A burst misattributed to "other" for one tick...
        let (plan, st) = decide(&st, &input(1.0, 20 * M, 3 * M, s.clone()), &p);
        assert_eq!(plan.user_limits[0].limit_bps, lim(16 * M));
        let (plan, _) = decide(&st, &input(2.0, 3 * M, 3 * M, s), &p);
        assert_eq!(plan.user_limits[0].limit_bps, lim(16 * M));
        assert!(plan.restarts.is_empty());
    }

    #[test]
    fn small_raises_are_ignored() {
        let p = policy();
        let s = vec![stream("s1", "alice", "203.0.113.7", 3 * M)];
        let (_, mut st) = decide(&State::default(), &input(0.0, 13 * M, 3 * M, s.clone()), &p);
        for i in 1..10 {
            // Budget 8.5 vs applied 8: under 10 %, never applied.
            let (plan, n) = decide(&st, &input(i as f64, 12_500_000, 3 * M, s.clone()), &p);
            assert_eq!(plan.user_limits[0].limit_bps, lim(8 * M));
            st = n;
        }
    }

    #[test]
    fn per_user_limit_is_the_smallest_share_and_viewers_sum_by_address() {
        let mut p = policy();
        p.algorithm = Algorithm::Demand;
        let mut a = stream("s1", "alice", "203.0.113.7", 2 * M);
        a.source_bps = Some(2 * M);
        let b = stream("s2", "alice", "203.0.113.7", 10 * M);
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 12 * M, 12 * M, vec![a, b]),
            &p,
        );
        assert_eq!(plan.user_limits.len(), 1);
        assert_eq!(plan.user_limits[0].limit_bps, lim(2 * M));
        assert_eq!(plan.viewers.len(), 1, "one address, one class");
        assert_eq!(plan.viewers[0].rate_bps, 12 * M);
    }

    #[test]
    fn demand_gives_unused_share_to_others() {
        let mut p = policy();
        p.algorithm = Algorithm::Demand;
        let (plan, _) = decide(
            &State::default(),
            &input(
                0.0,
                0,
                0,
                vec![
                    stream("s1", "alice", "203.0.113.7", 3 * M),
                    stream("s2", "bob", "198.51.100.9", 30 * M),
                ],
            ),
            &p,
        );
        let l: Vec<u64> = plan.shares.iter().map(|s| s.bps).collect();
        assert_eq!(l, vec![3 * M, 13 * M]);
    }

    #[test]
    fn priority_weights_and_user_overrides() {
        let mut p = policy();
        p.algorithm = Algorithm::Priority;
        p.users = vec![
            UserRule {
                name: "Alice".into(),
                weight: 3.0,
                min_bps: None,
                max_bps: None,
                exempt: false,
            },
            UserRule {
                name: "bob".into(),
                weight: 1.0,
                min_bps: Some(2 * M),
                max_bps: Some(3 * M),
                exempt: false,
            },
        ];
        let (plan, _) = decide(
            &State::default(),
            &input(
                0.0,
                0,
                0,
                vec![
                    stream("s1", "alice", "203.0.113.7", 3 * M),
                    stream("s2", "bob", "198.51.100.9", 3 * M),
                    stream("s3", "dave", "198.51.100.10", 3 * M),
                ],
            ),
            &p,
        );
        let l: Vec<u64> = plan.shares.iter().map(|s| s.bps).collect();
        // bob capped at 3; alice:dave = 3:1 of the remaining 13 → 9.75 / 3.25 (rounded down).
        assert_eq!(l, vec![9_700_000, 3 * M, 3_200_000]);
    }

    #[test]
    fn exempt_users_are_not_limited_but_count() {
        let mut p = policy();
        p.users = vec![UserRule {
            name: "alice".into(),
            weight: 1.0,
            min_bps: None,
            max_bps: None,
            exempt: true,
        }];
        let (plan, _) = decide(
            &State::default(),
            &input(
                0.0,
                10 * M,
                10 * M,
                vec![
                    stream("s1", "alice", "203.0.113.7", 6 * M),
                    stream("s2", "bob", "198.51.100.9", 4 * M),
                ],
            ),
            &p,
        );
        assert_eq!(plan.user_limits.len(), 1);
        assert_eq!(plan.user_limits[0].user_name, "bob");
        assert_eq!(plan.user_limits[0].limit_bps, lim(10 * M));
    }

    #[test]
    fn unknown_capacity_manages_nothing() {
        let mut p = policy();
        p.capacity_bps = None;
        let (plan, _) = decide(
            &State::default(),
            &input(0.0, 0, 0, vec![stream("s1", "alice", "203.0.113.7", 4 * M)]),
            &p,
        );
        assert!(!plan.managing);
        assert!(plan.user_limits.is_empty());
        assert!(plan.restarts.is_empty());
        assert_eq!(plan.budget_bps, 0);
        // The viewer still gets a class, to count its bytes, but one without a cap.
        assert_eq!(
            plan.viewers,
            vec![ViewerShare {
                ip: "203.0.113.7".parse().unwrap(),
                rate_bps: 0,
                ceil_bps: 0
            }]
        );
    }

    #[test]
    fn unknown_capacity_never_limits_whatever_the_load() {
        // Two 8 Mbit/s remote streams, a busy uplink, over many ticks: never a limit, a
        // restart or a capped class while nothing says how big the uplink is.
        let mut p = policy();
        p.capacity_bps = None;
        let streams = vec![
            stream("s1", "alice", "203.0.113.7", 8 * M),
            stream("s2", "bob", "::ffff:198.51.100.9", 8 * M),
            stream("s3", "carol", "192.168.1.20", 8 * M),
        ];
        let mut st = State::default();
        for t in 0..20 {
            let (plan, n) = decide(
                &st,
                &input(t as f64, (16 + t) * M, 16 * M, streams.clone()),
                &p,
            );
            assert!(!plan.managing);
            assert!(plan.user_limits.is_empty() && plan.restarts.is_empty());
            assert!(plan.shares.is_empty());
            assert_eq!(
                plan.viewers.len(),
                2,
                "one counting class per remote viewer"
            );
            assert!(plan
                .viewers
                .iter()
                .all(|v| v.rate_bps == 0 && v.ceil_bps == 0));
            assert!(plan
                .viewers
                .iter()
                .any(|v| v.ip == "198.51.100.9".parse::<IpAddr>().unwrap()));
            st = n;
        }
        // Once the capacity is known, the same streams are managed from the first tick.
        let (plan, _) = decide(&st, &input(20.0, 16 * M, 16 * M, streams), &policy());
        assert!(plan.managing);
        assert_eq!(plan.viewers.len(), 2);
        assert!(plan.viewers.iter().all(|v| v.rate_bps == 8 * M));
    }

    #[test]
    fn users_who_stop_are_restored_after_a_while() {
        let p = policy();
        let (_, st) = decide(
            &State::default(),
            &input(0.0, 0, 0, vec![stream("s1", "alice", "203.0.113.7", 4 * M)]),
            &p,
        );
        let (plan, st) = decide(&st, &input(10.0, 0, 0, vec![]), &p);
        assert!(plan.restore_users.is_empty());
        let (plan, st) = decide(&st, &input(RESTORE_AFTER_S + 1.0, 0, 0, vec![]), &p);
        assert_eq!(plan.restore_users, vec!["uid-alice".to_string()]);
        let (plan, _) = decide(&st, &input(RESTORE_AFTER_S + 5.0, 0, 0, vec![]), &p);
        assert!(plan.restore_users.is_empty(), "restored once");
    }

    #[test]
    fn upgrade_restart_when_much_more_is_available() {
        let p = policy();
        // A transcode at what its share's limit allows.
        let mut s = stream("s1", "alice", "203.0.113.7", lim(4 * M));
        s.source_bps = Some(15 * M);
        // Congested: budget 4 → its limit recorded as negotiated.
        let (plan, mut st) = decide(
            &State::default(),
            &input(0.0, 18 * M, 4 * M, vec![s.clone()]),
            &p,
        );
        assert_eq!(plan.user_limits[0].limit_bps, lim(4 * M));
        assert!(plan.restarts.is_empty());
        let mut restarted = 0;
        for t in 1..=5 {
            let (plan, n) = decide(&st, &input(t as f64, 4 * M, 4 * M, vec![s.clone()]), &p);
            restarted += plan.restarts.len();
            if let Some(r) = plan.restarts.first() {
                assert_eq!(r.reason, RestartReason::Upgrade);
            }
            st = n;
        }
        assert_eq!(restarted, 1, "one upgrade once the raise held");
    }

    #[test]
    fn deterministic_regardless_of_session_order() {
        let p = policy();
        let a = stream("s1", "alice", "203.0.113.7", 4 * M);
        let b = stream("s2", "bob", "198.51.100.9", 4 * M);
        let (p1, _) = decide(
            &State::default(),
            &input(0.0, 0, 0, vec![a.clone(), b.clone()]),
            &p,
        );
        let (p2, _) = decide(&State::default(), &input(0.0, 0, 0, vec![b, a]), &p);
        assert_eq!(p1, p2);
    }

    proptest! {
        #[test]
        fn fair_shares_within_bounds(budget in 0u64..200_000_000,
                                     claims in prop::collection::vec((0.1f64..10.0, 0u64..10_000_000, 0u64..50_000_000), 0..12)) {
            let claims: Vec<Claim> = claims.into_iter()
                .map(|(w, a, b)| Claim { weight: w, min: a.min(b), max: a.max(b) })
                .collect();
            let out = max_min_fair(budget, &claims);
            prop_assert_eq!(out.len(), claims.len());
            let floor: u64 = claims.iter().map(|c| c.min).sum();
            let total: u64 = out.iter().sum();
            for (o, c) in out.iter().zip(&claims) {
                prop_assert!(*o >= c.min && *o <= c.max);
            }
            if floor <= budget {
                prop_assert!(total <= budget, "total {} > budget {}", total, budget);
                let cap: u64 = claims.iter().map(|c| c.max).sum();
                // Work-conserving: either everyone is at max or the budget is (nearly) used.
                prop_assert!(total >= budget.min(cap).saturating_sub(claims.len() as u64 * 2));
            } else {
                prop_assert_eq!(total, floor);
            }
            prop_assert_eq!(out, max_min_fair(budget, &claims));
        }

        #[test]
        fn decide_never_exceeds_budget_unless_minimums_force_it(
            wan in 0u64..40_000_000, n in 0usize..8, rates in prop::collection::vec(0u64..30_000_000, 8)) {
            let p = policy();
            let streams: Vec<StreamIn> = (0..n)
                .map(|i| stream(&format!("s{i}"), &format!("u{i}"), &format!("203.0.113.{}", i + 1), rates[i]))
                .collect();
            let (plan, _) = decide(&State::default(), &input(0.0, wan, 0, streams), &p);
            let total: u64 = plan.shares.iter().map(|s| s.bps).sum();
            let floor = n as u64 * p.min_bps;
            if floor <= plan.budget_bps {
                prop_assert!(total <= plan.budget_bps);
            } else {
                prop_assert!(total <= floor);
            }
            for s in &plan.shares {
                prop_assert!(s.bps >= p.min_bps && s.bps <= p.max_bps);
            }
        }
    }

    proptest! {
        /// Server-supplied figures can be anything up to u64::MAX (and the configuration's up
        /// to its own bounds): every sum, product and percentage saturates. Runs in debug
        /// builds, where an overflow panics.
        #[test]
        fn decide_survives_extreme_figures(
            wan in extreme(), jf in proptest::option::of(extreme()), capacity in proptest::option::of(extreme()),
            reserve in extreme(), min in extreme(), max in extreme(), burst in any::<u32>(),
            rates in prop::collection::vec((proptest::option::of(extreme()), proptest::option::of(extreme()), any::<bool>(), any::<bool>()), 0..6),
            user_min in proptest::option::of(extreme()), ticks in 1usize..6,
            algorithm in prop_oneof![Just(Algorithm::Equal), Just(Algorithm::Demand), Just(Algorithm::Priority)]) {
            let mut p = policy();
            p.capacity_bps = capacity;
            p.reserve_bps = reserve;
            p.min_bps = min;
            p.max_bps = max;
            p.burst_pct = burst;
            p.algorithm = algorithm;
            p.users = vec![UserRule { name: "u0".into(), weight: 1e300, min_bps: user_min, max_bps: Some(u64::MAX), exempt: false },
                           UserRule { name: "u1".into(), weight: 0.0, min_bps: None, max_bps: None, exempt: true }];
            let streams: Vec<StreamIn> = rates.iter().enumerate().map(|(i, (rate, src, paused, tr))| StreamIn {
                stream_bps: *rate, source_bps: *src, paused: *paused, transcoding: *tr,
                ..stream(&format!("s{i}"), &format!("u{}", i % 3), &format!("203.0.113.{}", i % 2 + 1), 0)
            }).collect();
            let mut state = State::default();
            for t in 0..ticks {
                let inp = Input { now: t as f64 * 1e6, wan_tx_bps: Some(wan), jellyfin_bps: jf, streams: streams.clone() };
                let (plan, next) = decide(&state, &inp, &p);
                for v in &plan.viewers {
                    prop_assert!(v.ceil_bps >= v.rate_bps);
                }
                state = next;
            }
        }
    }
}
