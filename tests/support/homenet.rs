//! Test support binary: the emulated home network (DESIGN.md §9).
//!
//! `homenet <subcommand> [options]`; each subcommand lives in its own module.

mod emulator;
mod viewer;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = args.split_first() else {
        eprintln!("usage: homenet <jellyfin|viewer> [options]  (see docs)");
        return ExitCode::from(2);
    };
    let result = match cmd.as_str() {
        "jellyfin" => cmd_jellyfin(rest),
        "viewer" => viewer::main_args(rest),
        other => Err(format!("unknown subcommand {other:?}")),
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
