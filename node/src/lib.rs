//! The bftnode replica and its tooling: configuration, RocksDB storage, the event
//! loop that drives the PBFT core, HTTP, the CLI's helpers and the local testnet.
//! The client library is a crate of its own (`bft_client`).
#![forbid(unsafe_code)]

pub mod admin_client;
pub mod committed_log;
pub mod config;
pub mod control;
pub mod generals_node;
pub mod http;
pub mod http_admin;
pub mod http_client;
pub mod k8s;
pub mod loop_cpu;
pub mod metrics;
pub mod netfault;
pub mod netns;
pub mod replica_node;
pub mod runtime;
pub mod status;
pub mod storage;
pub mod testnet;
pub mod verify;
