//! Child processes and `/proc` readings.

use std::process::Stdio;
use tokio::process::{Child, Command};

/// Spawns `command` so that it dies with this process: SIGKILL when its handle is dropped (an
/// error, a panic, Ctrl-C) and, through `PR_SET_PDEATHSIG`, when this process is killed.
pub fn spawn_owned(mut command: Command) -> anyhow::Result<Child> {
    command.kill_on_drop(true).stdin(Stdio::piped()).stdout(Stdio::piped());
    // SAFETY: the closure runs between fork and exec and only makes one async-signal-safe
    // system call.
    unsafe {
        command.pre_exec(|| {
            nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(std::io::Error::from)
        });
    }
    Ok(command.spawn()?)
}

/// Resident set size of `pid` in bytes (`VmRSS`).
pub fn rss_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).ok_or_else(|| anyhow::anyhow!("no VmRSS"))?;
    let kib: u64 = line.split_whitespace().nth(1).ok_or_else(|| anyhow::anyhow!("bad VmRSS"))?.parse()?;
    Ok(kib * 1024)
}

/// CPU time (user + system) `pid` has used, in seconds.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').ok_or_else(|| anyhow::anyhow!("bad stat"))? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name and state.
    let ticks: u64 = fields[11].parse::<u64>()? + fields[12].parse::<u64>()?;
    // USER_HZ, the unit of utime/stime, is 100 on every Linux this runs on.
    Ok(ticks as f64 / 100.0)
}

/// A free TCP port on 127.0.0.1 (bound and released; the usual small race is acceptable here).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}
