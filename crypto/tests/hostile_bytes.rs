//! Decoding bytes from the network never trusts a length the bytes claim: a frame
//! of a few bytes claiming a byte string of 2^60 bytes used to reach bincode's
//! `vec![0; len]` and panic with "capacity overflow" (or, for lengths that fit,
//! allocate them), a remote crash. Found by the simulator's adversarial family
//! (a Byzantine client's garbage frame, `bft-sim --family adversarial --f 1`).

use bft_crypto::decode;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct Holder {
    #[serde(with = "bft_crypto::bytes")]
    value: Vec<u8>,
}

/// bincode's varint for a u64 length: 253 then 8 little-endian bytes.
fn claiming(len: u64) -> Vec<u8> {
    let mut bytes = vec![253];
    bytes.extend_from_slice(&len.to_le_bytes());
    bytes.extend_from_slice(b"short");
    bytes
}

#[test]
fn a_claimed_length_beyond_the_input_is_an_error_not_a_panic_or_an_allocation() {
    for len in [u64::MAX, 1 << 60, 1 << 40, 1 << 30, 6] {
        let err = decode::<Holder>(&claiming(len), 1024).unwrap_err();
        assert!(err.to_string().contains("decode"), "{len}: {err}");
    }
}

#[test]
fn an_honest_byte_string_still_decodes() {
    let mut bytes = vec![5];
    bytes.extend_from_slice(b"short");
    let h: Holder = decode(&bytes, 1024).expect("decodes");
    assert_eq!(h.value, b"short");
}
