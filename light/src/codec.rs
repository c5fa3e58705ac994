//! Total decoding: every decoder in the protocol goes through [`decode_exact`].
//!
//! `alloy-rlp` already rejects non-canonical integers and lengths; this module
//! adds the two checks every wire decoder needs on top: a size cap applied
//! *before* any work is done, and a refusal of trailing bytes.

use alloy_rlp::Decodable;

/// Largest encoded header we accept (a header with a QC for a set of
/// `u16::MAX` validators stays well below this).
pub const MAX_HEADER_BYTES: usize = 64 * 1024;
/// Largest encoded block we accept.
pub const MAX_BLOCK_BYTES: usize = 10 * 1024 * 1024;
/// Largest encoded transaction we accept (geth's txpool cap is 128 KiB).
pub const MAX_TRANSACTION_BYTES: usize = 128 * 1024;
/// Largest encoded quorum certificate we accept.
pub const MAX_QC_BYTES: usize = 16 * 1024;
/// Largest encoded validator set we accept.
pub const MAX_VALIDATOR_SET_BYTES: usize = 4 * 1024 * 1024;

/// Why a byte string could not be decoded into a protocol value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The input is larger than the cap for this kind of value.
    #[error("{what}: {len} bytes is over the limit of {max}")]
    Oversized {
        /// What was being decoded.
        what: &'static str,
        /// Length of the input.
        len: usize,
        /// The cap for this kind of value.
        max: usize,
    },
    /// The value decoded but bytes were left over.
    #[error("{what}: {extra} trailing bytes after the value")]
    TrailingBytes {
        /// What was being decoded.
        what: &'static str,
        /// Number of bytes left over.
        extra: usize,
    },
    /// The RLP itself is malformed, truncated or non-canonical.
    #[error("{what}: invalid RLP: {source}")]
    Rlp {
        /// What was being decoded.
        what: &'static str,
        /// The underlying RLP error.
        source: alloy_rlp::Error,
    },
    /// The RLP is well formed but the value breaks a rule of the type.
    #[error("{what}: {reason}")]
    Invalid {
        /// What was being decoded.
        what: &'static str,
        /// The rule that was broken.
        reason: String,
    },
}

/// Decodes exactly one `T` from `bytes`, refusing inputs over `max` bytes and
/// trailing data.
pub fn decode_exact<T: Decodable>(
    what: &'static str,
    bytes: &[u8],
    max: usize,
) -> Result<T, DecodeError> {
    if bytes.len() > max {
        return Err(DecodeError::Oversized {
            what,
            len: bytes.len(),
            max,
        });
    }
    let mut buf = bytes;
    let value = T::decode(&mut buf).map_err(|source| DecodeError::Rlp { what, source })?;
    if !buf.is_empty() {
        return Err(DecodeError::TrailingBytes {
            what,
            extra: buf.len(),
        });
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_oversized_input_before_decoding() {
        let err = decode_exact::<u64>("number", &[0u8; 10], 9).unwrap_err();
        assert_eq!(
            err,
            DecodeError::Oversized {
                what: "number",
                len: 10,
                max: 9
            }
        );
    }

    #[test]
    fn refuses_trailing_bytes() {
        let err = decode_exact::<u64>("number", &[0x05, 0x06], 16).unwrap_err();
        assert_eq!(
            err,
            DecodeError::TrailingBytes {
                what: "number",
                extra: 1
            }
        );
    }

    #[test]
    fn refuses_non_canonical_integers() {
        // 0x81 0x05 encodes 5 as a one-byte string: canonical form is 0x05.
        let err = decode_exact::<u64>("number", &[0x81, 0x05], 16).unwrap_err();
        assert!(matches!(err, DecodeError::Rlp { .. }), "{err}");
        // Leading zero.
        let err = decode_exact::<u64>("number", &[0x82, 0x00, 0x05], 16).unwrap_err();
        assert!(matches!(err, DecodeError::Rlp { .. }), "{err}");
    }
}
