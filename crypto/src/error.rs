use thiserror::Error;

/// Everything that can go wrong in this crate, each with the detail a log line needs.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum CryptoError {
    #[error("signature does not verify")]
    BadSignature,
    #[error("malformed public key")]
    BadPublicKey,
    #[error("public key of small order (anybody can sign for it)")]
    WeakKey,
    #[error("encode failed: {0}")]
    Encode(String),
    #[error("decode failed: {0}")]
    Decode(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
}
