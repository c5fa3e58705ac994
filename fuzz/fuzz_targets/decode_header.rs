//! Signed and certified headers: decoding never panics, and what decodes
//! re-encodes to the same bytes (the encoding is canonical).
#![no_main]
use libfuzzer_sys::fuzz_target;
use luxtensor_light::{CertifiedHeader, SignedHeader};

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = SignedHeader::decode(data) {
        assert_eq!(alloy_rlp::encode(&header), data);
        let _ = header.hash();
    }
    if let Ok(certified) = CertifiedHeader::decode(data) {
        assert_eq!(alloy_rlp::encode(&certified), data);
    }
});
