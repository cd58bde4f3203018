//! The bftnode replica and its tooling: configuration, RocksDB storage, the event
//! loop that drives the PBFT core, HTTP, the client library and the local testnet.
#![forbid(unsafe_code)]

pub mod client;
pub mod config;
pub mod http;
pub mod httpget;
pub mod replica_node;
pub mod runtime;
pub mod status;
pub mod storage;
pub mod testnet;
pub mod verify;
