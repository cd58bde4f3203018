//! The bftnode replica and its tooling: configuration, RocksDB storage, the event
//! loop that drives the PBFT core, HTTP, the client library and the local testnet.
#![forbid(unsafe_code)]

pub mod admin_client;
pub mod client;
pub mod committed_log;
pub mod config;
pub mod control;
pub mod gateway;
pub mod generals_node;
pub mod http;
pub mod http_admin;
pub mod http_client;
pub mod k8s;
mod link;
pub mod metrics;
pub mod netfault;
pub mod netns;
pub mod replica_node;
pub mod runtime;
pub mod status;
pub mod storage;
pub mod testnet;
pub mod verify;
