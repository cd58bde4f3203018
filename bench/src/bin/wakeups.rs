//! What a thread hand-off costs on this machine: two threads pass a byte back and
//! forth over a pair of Unix sockets, pinned to the same CPU or to two different
//! ones, and the tool prints the wall time and the CPU time (both threads, from
//! `getrusage`) of each round trip.
//!
//! Why it exists (issue 13, the twenty-third round): with one client, a replica
//! makes about 26 context switches per request and the group spends 4-5 ms of CPU
//! on it, far more than its work. On this VM a round trip between two threads on
//! one CPU costs about 10 µs of CPU, but between two CPUs, where each hand-off
//! wakes an idle virtual CPU, 36-44 µs: about 15 µs of CPU more per wake-up. Much
//! of a lone request's cost is waking CPUs, not running the protocol. Under load
//! the CPUs are seldom idle and the same hand-offs cost little.
//!
//! ```sh
//! cargo run --release -p bft-bench --bin wakeups [-- ROUND_TRIPS]
//! ```

use anyhow::{bail, Context};
use nix::sched::{sched_setaffinity, CpuSet};
use nix::sys::resource::{getrusage, UsageWho};
use nix::unistd::Pid;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

fn pin(cpu: usize) -> anyhow::Result<()> {
    let mut set = CpuSet::new();
    set.set(cpu).with_context(|| format!("CPU {cpu}"))?;
    sched_setaffinity(Pid::from_raw(0), &set).with_context(|| format!("pinning to CPU {cpu}"))
}

fn process_cpu() -> anyhow::Result<Duration> {
    let u = getrusage(UsageWho::RUSAGE_SELF).context("getrusage")?;
    let us = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(u64::try_from(t.tv_sec()).unwrap_or(0))
            + Duration::from_micros(u64::try_from(t.tv_usec()).unwrap_or(0))
    };
    Ok(us(u.user_time()) + us(u.system_time()))
}

/// Wall and CPU time per round trip between a thread on CPU 0 and one on `other`.
fn ping_pong(other: usize, trips: u32) -> anyhow::Result<(Duration, Duration)> {
    let (mut near, mut far) = UnixStream::pair().context("socket pair")?;
    let echo = std::thread::spawn(move || -> anyhow::Result<()> {
        pin(other)?;
        let mut b = [0u8; 1];
        for _ in 0..trips {
            far.read_exact(&mut b)?;
            far.write_all(&b)?;
        }
        Ok(())
    });
    pin(0)?;
    let (wall0, cpu0) = (Instant::now(), process_cpu()?);
    let mut b = [7u8; 1];
    for _ in 0..trips {
        near.write_all(&b)?;
        near.read_exact(&mut b)?;
    }
    let (wall, cpu) = (wall0.elapsed(), process_cpu()? - cpu0);
    match echo.join() {
        Ok(r) => r?,
        Err(_) => bail!("the echo thread panicked"),
    }
    Ok((wall / trips, cpu / trips))
}

fn main() -> anyhow::Result<()> {
    let trips: u32 = match std::env::args().nth(1) {
        Some(a) => a.parse().context("ROUND_TRIPS must be a number")?,
        None => 20_000,
    };
    let cpus = std::thread::available_parallelism().map_or(1, usize::from);
    println!("{trips} round trips each, two threads over a Unix socket pair");
    for other in [0, 1] {
        if other >= cpus {
            println!("one CPU only: no cross-CPU figure");
            break;
        }
        let (wall, cpu) = ping_pong(other, trips)?;
        println!(
            "CPU 0 <-> CPU {other}: {:.2} us wall, {:.2} us CPU per round trip",
            wall.as_secs_f64() * 1e6,
            cpu.as_secs_f64() * 1e6
        );
    }
    Ok(())
}
