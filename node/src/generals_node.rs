//! The signed-message generals engine as the node runs it: wall-clock time (so
//! every replica on the machine or a synced LAN times rounds alike), the generals
//! side of the behaviour in force, and the view served at `GET /generals/{id}`.

use crate::control::GeneralsView;
use bft_consensus::generals::{
    for_behaviour, Generals, GeneralsBehaviour, GeneralsOutput, InstanceId, VerifiedChain,
};
use bft_crypto::KeyPair;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Added to the failure detector's delay bound to cover clock skew between
/// replicas (same machine or NTP-synced LAN).
pub const CLOCK_SKEW_ALLOWANCE: Duration = Duration::from_millis(50);

pub struct GeneralsNode {
    engine: Generals,
    behaviour: Box<dyn GeneralsBehaviour>,
    n: usize,
}

/// Wall-clock time since the Unix epoch.
#[must_use]
pub fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

impl GeneralsNode {
    #[must_use]
    pub fn new(me: u32, n: usize, key: KeyPair, behaviour: &str) -> Self {
        // Nonces from the start time: a restarted commander never reuses one.
        let nonce = u64::try_from(unix_now().as_millis()).unwrap_or(0);
        Self {
            engine: Generals::new(me, n, key, nonce),
            behaviour: for_behaviour(behaviour),
            n,
        }
    }

    pub fn set_behaviour(&mut self, name: &str) {
        self.behaviour = for_behaviour(name);
    }

    fn lie(&mut self, out: Vec<GeneralsOutput>) -> Vec<GeneralsOutput> {
        let me = self.engine.id();
        let key = self.engine.key().clone();
        self.behaviour.outputs(me, &key, out)
    }

    /// Start an instance as commander; rounds last `delay_bound` plus skew.
    pub fn propose(
        &mut self,
        value: String,
        m: Option<u32>,
        delay_bound: Duration,
    ) -> Result<(InstanceId, Vec<GeneralsOutput>), String> {
        let max_m = self.engine.max_m();
        let m = m.unwrap_or(max_m);
        if m > max_m {
            return Err(format!(
                "m = {m} needs n >= m+2 replicas; this group has {}",
                self.n
            ));
        }
        if value.len() > bft_consensus::generals::messages::MAX_VALUE_BYTES {
            return Err("value too long".into());
        }
        let round = delay_bound + CLOCK_SKEW_ALLOWANCE;
        let (id, out) = self.engine.propose(unix_now(), value, m, round);
        Ok((id, self.lie(out)))
    }

    pub fn on_chain(&mut self, chain: VerifiedChain) -> Vec<GeneralsOutput> {
        let out = self.engine.on_chain(unix_now(), chain);
        self.lie(out)
    }

    pub fn on_report(&mut self, report: &bft_consensus::generals::Report) {
        self.engine.on_report(report);
    }

    pub fn on_timer(&mut self) -> Vec<GeneralsOutput> {
        let out = self.engine.on_timer(unix_now());
        self.lie(out)
    }

    /// When the next instance decides, as an `Instant`.
    #[must_use]
    pub fn next_deadline(&self) -> Option<Instant> {
        let at = self.engine.next_deadline()?;
        Some(Instant::now() + at.saturating_sub(unix_now()))
    }

    #[must_use]
    pub fn view(&self, id: &InstanceId) -> Option<GeneralsView> {
        let s = self.engine.instance(id)?;
        Some(GeneralsView {
            id: id.to_string(),
            commander: id.commander,
            n: self.n,
            m: s.instance.m,
            round_ms: s.instance.round_ms,
            decide_at_ms: s.instance.decide_at_ms(),
            done: s.decided.is_some(),
            decided: s.decided.clone().flatten(),
            values: s.values.iter().cloned().collect(),
            reports: s
                .reports
                .iter()
                .map(|(r, v)| (r.to_string(), v.clone()))
                .collect(),
        })
    }
}
