//! Network faults between the replicas of a namespace testnet ([`crate::netns`]):
//! partitions, random loss, slow links and redirection (for a delaying proxy), set
//! inside the replicas' namespaces with `iptables` and `tc`, so the host is never
//! touched and `testnet down` removes them with the namespaces.
//!
//! Partitions and loss affect only traffic between replicas: the host (clients,
//! HTTP, Prometheus) still reaches every replica, as a drill's observer must. A
//! slow link ([`NetnsPlan::slow`]) shapes everything the replica sends, replies to
//! the host included. This kernel has no
//! `netem`, so delay is not a queueing discipline here: [`NetnsPlan::redirect`]
//! sends one replica's connections to another through a proxy of the caller's
//! (the fault drills run one that holds every chunk for a random delay).

use crate::netns::{run, NetnsError, NetnsPlan};
use std::net::SocketAddrV4;

impl NetnsPlan {
    /// Cut the link between replicas `a` and `b`, both ways.
    ///
    /// # Errors
    /// An `iptables` command that fails.
    pub fn cut(&self, a: usize, b: usize) -> Result<(), NetnsError> {
        for (from, to) in [(a, b), (b, a)] {
            let peer = self.host(to)?.address.to_string();
            self.iptables(from, &["-A", "OUTPUT", "-d", &peer, "-j", "DROP"])?;
            self.iptables(from, &["-A", "INPUT", "-s", &peer, "-j", "DROP"])?;
        }
        Ok(())
    }

    /// Cut every link between replicas of different groups (a replica in no
    /// group keeps all its links).
    ///
    /// # Errors
    /// As [`Self::cut`].
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), NetnsError> {
        for (g, group) in groups.iter().enumerate() {
            for other in &groups[g + 1..] {
                for a in *group {
                    for b in *other {
                        self.cut(*a, *b)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Cut replica `i` off from every other replica.
    ///
    /// # Errors
    /// As [`Self::cut`].
    pub fn isolate(&self, i: usize) -> Result<(), NetnsError> {
        let rest: Vec<usize> = (0..self.replica.len()).filter(|j| *j != i).collect();
        self.partition(&[&[i], &rest])
    }

    /// Drop each packet replica `i` sends to another replica with `probability`.
    ///
    /// # Errors
    /// A probability outside 0..=1, or an `iptables` command that fails.
    pub fn lose(&self, i: usize, probability: f64) -> Result<(), NetnsError> {
        if !(0.0..=1.0).contains(&probability) {
            return Err(NetnsError::BadProbability(probability));
        }
        self.host(i)?;
        let p = format!("{probability:.4}");
        for (j, h) in self.replica.iter().enumerate() {
            if j != i {
                let peer = h.address.to_string();
                self.iptables(
                    i,
                    &[
                        "-A",
                        "OUTPUT",
                        "-d",
                        &peer,
                        "-m",
                        "statistic",
                        "--mode",
                        "random",
                        "--probability",
                        &p,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        Ok(())
    }

    /// Limit everything replica `i` sends to `kbit` kilobits per second (a token
    /// bucket on its interface; the excess queues, then drops).
    ///
    /// # Errors
    /// A `tc` command that fails.
    pub fn slow(&self, i: usize, kbit: u32) -> Result<(), NetnsError> {
        let rate = format!("{kbit}kbit");
        self.in_namespace(
            i,
            "tc",
            &[
                "qdisc", "replace", "dev", "eth0", "root", "tbf", "rate", &rate, "burst", "32kb",
                "latency", "400ms",
            ],
        )
    }

    /// Send the TCP connections replica `i` opens to `port` of replica `to` to
    /// `via` instead (a proxy on the host's bridge address that forwards them).
    /// Connections already open keep their path, both ways: set this up before
    /// the replicas start; and [`Self::heal`] only stops new connections from
    /// taking the proxy (the kernel's connection tracking keeps the open ones on
    /// it until they close).
    ///
    /// # Errors
    /// An `iptables` command that fails.
    pub fn redirect(
        &self,
        i: usize,
        to: usize,
        port: u16,
        via: SocketAddrV4,
    ) -> Result<(), NetnsError> {
        let dest = self.host(to)?.address.to_string();
        self.iptables(
            i,
            &[
                "-t",
                "nat",
                "-A",
                "OUTPUT",
                "-p",
                "tcp",
                "-d",
                &dest,
                "--dport",
                &port.to_string(),
                "-j",
                "DNAT",
                "--to-destination",
                &via.to_string(),
            ],
        )
    }

    /// Remove every fault set in replica `i`'s namespace.
    ///
    /// # Errors
    /// An `iptables` command that fails.
    pub fn heal(&self, i: usize) -> Result<(), NetnsError> {
        self.iptables(i, &["-F"])?;
        self.iptables(i, &["-t", "nat", "-F"])?;
        // No queueing discipline of ours is not an error.
        let _ = self.in_namespace(i, "tc", &["qdisc", "del", "dev", "eth0", "root"]);
        Ok(())
    }

    /// [`Self::heal`] every replica.
    ///
    /// # Errors
    /// As [`Self::heal`].
    pub fn heal_all(&self) -> Result<(), NetnsError> {
        (0..self.replica.len()).try_for_each(|i| self.heal(i))
    }

    fn iptables(&self, i: usize, args: &[&str]) -> Result<(), NetnsError> {
        // -w: wait for the xtables lock rather than fail beside another caller.
        let mut all = vec!["-w"];
        all.extend_from_slice(args);
        self.in_namespace(i, "iptables", &all)
    }

    fn in_namespace(&self, i: usize, program: &str, args: &[&str]) -> Result<(), NetnsError> {
        let ns = &self.host(i)?.namespace;
        let line = [&["netns", "exec", ns.as_str(), program], args].concat();
        run("ip", &line).map(drop)
    }
}
