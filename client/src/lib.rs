//! The bftnode client library: [`KvClient`] (the sans-IO PBFT client in
//! `bft_consensus::client` driven over the network), the [`Gateway`] it travels
//! through, and the client's configuration. It holds no storage, so a client or
//! the load generator builds without RocksDB.
//!
//! One transport: every client is a session of a gateway. [`KvClient::connect`]
//! starts a gateway of its own whose transport key is the client's key;
//! [`KvClient::via`] puts many clients, each with its own key, behind one shared
//! gateway (one connection per replica).
#![forbid(unsafe_code)]

pub mod config;
pub mod gateway;
pub mod kv_client;

pub use gateway::Gateway;
pub use kv_client::{ClientError, KvClient};

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Verified reply roots remembered per cache (a few seconds of batches at full load).
pub(crate) const ROOT_CACHE: usize = 4096;
/// Largest frame a client accepts (a reply carries at most one operation's result).
pub(crate) const MAX_FRAME_BYTES: usize = 16 * 1024 * 1024;

/// Check `ready` every 20 ms until it holds (true) or `within` passes (false).
pub(crate) async fn poll_until(within: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + within;
    while Instant::now() < end {
        if ready() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

/// Microseconds of wall-clock time: client timestamps and route issue times come
/// from it, so a restarted client never reuses one.
pub(crate) fn wall_clock_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(1, |d| d.as_micros() as u64)
}
