//! The bftnode replica: runtime loop, RocksDB storage, HTTP, CLI. Empty until issue 3.
#![forbid(unsafe_code)]
