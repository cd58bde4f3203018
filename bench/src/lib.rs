//! Benchmarks for bftnode: the load generator behind `bftnode-bench` (and
//! `bftnode bench`), the unreplicated baseline it compares against, reports and
//! plots, and the in-process harness the criterion benchmarks drive.
#![forbid(unsafe_code)]

pub mod compare;
pub mod cpu;
pub mod in_process;
pub mod loadgen;
pub mod loop_phases;
pub mod orphans;
pub mod plot;
pub mod report;
pub mod timeline;
pub mod unreplicated;

pub use in_process::{signed_requests, InProcessCluster};
