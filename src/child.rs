//! Child processes (`tc`, `ubus`) run with a deadline that covers everything they do.
//!
//! A child that hangs — a `tc` stuck in the kernel or stopped, a `ubus` whose ubusd does not
//! answer — must not stop the daemon: the loop that restores limits and keeps the router's
//! classes in step runs on the same thread.

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Most bytes kept of a child's stdout or stderr (`tc -s class show` of every class is a few
/// KiB, a ubus status reply less).
pub const OUTPUT_LIMIT: usize = 4 * 1024 * 1024;

/// Runs `path` with `args` (never a shell), feeding `input` on stdin, and returns (success,
/// stdout, stderr). `limit` is a deadline that covers everything: writing the input, reading
/// the output and the exit; past it the child is killed and reaped and the error is
/// `TimedOut`. One poll loop on non-blocking pipes, so a child that stops reading its input or
/// keeps its output open cannot block the daemon, and no thread has to be started.
pub fn run(
    path: &str,
    args: &[&str],
    input: Option<&str>,
    limit: Duration,
) -> std::io::Result<(bool, String, String)> {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    use std::os::fd::AsFd;

    let deadline = Instant::now() + limit;
    let mut child = Command::new(path)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take();
    let file = |fd: std::os::fd::OwnedFd| std::fs::File::from(fd);
    let mut stdout = child.stdout.take().map(|p| file(p.into()));
    let mut stderr = child.stderr.take().map(|p| file(p.into()));
    let input = input.unwrap_or("").as_bytes();
    let mut written = 0;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let timed_out = || {
        std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{path} did not finish within {} s", limit.as_secs_f32()),
        )
    };
    let set_nonblocking = |fd: std::os::fd::BorrowedFd<'_>| -> std::io::Result<()> {
        use nix::fcntl::{fcntl, FcntlArg, OFlag};
        let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
        fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        Ok(())
    };
    let setup = (|| {
        if let Some(p) = &stdin {
            set_nonblocking(p.as_fd())?;
        }
        if let Some(p) = &stdout {
            set_nonblocking(p.as_fd())?;
        }
        if let Some(p) = &stderr {
            set_nonblocking(p.as_fd())?;
        }
        Ok::<(), std::io::Error>(())
    })();
    let pumped: std::io::Result<()> = setup.and_then(|()| loop {
        if written == input.len() {
            // Closing stdin is tc's end of script.
            stdin = None;
        }
        if stdin.is_none() && stdout.is_none() && stderr.is_none() {
            break Ok(());
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            break Err(timed_out());
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        let (w, o, e) = {
            let mut fds = Vec::with_capacity(3);
            let mut slot = [None; 3];
            if let Some(p) = &stdin {
                slot[0] = Some(fds.len());
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLOUT));
            }
            if let Some(p) = &stdout {
                slot[1] = Some(fds.len());
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            if let Some(p) = &stderr {
                slot[2] = Some(fds.len());
                fds.push(PollFd::new(p.as_fd(), PollFlags::POLLIN));
            }
            match poll(
                &mut fds,
                PollTimeout::try_from(ms).unwrap_or(PollTimeout::MAX),
            ) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => break Err(e.into()),
            }
            let ready = |i: Option<usize>| {
                i.and_then(|i| fds[i].revents())
                    .is_some_and(|r| !r.is_empty())
            };
            (ready(slot[0]), ready(slot[1]), ready(slot[2]))
        };
        if w {
            if let Some(p) = stdin.as_mut() {
                match p.write(&input[written..]) {
                    Ok(n) => written += n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    // tc may stop reading at the first failing line; a broken pipe is not our
                    // error, and the rest of the script is moot.
                    Err(_) => written = input.len(),
                }
            }
        }
        for (ready, pipe, buf) in [(o, &mut stdout, &mut out), (e, &mut stderr, &mut err)] {
            if !ready {
                continue;
            }
            if let Some(p) = pipe.as_mut() {
                let mut chunk = [0u8; 8192];
                match p.read(&mut chunk) {
                    Ok(0) => *pipe = None,
                    Ok(n) => {
                        let room = OUTPUT_LIMIT.saturating_sub(buf.len());
                        buf.extend_from_slice(&chunk[..n.min(room)]);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => *pipe = None,
                }
            }
        }
    });
    let status = match pumped {
        Ok(()) => loop {
            if let Some(s) = child.try_wait()? {
                break Ok(s);
            }
            if Instant::now() >= deadline {
                break Err(timed_out());
            }
            std::thread::sleep(Duration::from_millis(5));
        },
        Err(e) => Err(e),
    };
    match status {
        Ok(s) => Ok((
            s.success(),
            String::from_utf8_lossy(&out).into_owned(),
            String::from_utf8_lossy(&err).into_owned(),
        )),
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A `tc` that stops reading its script (stuck in the kernel, or stopped) must not hold the
    /// daemon: the deadline covers writing the script too. `sleep` stands in for such a tc: it
    /// never reads stdin, so a script larger than the pipe buffer (64 KiB on Linux) blocks a
    /// plain blocking write forever.
    #[test]
    fn a_tc_that_does_not_read_its_script_is_killed_at_the_deadline() {
        let script = "class add dev x parent 1: classid 1:10 htb rate 1mbit\n".repeat(20_000);
        let (tx, rx) = std::sync::mpsc::channel();
        let started = std::time::Instant::now();
        std::thread::spawn(move || {
            let _ = tx.send(run(
                "sleep",
                &["30"],
                Some(&script),
                Duration::from_millis(300),
            ));
        });
        let r = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("run() is stuck writing to a child that does not read");
        let e = r.expect_err("a deadline error");
        assert_eq!(e.kind(), std::io::ErrorKind::TimedOut, "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
    }

    /// Output and exit status still come back from a tc that reads everything.
    #[test]
    fn run_feeds_the_script_and_collects_the_output() {
        let script = "line\n".repeat(50_000);
        let (ok, out, err) = run("cat", &[], Some(&script), Duration::from_secs(10)).unwrap();
        assert!(ok && err.is_empty());
        assert_eq!(out, script);
        let (ok, _, err) = run(
            "sh",
            &["-c", "echo oops >&2; exit 3"],
            None,
            Duration::from_secs(10),
        )
        .unwrap();
        assert!(!ok);
        assert_eq!(err, "oops\n");
    }
}
