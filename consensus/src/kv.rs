//! A key-value store on the [`Application`] trait: put, get, delete, compare-and-swap.

use crate::app::{Application, RestoreError};
use bft_crypto::{Digest, Hasher};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A client operation on the key-value store.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    Get {
        key: Vec<u8>,
    },
    Delete {
        key: Vec<u8>,
    },
    /// Set `key` to `new` only if its current value is `expected` (`None`: absent).
    CompareAndSwap {
        key: Vec<u8>,
        expected: Option<Vec<u8>>,
        new: Vec<u8>,
    },
}

/// The result of a [`KvOp`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvResult {
    /// Put/Delete done; carries the previous value.
    Done { previous: Option<Vec<u8>> },
    /// Get: the value, if any.
    Value(Option<Vec<u8>>),
    /// CompareAndSwap: whether it swapped, and the value found.
    Swapped {
        swapped: bool,
        current: Option<Vec<u8>>,
    },
    /// The operation bytes did not decode.
    Invalid,
}

impl KvOp {
    #[must_use]
    pub fn encode(&self) -> Vec<u8> {
        bft_crypto::encode(self).expect("KvOp always encodes")
    }
}

impl KvResult {
    /// Decode a result returned by a replica.
    ///
    /// # Errors
    /// If the bytes are not a `KvResult`.
    pub fn decode(bytes: &[u8]) -> Result<Self, bft_crypto::CryptoError> {
        bft_crypto::decode(bytes, crate::messages::MAX_MESSAGE_BYTES)
    }
}

/// Largest operation the store decodes.
const MAX_OP_BYTES: usize = 16 * 1024 * 1024;

/// An in-memory ordered map. Durability comes from PBFT checkpoints (snapshots) and
/// re-execution of the committed log after a restart.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KvStore {
    map: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl KvStore {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    #[must_use]
    pub fn get(&self, key: &[u8]) -> Option<&Vec<u8>> {
        self.map.get(key)
    }

    #[must_use]
    pub fn len(&self) -> usize {
        self.map.len()
    }

    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    fn apply(&mut self, op: KvOp) -> KvResult {
        match op {
            KvOp::Put { key, value } => KvResult::Done {
                previous: self.map.insert(key, value),
            },
            KvOp::Get { key } => KvResult::Value(self.map.get(&key).cloned()),
            KvOp::Delete { key } => KvResult::Done {
                previous: self.map.remove(&key),
            },
            KvOp::CompareAndSwap { key, expected, new } => {
                let current = self.map.get(&key).cloned();
                if current == expected {
                    self.map.insert(key, new);
                    KvResult::Swapped {
                        swapped: true,
                        current,
                    }
                } else {
                    KvResult::Swapped {
                        swapped: false,
                        current,
                    }
                }
            }
        }
    }
}

impl Application for KvStore {
    fn execute(&mut self, operation: &[u8]) -> Vec<u8> {
        let result = match bft_crypto::decode::<KvOp>(operation, MAX_OP_BYTES) {
            Ok(op) => self.apply(op),
            Err(_) => KvResult::Invalid,
        };
        bft_crypto::encode(&result).expect("KvResult always encodes")
    }

    fn snapshot(&self) -> Vec<u8> {
        bft_crypto::encode(&self.map).expect("map always encodes")
    }

    fn restore(&mut self, snapshot: &[u8]) -> Result<(), RestoreError> {
        self.map =
            bft_crypto::decode(snapshot, usize::MAX).map_err(|e| RestoreError(e.to_string()))?;
        Ok(())
    }

    fn digest(&self) -> Digest {
        let mut h = Hasher::new("bftnode/kv/v1");
        for (k, v) in &self.map {
            h.update(k).update(v);
        }
        h.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(kv: &mut KvStore, op: KvOp) -> KvResult {
        KvResult::decode(&kv.execute(&op.encode())).unwrap()
    }

    #[test]
    fn put_get_delete_cas() {
        let mut kv = KvStore::new();
        let k = b"k".to_vec();
        assert_eq!(
            run(&mut kv, KvOp::Get { key: k.clone() }),
            KvResult::Value(None)
        );
        assert_eq!(
            run(
                &mut kv,
                KvOp::Put {
                    key: k.clone(),
                    value: b"1".to_vec()
                }
            ),
            KvResult::Done { previous: None }
        );
        assert_eq!(
            run(&mut kv, KvOp::Get { key: k.clone() }),
            KvResult::Value(Some(b"1".to_vec()))
        );
        let cas = |e: Option<&[u8]>, n: &[u8]| KvOp::CompareAndSwap {
            key: k.clone(),
            expected: e.map(<[u8]>::to_vec),
            new: n.to_vec(),
        };
        assert_eq!(
            run(&mut kv, cas(Some(b"0"), b"2")),
            KvResult::Swapped {
                swapped: false,
                current: Some(b"1".to_vec())
            }
        );
        assert_eq!(
            run(&mut kv, cas(Some(b"1"), b"2")),
            KvResult::Swapped {
                swapped: true,
                current: Some(b"1".to_vec())
            }
        );
        assert_eq!(
            run(&mut kv, KvOp::Delete { key: k.clone() }),
            KvResult::Done {
                previous: Some(b"2".to_vec())
            }
        );
        assert_eq!(
            run(&mut kv, cas(None, b"3")),
            KvResult::Swapped {
                swapped: true,
                current: None
            }
        );
    }

    #[test]
    fn garbage_operation_is_an_invalid_result_not_a_panic() {
        let mut kv = KvStore::new();
        assert_eq!(
            KvResult::decode(&kv.execute(&[0xff, 0xff, 0xff])).unwrap(),
            KvResult::Invalid
        );
        assert!(kv.is_empty());
    }

    #[test]
    fn snapshot_restore_and_digest_agree() {
        let mut a = KvStore::new();
        for i in 0..50u8 {
            run(
                &mut a,
                KvOp::Put {
                    key: vec![i],
                    value: vec![i; 3],
                },
            );
        }
        let mut b = KvStore::new();
        b.restore(&a.snapshot()).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.digest(), b.digest());
        run(&mut b, KvOp::Delete { key: vec![7] });
        assert_ne!(a.digest(), b.digest());
        assert!(b.restore(b"nonsense").is_err());
    }
}
