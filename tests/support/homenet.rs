//! `homenet`: the emulated home network for `make demo` and the end-to-end tests (test support,
//! never shipped). The first argument picks the subcommand; see docs-homenet.md.

mod load;
mod scenario;
mod topology;

use std::process::ExitCode;

const USAGE: &str = "usage: homenet <up|down|demo|scenario|sink|upload|echo|ping> [options]
  up [--uplink-mbps R] [--buffer-ms MS] [--viewers N]   build the network, print its names, keep it
  down TAG | down --all [--force]                      remove one run, or leftovers of dead runs
  demo --daemon PATH [--scenario FILE] [--keep-logs DIR]   the real daemon in the emulated network
  scenario FILE (--daemon PATH | --no-daemon) [--json OUT] [--live] [--keep-logs DIR]
  sink --listen ADDR [--listen ADDR]...                TCP discard server (JSON lines)
  upload --to ADDR (--rate-mbps R | --greedy) [--seconds S]
  echo --listen ADDR [--listen ADDR]...                UDP echo server
  ping --to ADDR [--interval-ms MS] [--seconds S]      UDP RTT p50/p95/max
  source --listen ADDR... [--rate-mbps R]              TCP server sending to each connection
  download --from ADDR [--seconds S]                   TCP client counting what it receives
  probe --to ADDR [--timeout-ms MS]                    wait until a TCP port accepts";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "up" => scenario::up_main(rest),
        "down" => scenario::down_main(rest),
        "demo" => scenario::demo_main(rest),
        "scenario" => scenario::scenario_main(rest),
        "sink" => load::sink_main(rest),
        "upload" => load::upload_main(rest),
        "echo" => load::echo_main(rest),
        "ping" => load::ping_main(rest),
        "source" => load::source_main(rest),
        "download" => load::download_main(rest),
        "probe" => load::probe_main(rest),
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
