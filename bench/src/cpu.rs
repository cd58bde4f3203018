//! CPU accounting for a run: how many microseconds of CPU each process spent per
//! committed request, and how many context switches, read from `/proc` at the start
//! and the end of the measurement window.
//!
//! Throughput on a shared VM moves ±15 % from run to run; CPU time per committed
//! request moves far less, so it is what changes are judged by (README,
//! "Performance"). The machine's figure (`/proc/stat`) includes everything that ran,
//! ours or not; the per-process figures (`/proc/<pid>/stat`) are ours alone.

use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;

/// Clock ticks per second of `/proc`'s CPU times. `USER_HZ` is part of Linux's
/// user ABI and is 100 on every architecture this project builds for.
const TICKS_PER_SEC: f64 = 100.0;

/// The name the load generator's CPU is reported under.
pub const LOADGEN: &str = "loadgen";

/// Threads of the benchmark's own process whose names start with this belong to
/// the in-process unreplicated baseline, not to the load generator.
pub const BASELINE_THREAD_PREFIX: &str = "baseline";

/// Where one accounted process's CPU time is read from.
#[derive(Clone, Debug)]
pub enum Source {
    /// A whole process (all its threads, live and exited).
    Process(u32),
    /// Threads of this very process whose names do (`true`) or do not (`false`)
    /// start with `prefix`. Exited threads are not counted.
    OwnThreads {
        prefix: &'static str,
        matching: bool,
    },
}

/// The processes a run accounts for, by the name the report gives them.
#[derive(Clone, Debug, Default)]
pub struct Probe {
    accounts: Vec<(String, Source)>,
}

/// CPU ticks and context switches at one instant.
#[derive(Clone, Debug, Default)]
pub struct Sample {
    machine: Counts,
    processes: BTreeMap<String, Counts>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    ticks: u64,
    switches: u64,
}

/// What a measurement window cost, per committed request.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PerRequest {
    pub machine: f64,
    pub processes: BTreeMap<String, f64>,
}

impl PerRequest {
    /// The served processes' figure (the replicas', or the baseline's) over the load
    /// generator's, or `None` without both.
    ///
    /// Why: this VM's speed drifts by ±15 % between consecutive runs, and moves
    /// every process alike. The load generator runs the same code against every
    /// build of the replicas, so dividing by its figure cancels much of the drift,
    /// as long as its own cost per request did not move between the builds (it
    /// moves with throughput, latency and retransmissions): read it beside the
    /// load generator's and the machine's figures, back to back.
    #[must_use]
    pub fn servers_over_loadgen(&self) -> Option<f64> {
        let loadgen = *self.processes.get(LOADGEN)?;
        let servers: Vec<f64> = self
            .processes
            .iter()
            .filter(|(name, _)| name.as_str() != LOADGEN)
            .map(|(_, v)| *v)
            .collect();
        (loadgen > 0.0 && !servers.is_empty()).then(|| servers.iter().sum::<f64>() / loadgen)
    }
}

/// CPU microseconds and context switches per committed request.
#[derive(Clone, Debug, Default)]
pub struct Usage {
    pub cpu_us: PerRequest,
    pub switches: PerRequest,
}

impl Probe {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Account `source` under `name`.
    #[must_use]
    pub fn with(mut self, name: impl Into<String>, source: Source) -> Self {
        self.accounts.push((name.into(), source));
        self
    }

    /// Read every account now. Processes that cannot be read (exited) are left out.
    #[must_use]
    pub fn sample(&self) -> Sample {
        let processes = self
            .accounts
            .iter()
            .filter_map(|(name, source)| Some((name.clone(), read_source(source)?)))
            .collect();
        Sample {
            machine: read_machine().unwrap_or_default(),
            processes,
        }
    }
}

impl Usage {
    /// The cost of what happened between `start` and `end`, spread over `requests`.
    #[must_use]
    pub fn between(start: &Sample, end: &Sample, requests: u64) -> Self {
        let per = |c: u64| c as f64 / requests.max(1) as f64;
        let us = |ticks: u64| per(ticks) * 1e6 / TICKS_PER_SEC;
        let delta = |name: &String, e: &Counts| {
            let s = start.processes.get(name)?;
            Some(Counts {
                ticks: e.ticks.saturating_sub(s.ticks),
                switches: e.switches.saturating_sub(s.switches),
            })
        };
        let mut usage = Usage::default();
        let machine = Counts {
            ticks: end.machine.ticks.saturating_sub(start.machine.ticks),
            switches: end.machine.switches.saturating_sub(start.machine.switches),
        };
        usage.cpu_us.machine = us(machine.ticks);
        usage.switches.machine = per(machine.switches);
        for (name, e) in &end.processes {
            if let Some(d) = delta(name, e) {
                usage.cpu_us.processes.insert(name.clone(), us(d.ticks));
                usage
                    .switches
                    .processes
                    .insert(name.clone(), per(d.switches));
            }
        }
        usage
    }
}

fn read_source(source: &Source) -> Option<Counts> {
    match *source {
        Source::Process(pid) => {
            let ticks = stat_ticks(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)?;
            let switches = sum_thread_switches(Path::new(&format!("/proc/{pid}/task")), |_| true);
            Some(Counts { ticks, switches })
        }
        Source::OwnThreads { prefix, matching } => {
            let tasks = Path::new("/proc/self/task");
            let wanted = |dir: &Path| {
                std::fs::read_to_string(dir.join("comm"))
                    .is_ok_and(|name| name.starts_with(prefix) == matching)
            };
            let mut ticks = 0;
            for dir in std::fs::read_dir(tasks).ok()?.flatten() {
                let dir = dir.path();
                if wanted(&dir) {
                    if let Some(t) = std::fs::read_to_string(dir.join("stat"))
                        .ok()
                        .as_deref()
                        .and_then(stat_ticks)
                    {
                        ticks += t;
                    }
                }
            }
            let switches = sum_thread_switches(tasks, wanted);
            Some(Counts { ticks, switches })
        }
    }
}

/// utime + stime of a `/proc/<pid>/stat` line (fields 14 and 15; the command name,
/// field 2, may hold spaces and parentheses, so fields are counted after its last `)`).
fn stat_ticks(stat: &str) -> Option<u64> {
    let rest = stat.rsplit_once(')')?.1;
    let mut fields = rest.split_whitespace().skip(11); // field 3 is the first after ')'
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Voluntary and involuntary context switches of the threads under `tasks` that
/// `wanted` picks (the kernel counts them per thread, not per process).
fn sum_thread_switches(tasks: &Path, wanted: impl Fn(&Path) -> bool) -> u64 {
    let Ok(entries) = std::fs::read_dir(tasks) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|dir| wanted(dir))
        .filter_map(|dir| std::fs::read_to_string(dir.join("status")).ok())
        .map(|status| status_switches(&status))
        .sum()
}

fn status_switches(status: &str) -> u64 {
    status
        .lines()
        .filter(|l| {
            l.starts_with("voluntary_ctxt_switches") || l.starts_with("nonvoluntary_ctxt_switches")
        })
        .filter_map(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .sum()
}

/// The whole machine: busy ticks of all cores (user, nice, system, irq, softirq;
/// not idle, I/O wait or time stolen by the hypervisor) and context switches.
fn read_machine() -> Option<Counts> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_proc_stat(text: &str) -> Option<Counts> {
    let mut counts = Counts::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.filter_map(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal ...
                counts.ticks = [0, 1, 2, 5, 6].iter().filter_map(|&i| v.get(i)).sum();
            }
            Some("ctxt") => counts.switches = f.next()?.parse().ok()?,
            _ => {}
        }
    }
    Some(counts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_skips_a_command_name_with_spaces_and_parentheses() {
        let line = "42 (a b) c)) S 1 42 42 0 -1 4194304 127 0 0 0 7 3 0 0 20 0 1 0";
        assert_eq!(stat_ticks(line), Some(10));
    }

    #[test]
    fn proc_stat_counts_busy_time_and_switches() {
        let text = "cpu  100 1 20 5000 7 2 3 9 0 0\ncpu0 1 2 3\nctxt 555\nbtime 1\n";
        let c = parse_proc_stat(text).unwrap();
        assert_eq!(c.ticks, 100 + 1 + 20 + 2 + 3);
        assert_eq!(c.switches, 555);
    }

    #[test]
    fn usage_divides_the_window_by_the_requests() {
        let mut start = Sample::default();
        let mut end = Sample::default();
        start.machine = Counts {
            ticks: 100,
            switches: 10,
        };
        end.machine = Counts {
            ticks: 300,
            switches: 4010,
        };
        start.processes.insert(
            "replica0".into(),
            Counts {
                ticks: 5,
                switches: 0,
            },
        );
        end.processes.insert(
            "replica0".into(),
            Counts {
                ticks: 55,
                switches: 2000,
            },
        );
        // A process seen only at the end (started mid-window) is left out.
        end.processes.insert(
            "late".into(),
            Counts {
                ticks: 9,
                switches: 9,
            },
        );
        let u = Usage::between(&start, &end, 1000);
        // 200 ticks = 2 s of CPU over 1000 requests = 2000 us each.
        assert!((u.cpu_us.machine - 2000.0).abs() < 1e-9);
        assert!((u.switches.machine - 4.0).abs() < 1e-9);
        assert!((u.cpu_us.processes["replica0"] - 500.0).abs() < 1e-9);
        assert!((u.switches.processes["replica0"] - 2.0).abs() < 1e-9);
        assert!(!u.cpu_us.processes.contains_key("late"));
    }

    #[test]
    fn this_process_reads_and_its_own_threads_split_by_name() {
        let busy = std::thread::Builder::new()
            .name(format!("{BASELINE_THREAD_PREFIX}-test"))
            .spawn(|| {
                let t = std::time::Instant::now();
                let mut x = 0u64;
                while t.elapsed() < std::time::Duration::from_millis(60) {
                    x = std::hint::black_box(x.wrapping_add(1));
                }
                std::thread::sleep(std::time::Duration::from_secs(2));
            })
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(100));
        let probe = Probe::new()
            .with("me", Source::Process(std::process::id()))
            .with(
                "baseline",
                Source::OwnThreads {
                    prefix: BASELINE_THREAD_PREFIX,
                    matching: true,
                },
            );
        let s = probe.sample();
        assert!(s.processes.contains_key("me") && s.processes.contains_key("baseline"));
        assert!(s.machine.ticks > 0 && s.machine.switches > 0);
        // 60 ms of spinning is at least a few ticks, and is counted in the process too.
        assert!(s.processes["baseline"].ticks >= 2, "{s:?}");
        assert!(s.processes["me"].ticks >= s.processes["baseline"].ticks);
        drop(busy);
    }
}
