//! The libp2p transport of bftnode.
//!
//! TCP + noise + yamux. A replica's libp2p identity *is* its ed25519 replica key,
//! so the noise handshake already authenticates which replica a connection belongs
//! to. Messages travel as length-prefixed frames (bounded: a hostile peer cannot
//! make us allocate more than `max_frame_bytes`) over one long-lived stream per
//! direction and peer. Every peer has its own bounded outbound queue and writer
//! task, so one slow or dead peer never stalls the others: when its queue is full,
//! new frames for it are dropped and counted (PBFT tolerates message loss).
#![forbid(unsafe_code)]

mod frame;
mod identity;
mod reader;
mod transport;
mod writer;

pub use frame::{read_frame, write_frames, FrameError, FRAME_CHUNK};
pub use identity::{keypair_of, peer_id_of, public_key_of};
pub use libp2p::{Multiaddr, PeerId};
pub use transport::{
    Inbound, IngressLimits, NetConfig, NetError, NetHandle, NetStats, Network, SendError,
};

/// The consensus wire protocol's name, versioned. Version 2: the reader confirms
/// each stream with one byte before the writer sends frames (see `writer`).
/// Version 3: each frame is a `bft_consensus::Frame` (a PBFT message, or the
/// node's generals and reply-route frames beside it), one tag byte before what
/// version 2 carried.
pub const PROTOCOL: libp2p::StreamProtocol = libp2p::StreamProtocol::new("/bftnode/consensus/3");
