//! `homenet`: the emulated home network for `make demo` and the end-to-end tests (test support,
//! never shipped). The first argument picks the subcommand; see the README (The emulated home network).

mod bench;
mod emulator;
mod load;
mod openwrt;
mod outcome;
mod scenario;
mod topology;
mod viewer;

use std::process::ExitCode;

const USAGE: &str =
    "usage: homenet <up|down|demo|scenario|jellyfin|viewer|sink|upload|echo|ping> [options]
  jellyfin --listen ADDR:PORT [--listen ...] --world FILE   the Jellyfin emulator
  viewer --server HOST:PORT --user N --item ID ...     a remote viewer (see the README)
  up [--uplink-mbps R] [--buffer-ms MS] [--viewers N]   build the network, print its names, keep it
  down TAG | down --all [--force]                      remove one run, or leftovers of dead runs
  demo --daemon PATH [--scenario FILE] [--keep-logs DIR] [--wake-only]   the real daemon in the emulated network
  scenario FILE (--daemon PATH | --no-daemon) [--json OUT] [--live] [--keep-logs DIR]
  sink --listen ADDR [--listen ADDR]...                TCP discard server (JSON lines)
  upload --to ADDR (--rate-mbps R | --greedy) [--seconds S]
  echo --listen ADDR [--listen ADDR]...                UDP echo server
  ping --to ADDR [--interval-ms MS] [--seconds S]      UDP RTT p50/p95/max
  source --listen ADDR... [--rate-mbps R]              TCP server sending to each connection
  download --from ADDR [--seconds S]                   TCP client counting what it receives
  probe --to ADDR [--timeout-ms MS]                    wait until a TCP port accepts
  bench --daemon PATH [--binary ARCH=PATH]... [--package PATH]...   efficiency figures (make bench)
  outcome --daemon PATH [--logs DIR] SCENARIO.json...   each scenario with and without the daemon (make outcome)
  bench-decide --iterations N                          the decision core N times (callgrind)
  router-exec [--etc DIR] [--netifd FILE] -- PROG ARGS  PROG as on OpenWrt: a netifd stand-in
                                                       behind `ubus`, DIR's files over /etc
  (run as `ubus`: the netifd stand-in itself, see tests/support/openwrt.rs)";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let name = std::env::args().next().unwrap_or_default();
    if std::path::Path::new(&name)
        .file_name()
        .is_some_and(|n| n == "ubus")
    {
        return ExitCode::from(openwrt::ubus_main(&args).clamp(0, 255) as u8);
    }
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "up" => scenario::up_main(rest),
        "down" => scenario::down_main(rest),
        "demo" => scenario::demo_main(rest),
        "scenario" => scenario::scenario_main(rest),
        "jellyfin" => cmd_jellyfin(rest),
        "viewer" => viewer::main_args(rest),
        "sink" => load::sink_main(rest),
        "upload" => load::upload_main(rest),
        "echo" => load::echo_main(rest),
        "ping" => load::ping_main(rest),
        "source" => load::source_main(rest),
        "download" => load::download_main(rest),
        "probe" => load::probe_main(rest),
        "bench" => bench::bench_main(rest),
        "outcome" => outcome::outcome_main(rest),
        "bench-decide" => bench::decide_main(rest),
        "router-exec" => openwrt::router_exec_main(rest),
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("homenet {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

/// `homenet jellyfin --listen ADDR:PORT [--listen ...] --world FILE`
fn cmd_jellyfin(args: &[String]) -> Result<(), String> {
    let mut listen = Vec::new();
    let mut world = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .cloned()
                .ok_or_else(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--listen" => listen.push(val()?),
            "--world" => world = Some(val()?),
            other => return Err(format!("unknown option {other:?}")),
        }
    }
    let world = world.ok_or("--world FILE is required")?;
    let world = emulator::World::load(&world)?;
    let emu = emulator::Emulator::start(world, &listen)?;
    for a in &emu.addrs {
        println!("jellyfin emulator listening on http://{a}");
    }
    let term = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        signal_hook::flag::register(sig, std::sync::Arc::clone(&term))
            .map_err(|e| format!("signal: {e}"))?;
    }
    while !term.load(std::sync::atomic::Ordering::SeqCst) {
        // Nothing to wait on but the signal flag; a coarse poll keeps shutdown under 200 ms.
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    drop(emu);
    Ok(())
}
