//! Signed-message Byzantine generals: Lamport, Shostak & Pease's SM(m), sans-IO.
//!
//! With unforgeable signatures, loyal lieutenants agree (IC1) and follow a loyal
//! commander (IC2) for any number m of traitors, given n >= m+2 and synchronous
//! rounds. [`messages`] holds the signature chains and their verification,
//! [`engine`] the protocol, [`behaviours`] the traitors.

pub mod behaviours;
pub mod engine;
pub mod messages;

pub use behaviours::{for_behaviour, GeneralsBehaviour};
pub use engine::{choice, Generals, GeneralsOutput, InstanceState};
pub use messages::{verify_chain, Chain, Instance, InstanceId, Report, VerifiedChain};
