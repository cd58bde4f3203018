//! CPU accounting for a run: how many microseconds of CPU each process spent per
//! committed request, and how many context switches, read from `/proc` at the start
//! and the end of the measurement window.
//!
//! Throughput on a shared VM moves ±15 % from run to run; CPU time per committed
//! request moves far less, so it is what changes are judged by (README,
//! "Performance"). The machine's figure (`/proc/stat`) includes everything that ran,
//! ours or not; the per-process figures (`/proc/<pid>/stat`) are ours alone.
//!
//! The machine's busy time is the wall-clock time of the window on every CPU less
//! what `/proc/stat` counts as idle, I/O wait and stolen, not the busy fields it
//! also has. Why: on a tickless kernel (`NO_HZ_IDLE`, this VM's) an idle CPU's
//! time is measured on the monotonic clock (the period in progress included), but
//! busy time is only sampled, a whole tick to whatever runs when the tick fires.
//! Work that starts after one tick and ends before the next is never seen, and the
//! open-loop pacer, which releases requests on a fixed schedule, can stay in step
//! with the tick (every 5 ms at 200 req/s against this kernel's 4 ms tick): a run
//! that cost its processes 450 µs per request once read 0.0 for the machine (CI,
//! `the_binary_reports_json_csv_and_a_plot`). Per-process times are exact but for
//! the 10 ms each printed field is cut to: the kernel scales them to each task's
//! measured run time.
//!
//! One known error, small here: a halted vCPU woken but waiting for the host to run
//! it counts that wait as idle and as stolen, so it is subtracted twice and the
//! machine reads low by at most the window's stolen time (about 0.2 % of this
//! VM's time since boot).

use crate::loop_phases::{PhaseProbe, PhaseSample};
use serde::Serialize;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Clock ticks per second of `/proc`'s CPU times. `USER_HZ` is part of Linux's
/// user ABI and is 100 on every architecture this project builds for.
const TICKS_PER_SEC: f64 = 100.0;

/// The name the load generator's CPU is reported under.
pub const LOADGEN: &str = "loadgen";

/// The name the in-process unreplicated server's CPU (and its `verify` phase) is
/// reported under.
pub const BASELINE: &str = "baseline";

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
    /// The replicas whose event loops are also read by phase.
    phases: PhaseProbe,
}

/// CPU ticks and context switches at one instant, and when it was.
#[derive(Clone, Debug)]
pub struct Sample {
    at: Instant,
    /// `None` where `/proc/stat` could not be read.
    machine: Option<MachineCounts>,
    processes: BTreeMap<String, Counts>,
    /// The replicas' phases, read about then ([`Sample::with_phases`]).
    phases: PhaseSample,
}

impl Sample {
    /// This sample with the replicas' phases read about the same time.
    #[must_use]
    pub fn with_phases(mut self, phases: PhaseSample) -> Self {
        self.phases = phases;
        self
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    ticks: u64,
    switches: u64,
}

/// What `/proc/stat` says of the whole machine.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct MachineCounts {
    /// Ticks of all CPUs together spent idle, waiting for I/O, or stolen by the
    /// hypervisor: the time nothing of this machine ran.
    unbusy_ticks: u64,
    /// CPUs online (`cpuN` lines).
    cpus: u32,
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
    /// Each replica's event-loop CPU by phase, µs per request (`crate::loop_phases`).
    pub loop_cpu_us: BTreeMap<String, BTreeMap<String, f64>>,
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

    /// Also read the event loop's phases of the replica `name` from its HTTP
    /// server at `base` (`http://HOST:PORT`).
    #[must_use]
    pub fn with_phases(mut self, name: impl Into<String>, base: impl Into<String>) -> Self {
        self.phases = self.phases.with(name, base);
        self
    }

    /// Also read `name`'s `phase` from a counter in this process (the in-process
    /// baseline's `verify`).
    #[must_use]
    pub fn with_local_phase(
        mut self,
        name: impl Into<String>,
        phase: impl Into<String>,
        counter: crate::loop_phases::LocalPhase,
    ) -> Self {
        self.phases = self.phases.with_local(name, phase, counter);
        self
    }

    /// Read every account in `/proc` now. Processes that cannot be read (exited)
    /// are left out. The replicas' phases are read apart ([`Probe::phases`]): an
    /// HTTP request each, which must not delay the window's ends.
    #[must_use]
    pub fn sample(&self) -> Sample {
        let processes = self
            .accounts
            .iter()
            .filter_map(|(name, source)| Some((name.clone(), read_source(source)?)))
            .collect();
        Sample {
            at: Instant::now(),
            machine: read_machine(),
            processes,
            phases: PhaseSample::new(),
        }
    }

    /// The replicas whose phases are read (empty: none).
    #[must_use]
    pub fn phases(&self) -> &PhaseProbe {
        &self.phases
    }
}

impl Usage {
    /// The cost of what happened between `start` and `end`, spread over `requests`.
    #[must_use]
    pub fn between(start: &Sample, end: &Sample, requests: u64) -> Self {
        let per_request = |x: f64| x / requests.max(1) as f64;
        let per = |c: u64| per_request(c as f64);
        let us = |ticks: u64| per(ticks) * 1e6 / TICKS_PER_SEC;
        let delta = |name: &String, e: &Counts| {
            let s = start.processes.get(name)?;
            Some(Counts {
                ticks: e.ticks.saturating_sub(s.ticks),
                switches: e.switches.saturating_sub(s.switches),
            })
        };
        let mut usage = Usage {
            loop_cpu_us: crate::loop_phases::per_request(&start.phases, &end.phases, requests),
            ..Usage::default()
        };
        // A CPU that came or went during the window would bring idle time without
        // wall time (or the reverse): the machine is then left unaccounted.
        if let Some((s, e)) = same_cpus(start.machine, end.machine) {
            let wall_us = end.at.saturating_duration_since(start.at).as_secs_f64() * 1e6;
            let unbusy_us =
                e.unbusy_ticks.saturating_sub(s.unbusy_ticks) as f64 * 1e6 / TICKS_PER_SEC;
            let busy_us = (wall_us * f64::from(s.cpus) - unbusy_us).max(0.0);
            usage.cpu_us.machine = per_request(busy_us);
            usage.switches.machine = per(e.switches.saturating_sub(s.switches));
        }
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

/// Both samples of the machine, if both were read and saw the same CPUs.
fn same_cpus(
    start: Option<MachineCounts>,
    end: Option<MachineCounts>,
) -> Option<(MachineCounts, MachineCounts)> {
    let (s, e) = (start?, end?);
    (s.cpus == e.cpus).then_some((s, e))
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

/// The whole machine: the ticks no CPU was busy (idle, I/O wait, stolen), the
/// CPUs, and context switches; `None` if `/proc/stat` lacks any of them.
fn read_machine() -> Option<MachineCounts> {
    parse_proc_stat(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_proc_stat(text: &str) -> Option<MachineCounts> {
    let mut unbusy_ticks = None;
    let mut switches = None;
    let mut cpus = 0;
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("cpu") => {
                let v: Vec<u64> = f.map_while(|x| x.parse().ok()).collect();
                // user nice system idle iowait irq softirq steal ...
                if v.len() >= 8 {
                    unbusy_ticks = v[3].checked_add(v[4])?.checked_add(v[7]);
                }
            }
            Some(name)
                if name
                    .strip_prefix("cpu")
                    .is_some_and(|n| n.parse::<u32>().is_ok()) =>
            {
                cpus += 1;
            }
            Some("ctxt") => switches = f.next()?.parse().ok(),
            _ => {}
        }
    }
    Some(MachineCounts {
        unbusy_ticks: unbusy_ticks?,
        cpus: (cpus > 0).then_some(cpus)?,
        switches: switches?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn stat_ticks_skips_a_command_name_with_spaces_and_parentheses() {
        let line = "42 (a b) c)) S 1 42 42 0 -1 4194304 127 0 0 0 7 3 0 0 20 0 1 0";
        assert_eq!(stat_ticks(line), Some(10));
    }

    #[test]
    fn proc_stat_gives_the_unbusy_ticks_the_cpus_and_switches() {
        let text = "cpu  100 1 20 5000 7 2 3 9 0 0\ncpu0 1 2 3\ncpu1 4 5 6\nctxt 555\nbtime 1\n";
        let c = parse_proc_stat(text).unwrap();
        assert_eq!(
            c,
            MachineCounts {
                unbusy_ticks: 5000 + 7 + 9,
                cpus: 2,
                switches: 555,
            }
        );
        // Missing any of the three, the machine is not accounted.
        for partial in [
            "cpu0 1 2 3\nctxt 555\n",
            "cpu  100 1 20 5000 7 2 3 9 0 0\nctxt 555\n",
            "cpu  100 1 20 5000 7 2 3 9 0 0\ncpu0 1 2 3\n",
            "cpu  100 1 20 5000\ncpu0 1 2 3\nctxt 555\n",
            // A field that is not a number ends the line: no index shifts past it.
            "cpu  100 1 x 5000 7 2 3 9 0 0\ncpu0 1 2 3\nctxt 555\n",
            // Counts too large to add are not accounted, and do not panic.
            "cpu  0 0 0 18446744073709551615 1 0 0 0\ncpu0\nctxt 5\n",
        ] {
            assert_eq!(parse_proc_stat(partial), None, "{partial}");
        }
    }

    fn sample_at(at: Instant, proc_stat: &str) -> Sample {
        Sample {
            at,
            machine: parse_proc_stat(proc_stat),
            processes: BTreeMap::new(),
            phases: PhaseSample::new(),
        }
    }

    #[test]
    fn usage_divides_the_window_by_the_requests() {
        let t0 = Instant::now();
        // Two seconds on two CPUs, one of them idle: busy for 2 s in all. The busy
        // fields did not move, as on a tickless kernel when all the work fell
        // between ticks (how CI once read 0.0): the idle time counts, they don't.
        let mut start = sample_at(t0, "cpu  7 0 3 100 0 0 0 0 0 0\ncpu0\ncpu1\nctxt 10\n");
        let mut end = sample_at(
            t0 + Duration::from_secs(2),
            "cpu  7 0 3 290 4 0 0 6 0 0\ncpu0\ncpu1\nctxt 4010\n",
        );
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
        // 4 s of CPUs less 200 ticks unbusy (idle 190, I/O wait 4, stolen 6) = 2 s
        // over 1000 requests = 2000 us each.
        assert!((u.cpu_us.machine - 2000.0).abs() < 1e-6, "{u:?}");
        assert!((u.switches.machine - 4.0).abs() < 1e-9);
        assert!((u.cpu_us.processes["replica0"] - 500.0).abs() < 1e-9);
        assert!((u.switches.processes["replica0"] - 2.0).abs() < 1e-9);
        assert!(!u.cpu_us.processes.contains_key("late"));
    }

    #[test]
    fn an_unread_machine_or_one_whose_cpus_changed_counts_nothing() {
        let t0 = Instant::now();
        let end = sample_at(
            t0 + Duration::from_secs(2),
            "cpu  7 0 3 290 4 0 0 6 0 0\ncpu0\ncpu1\nctxt 4010\n",
        );
        let unread = sample_at(t0, "");
        let one_cpu = sample_at(t0, "cpu  7 0 3 100 0 0 0 0 0 0\ncpu0\nctxt 10\n");
        for start in [unread, one_cpu] {
            let u = Usage::between(&start, &end, 1000);
            assert_eq!((u.cpu_us.machine, u.switches.machine), (0.0, 0.0));
        }
    }

    #[test]
    fn a_window_busier_than_its_wall_clock_allows_reads_zero_not_negative() {
        let t0 = Instant::now();
        let start = sample_at(t0, "cpu  0 0 0 100 0 0 0 0 0 0\ncpu0\nctxt 10\n");
        // 150 idle ticks in one second of one CPU: not possible, and not negative.
        let end = sample_at(
            t0 + Duration::from_secs(1),
            "cpu  0 0 0 250 0 0 0 0 0 0\ncpu0\nctxt 20\n",
        );
        assert_eq!(Usage::between(&start, &end, 10).cpu_us.machine, 0.0);
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
        assert!(
            s.machine.is_some_and(|m| m.cpus > 0 && m.switches > 0),
            "{s:?}"
        );
        // 60 ms of spinning is at least a few ticks, and is counted in the process too.
        assert!(s.processes["baseline"].ticks >= 2, "{s:?}");
        assert!(s.processes["me"].ticks >= s.processes["baseline"].ticks);
        drop(busy);
    }
}
