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
        .filter(|pid| kill_group(*pid))
        .collect()
}

/// SIGKILL the process group led by `pid`; whether the signal was sent.
fn kill_group(pid: u32) -> bool {
    Command::new("kill")
        .args(["-KILL", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Whether process `pid` is alive with a path under `dir` in its command line
/// (under `dir/`, so a sibling such as `dir2/...` does not count).
fn runs_under(pid: u32, dir: &str) -> bool {
    let under = format!("{}/", dir.trim_end_matches('/'));
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline
            .split(|b| *b == 0)
            .any(|arg| String::from_utf8_lossy(arg).starts_with(&under))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::{CommandExt as _, ExitStatusExt as _};

    /// A stand-in replica: a shell (with a child of its own, as a replica has
    /// threads and may have children) whose command line names `config`, leading
    /// a process group of its own as `testnet up` starts replicas. The group is
    /// killed when this is dropped, so a failed assertion leaves nothing behind.
    struct StandIn(std::process::Child);

    impl StandIn {
        fn start(config: &Path) -> Self {
            let child = Command::new("sh")
                .arg("-c")
                .arg("sleep 600; exit 0")
                .arg(config)
                .process_group(0)
                .spawn()
                .expect("sh runs");
            let this = Self(child);
            // The shell and its `sleep`, before anything is asserted about them.
            assert!(
                within(|| group_members(this.pid()) == 2),
                "no sleep started"
            );
            this
        }

        fn pid(&self) -> u32 {
            self.0.id()
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            let _ = kill_group(self.pid());
            let _ = self.0.wait();
        }
    }

    /// Whether `cond` holds within 10 s (polled: the machine may be busy).
    fn within(cond: impl Fn() -> bool) -> bool {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline {
            if cond() {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        cond()
    }

    #[test]
    fn kills_the_testnets_replicas_and_nothing_else() {
        let net = tempfile::tempdir().unwrap();
        // Another testnet whose directory's name begins with ours.
        let other = tempfile::Builder::new()
            .prefix(&format!(
                "{}2",
                net.path().file_name().unwrap().to_string_lossy()
            ))
            .tempdir_in(net.path().parent().unwrap())
            .unwrap();
        let mut ours = StandIn::start(&net.path().join("node0/config.toml"));
        let theirs = StandIn::start(&other.path().join("node0/config.toml"));

        let gone_pid = u32::MAX - 1;
        let killed = kill_orphans(net.path(), &[ours.pid(), theirs.pid(), gone_pid]);

        assert_eq!(killed, vec![ours.pid()]);
        let status = ours.0.wait().unwrap();
        assert_eq!(status.signal(), Some(9), "{status}");
        // The whole group went, the shell's `sleep` too; the other testnet's stayed.
        assert!(within(|| group_members(ours.pid()) == 0));
        assert_eq!(group_members(theirs.pid()), 2);

        assert_eq!(
            kill_orphans(other.path(), &[theirs.pid()]),
            vec![theirs.pid()]
        );
        assert!(within(|| group_members(theirs.pid()) == 0));
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
