//! Stopping by hand the replicas of a testnet that `bftnode testnet down` could
//! not stop.
//!
//! The bench starts a testnet in a temporary directory and stops it when the run
//! ends. If `down` fails (the old build's binary of `--compare-with` deleted
//! mid-run, say), the directory still goes, and its replicas would run on,
//! orphaned: holding their ports, which the next run's testnet needs, and
//! spending the cores the next measurement shares. So the bench reads the
//! replicas' pids before `down` (which removes the pid files) and, if `down`
//! fails, kills what is left itself.

use std::path::Path;
use std::process::{Command, Stdio};

/// SIGKILL each of `pids` that still runs a replica of the testnet in `dir`,
/// with its process group (`testnet up` starts each replica as the leader of a
/// group of its own). A pid counts as that testnet's replica only while its
/// command line names a path under `dir` (`--config DIR/nodeI/config.toml`): a pid
/// the system has given to another process since is left alone.
///
/// Returns the pids it sent the signal to.
#[must_use]
pub fn kill_orphans(dir: &Path, pids: &[u32]) -> Vec<u32> {
    let dir = dir.to_string_lossy();
    pids.iter()
        .copied()
        .filter(|pid| runs_under(*pid, &dir))
        .filter(|pid| {
            Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .collect()
}

/// Whether process `pid` is alive with `dir` in its command line.
fn runs_under(pid: u32, dir: &str) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg).starts_with(dir))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};

    /// A stand-in replica: a shell (with a child of its own, as a replica has
    /// threads and may have children) whose command line names `config`, leading
    /// a process group of its own as `testnet up` starts replicas.
    fn stand_in(config: &Path) -> std::process::Child {
        Command::new("sh")
            .arg("-c")
            .arg("sleep 600; exit 0")
            .arg(config)
            .process_group(0)
            .spawn()
            .expect("sh runs")
    }

    #[test]
    fn kills_the_testnets_replicas_and_nothing_else() {
        let net = tempfile::tempdir().unwrap();
        let other = tempfile::tempdir().unwrap();
        let mut ours = stand_in(&net.path().join("node0/config.toml"));
        let mut theirs = stand_in(&other.path().join("node0/config.toml"));
        // Give both shells time to start their `sleep`.
        std::thread::sleep(std::time::Duration::from_millis(200));

        let gone_pid = u32::MAX - 1;
        let killed = kill_orphans(net.path(), &[ours.id(), theirs.id(), gone_pid]);

        assert_eq!(killed, vec![ours.id()]);
        let status = ours.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        assert!(
            theirs.try_wait().unwrap().is_none(),
            "another directory's process was killed"
        );
        // The whole group went, the shell's `sleep` too.
        std::thread::sleep(std::time::Duration::from_millis(100));
        assert_eq!(group_members(ours.id()), 0);
        assert_eq!(group_members(theirs.id()), 2);

        assert_eq!(
            kill_orphans(other.path(), &[theirs.id()]),
            vec![theirs.id()]
        );
        theirs.wait().unwrap();
    }

    /// Live processes in process group `pgid` (zombies not counted).
    fn group_members(pgid: u32) -> usize {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| std::fs::read_to_string(e.ok()?.path().join("stat")).ok())
            .filter(|stat| {
                // After the command's closing parenthesis: state, ppid, pgrp.
                let fields: Vec<&str> = stat
                    .rsplit_once(')')
                    .map_or("", |(_, rest)| rest)
                    .split_whitespace()
                    .collect();
                fields.first() != Some(&"Z") && fields.get(2) == Some(&pgid.to_string().as_str())
            })
            .count()
    }
}
