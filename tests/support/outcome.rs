//! Outcome figures (`homenet outcome`, `make outcome`): each scenario of the matrix played
//! twice at the same time in two separate emulated networks, with and without jellydemon, and
//! the figures a user cares about side by side: the household's latency, the viewers' stalls,
//! restarts per demand change, how much of the target the uplink used, and the household upload
//! achieved. The table's columns are explained in the README ("Control quality").
#![allow(dead_code)]

use super::load::Args;
use super::scenario::{
    demand_changes, render_summary, run_scenario, RunOptions, Scenario, Summary,
};
use super::topology;
use std::fmt::Write as _;
use std::path::PathBuf;

/// One scenario's figures from one run (pure, from its summary).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Figures {
    /// Household RTT (p50, p95) in ms: idle, while streaming, while the household uploads.
    pub rtt_idle: Option<(f64, f64)>,
    pub rtt_streaming: Option<(f64, f64)>,
    pub rtt_loaded: Option<(f64, f64)>,
    /// Stalls and stall time over all viewers.
    pub stalls: u64,
    pub stall_ms: u64,
    /// Restarts over all viewers, and the demand changes they lived through.
    pub restarts: u64,
    pub demand_changes: u64,
    /// The busiest phase's mean uplink as a share of the target (capacity × target_pct).
    pub uplink_of_target: f64,
    /// Household uploads: achieved and asked for (paced ones), bit/s.
    pub household_bps: u64,
    pub household_asked_bps: u64,
    /// Control goals met, of all judged.
    pub goals_met: usize,
    pub goals: usize,
}

/// The figures of one run.
pub fn figures(sc: &Scenario, s: &Summary) -> Figures {
    let rtt = |name: &str| {
        s.phases
            .iter()
            .find(|p| p.phase == name)
            .map(|p| (p.rtt.p50_ms, p.rtt.p95_ms))
    };
    let target_pct = sc
        .daemon
        .options
        .get("bandwidth.target_pct")
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(90.0);
    let target = s.uplink_capacity_bps as f64 * target_pct / 100.0;
    let busiest = s
        .phases
        .iter()
        .filter(|p| p.phase != "idle")
        .map(|p| p.uplink_avg_bps)
        .max()
        .unwrap_or(0);
    Figures {
        rtt_idle: rtt("idle"),
        rtt_streaming: rtt("streaming"),
        rtt_loaded: rtt("loaded"),
        stalls: s.viewers.iter().map(|v| v.stalls).sum(),
        stall_ms: s.viewers.iter().map(|v| v.stall_ms).sum(),
        restarts: s.viewers.iter().map(|v| v.restarts).sum(),
        demand_changes: (0..s.viewers.len()).map(|i| demand_changes(sc, i)).sum(),
        uplink_of_target: if target > 0.0 {
            busiest as f64 / target
        } else {
            0.0
        },
        household_bps: s.household.iter().map(|u| u.rate_bps).sum(),
        household_asked_bps: sc
            .household
            .iter()
            .map(|u| u.rate_mbps.map_or(0, |r| (r * 1e6) as u64))
            .sum(),
        goals_met: s.checks.iter().filter(|c| c.ok).count(),
        goals: s.checks.len(),
    }
}

fn pair(x: Option<(f64, f64)>) -> String {
    x.map_or("-".into(), |(a, b)| format!("{a:.1}/{b:.1}"))
}

/// The side-by-side table, one row per scenario and run (markdown, so it goes into the README
/// as it is).
pub fn render_table(rows: &[(String, Figures, Figures)]) -> String {
    let mut out = String::new();
    out.push_str("| scenario | jellydemon | RTT idle ms p50/p95 | RTT streaming | RTT household upload | stalls (time) | restarts / demand changes | uplink of target | household upload | goals met |\n");
    out.push_str("|---|---|---|---|---|---|---|---|---|---|\n");
    for (name, with, without) in rows {
        for (label, f) in [("with", with), ("without", without)] {
            let _ = writeln!(
                out,
                "| {name} | {label} | {} | {} | {} | {} ({:.1} s) | {}/{} | {:.0} % | {:.1} of {:.1} Mbit/s | {}/{} |",
                pair(f.rtt_idle),
                pair(f.rtt_streaming),
                pair(f.rtt_loaded),
                f.stalls,
                f.stall_ms as f64 / 1000.0,
                f.restarts,
                f.demand_changes,
                f.uplink_of_target * 100.0,
                f.household_bps as f64 / 1e6,
                f.household_asked_bps as f64 / 1e6,
                f.goals_met,
                f.goals
            );
        }
    }
    out
}

/// `homenet outcome --daemon PATH [--logs DIR] FILE...`: prints the table; fails when a run
/// with the daemon misses a control goal or a run fails.
pub fn outcome_main(args: &[String]) -> Result<(), String> {
    // Options (each with a value) and scenario files, in any order.
    let mut files: Vec<&String> = Vec::new();
    let mut opts: Vec<&String> = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a.starts_with("--") {
            opts.push(a);
            opts.extend(it.next());
        } else {
            files.push(a);
        }
    }
    let opts: Vec<String> = opts.into_iter().cloned().collect();
    let a = Args::parse(&opts, &[])?;
    let daemon = PathBuf::from(a.get("daemon").ok_or("--daemon PATH is required")?);
    if files.is_empty() {
        return Err("usage: outcome --daemon PATH [--logs DIR] SCENARIO.json...".into());
    }
    let homenet = topology::homenet_exe()?;
    let mut rows = Vec::new();
    let mut failed = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(f).map_err(|e| format!("{f}: {e}"))?;
        let sc = Scenario::parse(&text).map_err(|e| format!("{f}: {e}"))?;
        eprintln!(
            "outcome: {} ({} s, with and without jellydemon at once)",
            sc.name, sc.duration_s
        );
        let logs = |kind: &str| {
            a.get("logs")
                .map(|d| PathBuf::from(d).join(format!("{}-{kind}", sc.name)))
        };
        let without_opts = RunOptions {
            homenet: homenet.clone(),
            daemon: None,
            live: false,
            keep_logs: logs("without"),
        };
        let with_opts = RunOptions {
            homenet: homenet.clone(),
            daemon: Some(daemon.clone()),
            live: false,
            keep_logs: logs("with"),
        };
        // Both at once: separate namespaces, the same machine load, half the wall time.
        let sc2 = sc.clone();
        let baseline = std::thread::spawn(move || run_scenario(&sc2, &without_opts));
        let with = run_scenario(&sc, &with_opts)?;
        let without = baseline
            .join()
            .map_err(|_| "the run without the daemon panicked".to_string())??;
        eprint!("{}", render_summary(&with));
        // Ctrl-C (or SIGTERM) ends the current runs early: stop there, not at the next one.
        let interrupted = |s: &Summary| s.errors.iter().any(|e| e.starts_with("interrupted"));
        if interrupted(&with) || interrupted(&without) {
            return Err(format!("interrupted during {}", sc.name));
        }
        if !with.errors.is_empty() || with.checks.iter().any(|c| !c.ok) {
            failed.push(sc.name.clone());
        }
        rows.push((sc.name.clone(), figures(&sc, &with), figures(&sc, &without)));
    }
    print!("{}", render_table(&rows));
    if failed.is_empty() {
        Ok(())
    } else {
        Err(format!(
            "control goals missed with jellydemon in: {}",
            failed.join(", ")
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::super::scenario::{PhaseSummary, UploadSummary, ViewerSummary};
    use super::*;

    #[test]
    fn figures_from_a_summary() {
        let sc = Scenario::parse(
            r#"{"name":"t","duration_s":30,"world":{},
                "viewers":[{"from":"198.51.100.10","user":"a","item":"i","start_s":2},
                           {"from":"198.51.100.11","user":"b","item":"i","start_s":5}],
                "household":[{"start_s":10,"stop_s":20,"rate_mbps":6}]}"#,
        )
        .unwrap();
        let phase = |name: &str, p95: f64, up: u64| PhaseSummary {
            phase: name.into(),
            seconds: 5,
            rtt: super::super::load::RttStats {
                sent: 10,
                received: 10,
                p50_ms: 1.0,
                p95_ms: p95,
                max_ms: p95,
            },
            uplink_avg_bps: up,
        };
        let s = Summary {
            uplink_capacity_bps: 20_000_000,
            phases: vec![
                phase("idle", 2.0, 0),
                phase("streaming", 3.0, 12_000_000),
                phase("loaded", 4.0, 16_200_000),
            ],
            viewers: vec![
                ViewerSummary {
                    stalls: 1,
                    stall_ms: 1500,
                    restarts: 1,
                    ..Default::default()
                },
                ViewerSummary {
                    restarts: 2,
                    ..Default::default()
                },
            ],
            household: vec![UploadSummary {
                rate_mbps: Some(6.0),
                bytes: 1,
                rate_bps: 5_900_000,
            }],
            ..Default::default()
        };
        let f = figures(&sc, &s);
        assert_eq!(f.rtt_idle, Some((1.0, 2.0)));
        assert_eq!(f.rtt_loaded, Some((1.0, 4.0)));
        assert_eq!((f.stalls, f.stall_ms, f.restarts), (1, 1500, 3));
        // a: own start, b's start, the upload's start and stop; b: own start + 2.
        assert_eq!(f.demand_changes, 4 + 3);
        assert!((f.uplink_of_target - 0.9).abs() < 1e-9, "16.2 of 18");
        assert_eq!(
            (f.household_bps, f.household_asked_bps),
            (5_900_000, 6_000_000)
        );
        let t = render_table(&[("t".into(), f.clone(), Figures::default())]);
        assert!(t.contains("| t | with | 1.0/2.0 | 1.0/3.0 | 1.0/4.0 | 1 (1.5 s) | 3/7 | 90 % | 5.9 of 6.0 Mbit/s | 0/0 |"), "{t}");
        assert!(
            t.contains("| t | without | - | - | - | 0 (0.0 s) | 0/0 | 0 % |"),
            "{t}"
        );
    }
}
