//! The libp2p transport of bftnode. Empty until issue 3: dialing the validator set,
//! the bincode wire protocol with a frame bound, per-peer bounded queues.
#![forbid(unsafe_code)]
