//! A testnet of separate hosts on one machine: each replica in its own Linux network
//! namespace, with its own address on a bridge the testnet creates
//! (`bftnode testnet init --netns`).
//!
//! The plan (names and addresses) is written at `init` to `netns.toml` in the testnet
//! directory, which is how scripts find replica i's namespace and address for fault
//! drills of their own (`ip netns exec NAMESPACE iptables ...`). The namespaces and
//! the bridge are created by `testnet up` and removed by `testnet down`, so every
//! fault injected inside a namespace (firewall rules, queueing disciplines) goes with
//! it. The host keeps an address on the bridge, so clients, `testnet status` and
//! Prometheus reach the replicas from the host; no traffic leaves the machine (the
//! bridge has no other port and nothing routes to it).
//!
//! Needs root (or CAP_NET_ADMIN and CAP_SYS_ADMIN) and iproute2's `ip`.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use thiserror::Error;

/// The plan's file in the testnet directory.
pub const PLAN_FILE: &str = "netns.toml";
/// Where claims on tags are kept while a testnet directory uses one (a tmpfs,
/// emptied at boot like the namespaces themselves).
const CLAIMS: &str = "/run/bftnode/netns";
/// Testnets use `10.213.TAG.0/24`.
const NET_OCTETS: (u8, u8) = (10, 213);
/// Replica i gets `.FIRST_HOST + i`; the host `.1`.
const FIRST_HOST: u8 = 10;
const MAX_TAG: u8 = 250;

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("network namespaces need root (or CAP_NET_ADMIN and CAP_SYS_ADMIN); run as root")]
    NotRoot,
    #[error("cannot run `ip {args}`: {reason}")]
    Ip { args: String, reason: String },
    #[error("`ip {args}` failed: {stderr}")]
    IpFailed { args: String, stderr: String },
    #[error("no free testnet subnet (10.213.1-250.0/24 all in use)")]
    NoFreeTag,
    #[error("a namespace testnet holds at most {max} replicas; got {n}")]
    TooMany { n: usize, max: usize },
    #[error("{path}: {reason}")]
    File { path: String, reason: String },
    #[error("no replica {0} in this testnet")]
    NoReplica(usize),
    #[error("a loss probability must be within 0..=1; got {0}")]
    BadProbability(f64),
}

/// One replica's host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsHost {
    pub id: u32,
    /// `ip netns` name.
    pub namespace: String,
    /// Its address on the bridge (its only interface besides loopback, `eth0`).
    pub address: Ipv4Addr,
    /// The host's end of its veth pair (a port of the bridge).
    pub host_veth: String,
}

/// Everything `netns.toml` records.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsPlan {
    pub tag: u8,
    pub bridge: String,
    /// The host's address on the bridge; the subnet is `host_address/prefix_len`.
    pub host_address: Ipv4Addr,
    pub prefix_len: u8,
    pub replica: Vec<NetnsHost>,
}

impl NetnsPlan {
    /// The plan for `n` replicas under `tag`.
    ///
    /// # Errors
    /// More replicas than a /24 holds.
    pub fn new(tag: u8, n: usize) -> Result<Self, NetnsError> {
        let max = usize::from(u8::MAX - FIRST_HOST);
        if n > max {
            return Err(NetnsError::TooMany { n, max });
        }
        let (a, b) = NET_OCTETS;
        Ok(Self {
            tag,
            bridge: format!("bftbr{tag}"),
            host_address: Ipv4Addr::new(a, b, tag, 1),
            prefix_len: 24,
            replica: (0..n)
                .map(|i| NetnsHost {
                    id: i as u32,
                    namespace: format!("bft{tag}-{i}"),
                    address: Ipv4Addr::new(a, b, tag, FIRST_HOST + i as u8),
                    host_veth: format!("bft{tag}v{i}"),
                })
                .collect(),
        })
    }

    /// The plan of the testnet in `dir`, if it is a namespace testnet.
    ///
    /// # Errors
    /// A plan file that cannot be read or parsed.
    pub fn load(dir: &Path) -> Result<Option<Self>, NetnsError> {
        let path = dir.join(PLAN_FILE);
        if !path.exists() {
            return Ok(None);
        }
        let file_error = |reason: String| NetnsError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(&path).map_err(|e| file_error(e.to_string()))?;
        toml::from_str(&text)
            .map(Some)
            .map_err(|e| file_error(e.to_string()))
    }

    /// Write the plan to `dir` and claim its tag for `dir`.
    ///
    /// # Errors
    /// I/O errors.
    pub fn save(&self, dir: &Path) -> Result<(), NetnsError> {
        let path = dir.join(PLAN_FILE);
        let text = toml::to_string(self).expect("the plan serializes");
        std::fs::write(&path, text).map_err(|e| NetnsError::File {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        let claim = Path::new(CLAIMS).join(self.tag.to_string());
        let absolute = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
        std::fs::create_dir_all(CLAIMS)
            .and_then(|()| std::fs::write(&claim, absolute.display().to_string()))
            .map_err(|e| NetnsError::File {
                path: claim.display().to_string(),
                reason: e.to_string(),
            })
    }

    /// Whether the bridge exists (the namespaces are created with it).
    #[must_use]
    pub fn is_up(&self) -> bool {
        Path::new("/sys/class/net").join(&self.bridge).exists()
    }

    /// Create the bridge and every namespace that does not exist yet (or lacks
    /// its interface: the leftover of a set-up that failed half way). On failure
    /// what was made is removed again.
    ///
    /// # Errors
    /// Not root, or an `ip` command that fails.
    pub fn create(&self) -> Result<(), NetnsError> {
        require_root()?;
        self.try_create().inspect_err(|_| {
            let _ = self.destroy();
        })
    }

    fn try_create(&self) -> Result<(), NetnsError> {
        let cidr = |a: Ipv4Addr| format!("{a}/{}", self.prefix_len);
        if !self.is_up() {
            ip(&["link", "add", &self.bridge, "type", "bridge"])?;
            // Bridged frames skip the host's iptables: a host firewall that drops
            // forwarded traffic (as Docker's does) must not cut the testnet, and
            // drills put their rules inside the namespaces.
            ip(&[
                "link",
                "set",
                "dev",
                &self.bridge,
                "type",
                "bridge",
                "nf_call_iptables",
                "0",
            ])?;
            ip(&["addr", "add", &cidr(self.host_address), "dev", &self.bridge])?;
            ip(&["link", "set", &self.bridge, "up"])?;
            self.accept_bridged(true)?;
        }
        let existing = namespaces()?;
        for h in &self.replica {
            if existing.contains(&h.namespace) {
                let ready = run_ip(&["-n", &h.namespace, "-4", "addr", "show", "dev", "eth0"])
                    .is_ok_and(|out| out.contains(&format!("inet {}/", h.address)));
                if ready {
                    continue;
                }
                ip(&["netns", "del", &h.namespace])?;
            }
            let peer = format!("{}p", h.host_veth);
            if Path::new("/sys/class/net").join(&h.host_veth).exists() {
                ip(&["link", "del", &h.host_veth])?; // a lingering earlier pair
            }
            ip(&["netns", "add", &h.namespace])?;
            ip(&[
                "link",
                "add",
                &h.host_veth,
                "type",
                "veth",
                "peer",
                "name",
                &peer,
            ])?;
            ip(&["link", "set", &peer, "netns", &h.namespace])?;
            ip(&["link", "set", &h.host_veth, "master", &self.bridge, "up"])?;
            let ns = h.namespace.as_str();
            ip(&["-n", ns, "link", "set", &peer, "name", "eth0"])?;
            ip(&["-n", ns, "addr", "add", &cidr(h.address), "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
        }
        Ok(())
    }

    /// Remove every namespace (with its veth pair and whatever faults were set in
    /// it) and the bridge; what is already gone is skipped.
    ///
    /// # Errors
    /// Not root, or an `ip` command that fails.
    pub fn destroy(&self) -> Result<(), NetnsError> {
        require_root()?;
        let existing = namespaces()?;
        for h in &self.replica {
            // The veth pair goes first: a deleted namespace lingers (and keeps its
            // end of the pair, with the address on it) while the kernel still holds
            // references to it, such as sockets closing.
            if Path::new("/sys/class/net").join(&h.host_veth).exists() {
                ip(&["link", "del", &h.host_veth])?;
            }
            if existing.contains(&h.namespace) {
                ip(&["netns", "del", &h.namespace])?;
            }
        }
        if self.is_up() {
            self.accept_bridged(false)?;
            ip(&["link", "del", &self.bridge])?;
        }
        Ok(())
    }

    /// Where bridged frames pass the host's iptables anyway (`br_netfilter` loaded
    /// with `bridge-nf-call-iptables` = 1, which overrides the bridge's own
    /// setting, as on Docker and Kubernetes hosts), a host whose FORWARD policy is
    /// DROP would cut the replicas apart: accept forwarding within our bridge
    /// (`add`), or remove that rule again. Nothing to do elsewhere.
    fn accept_bridged(&self, add: bool) -> Result<(), NetnsError> {
        let global = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables")
            .is_ok_and(|v| v.trim() == "1");
        if !global {
            return Ok(());
        }
        let rule = [
            "FORWARD",
            "-i",
            &self.bridge,
            "-o",
            &self.bridge,
            "-j",
            "ACCEPT",
        ];
        let present = run("iptables", &[&["-w", "-C"], &rule[..]].concat()).is_ok();
        let action = match (add, present) {
            (true, false) => "-I",
            (false, true) => "-D",
            _ => return Ok(()),
        };
        run("iptables", &[&["-w", action], &rule[..]].concat()).map(drop)
    }

    /// Replica `id`'s host.
    ///
    /// # Errors
    /// No such replica.
    pub fn host(&self, id: usize) -> Result<&NetnsHost, NetnsError> {
        self.replica.get(id).ok_or(NetnsError::NoReplica(id))
    }

    /// The command line that runs `program` inside replica `id`'s namespace.
    ///
    /// # Errors
    /// No such replica.
    pub fn exec(&self, id: usize, program: &Path) -> Result<Command, NetnsError> {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host(id)?.namespace])
            .arg(program);
        Ok(cmd)
    }
}

/// A tag no other testnet on this machine uses: no bridge of that name, no
/// address in its subnet, and no claim by a testnet directory that still holds a
/// plan with it.
///
/// # Errors
/// Not root, `ip` missing, or every tag taken.
pub fn free_tag() -> Result<u8, NetnsError> {
    require_root()?;
    let addresses = run_ip(&["-4", "-o", "addr", "show"])?;
    let existing = namespaces()?;
    let (a, b) = NET_OCTETS;
    for tag in 1..=MAX_TAG {
        let plan = NetnsPlan::new(tag, 1)?;
        let leftover = Path::new("/sys/class/net")
            .join(&plan.replica[0].host_veth)
            .exists();
        let prefix = format!("bft{tag}-");
        let leftover = leftover || existing.iter().any(|ns| ns.starts_with(&prefix));
        if plan.is_up() || leftover || addresses.contains(&format!(" {a}.{b}.{tag}.")) {
            continue;
        }
        let claim = Path::new(CLAIMS).join(tag.to_string());
        let claimed_by = std::fs::read_to_string(&claim).ok().map(PathBuf::from);
        let live = claimed_by.is_some_and(|dir| {
            NetnsPlan::load(&dir)
                .ok()
                .flatten()
                .is_some_and(|p| p.tag == tag)
        });
        if !live {
            return Ok(tag);
        }
    }
    Err(NetnsError::NoFreeTag)
}

/// Effective user id 0 (read from /proc: no libc call needed).
fn require_root() -> Result<(), NetnsError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|rest| rest.split_whitespace().nth(1));
    if euid == Some("0") {
        Ok(())
    } else {
        Err(NetnsError::NotRoot)
    }
}

fn namespaces() -> Result<Vec<String>, NetnsError> {
    Ok(run_ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

fn ip(args: &[&str]) -> Result<(), NetnsError> {
    run_ip(args).map(drop)
}

/// Run `ip ARGS`; its standard output.
fn run_ip(args: &[&str]) -> Result<String, NetnsError> {
    run("ip", args)
}

/// Run `program ARGS`; its standard output, or the command line and its
/// standard error as the error (`ip`, and `iptables` and `tc` in or beside the
/// namespaces).
pub(crate) fn run(program: &str, args: &[&str]) -> Result<String, NetnsError> {
    let line = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| NetnsError::Ip {
            args: line.clone(),
            reason: e.to_string(),
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NetnsError::IpFailed {
            args: line,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_plan_names_fit_linux_limits_and_round_trip() {
        let plan = NetnsPlan::new(250, 245).unwrap();
        for h in &plan.replica {
            // Interface names are at most 15 bytes (IFNAMSIZ - 1), the peer's
            // temporary name included.
            assert!(format!("{}p", h.host_veth).len() <= 15, "{}", h.host_veth);
        }
        assert_eq!(plan.replica[3].address, Ipv4Addr::new(10, 213, 250, 13));
        assert_eq!(plan.host_address, Ipv4Addr::new(10, 213, 250, 1));
        let text = toml::to_string(&plan).unwrap();
        assert_eq!(toml::from_str::<NetnsPlan>(&text).unwrap(), plan);
        assert!(matches!(
            NetnsPlan::new(1, 246),
            Err(NetnsError::TooMany { .. })
        ));
    }
}
