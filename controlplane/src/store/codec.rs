//! How values are laid out on disk: one format byte, then postcard.
//!
//! postcard is compact (a `Vec<u8>` costs its length plus a varint, where
//! JSON spends up to four bytes per byte) and has a written wire-format
//! specification. It is not self-describing, so the leading format byte is
//! what lets a later release recognise, and migrate, records written by this
//! one instead of misreading them.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::error::StoreError;

/// The only on-disk format this release writes and reads.
const FORMAT_V1: u8 = 1;

/// Encodes `value` for storage; `what` names it in the (unlikely) error.
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T, what: &str) -> Result<Vec<u8>, StoreError> {
    postcard::to_extend(value, vec![FORMAT_V1]).map_err(|source| StoreError::Encode { what: what.to_owned(), source })
}

/// Decodes bytes read from `key` (only rendered when decoding fails).
///
/// Trailing bytes are an error: a record that decodes with bytes left over
/// was not written by [`encode`], so it is treated as corrupt.
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8], key: impl FnOnce() -> String) -> Result<T, StoreError> {
    let corrupt = |key: String, reason: String| StoreError::Corrupt { key, reason };
    match bytes.split_first() {
        None => Err(corrupt(key(), "empty value".to_owned())),
        Some((&FORMAT_V1, body)) => match postcard::take_from_bytes::<T>(body) {
            Ok((value, [])) => Ok(value),
            Ok((_, rest)) => Err(corrupt(key(), format!("{} trailing bytes", rest.len()))),
            Err(e) => Err(corrupt(key(), e.to_string())),
        },
        Some((other, _)) => Err(corrupt(key(), format!("unknown format byte {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_rejects_unknown_format_trailing_bytes_and_garbage() {
        let good = encode(&(7u64, b"abc".to_vec()), "pair").expect("encode");
        let back: (u64, Vec<u8>) = decode(&good, || "k".into()).expect("decode");
        assert_eq!(back, (7, b"abc".to_vec()));

        let mut versioned = good.clone();
        versioned[0] = 9;
        let err = decode::<(u64, Vec<u8>)>(&versioned, || "meta/x".into()).unwrap_err();
        assert!(err.to_string().contains("meta/x") && err.to_string().contains("format byte 9"), "{err}");

        let mut longer = good.clone();
        longer.push(0);
        assert!(decode::<(u64, Vec<u8>)>(&longer, || "k".into()).is_err());
        assert!(decode::<(u64, Vec<u8>)>(&[], || "k".into()).is_err());
        assert!(decode::<(u64, Vec<u8>)>(&[FORMAT_V1, 0xff], || "k".into()).is_err());
    }
}
