//! Blocks: decoding never panics, decoded blocks re-encode canonically, and
//! checking the body against the header never panics either.
#![no_main]
use libfuzzer_sys::fuzz_target;
use luxtensor_light::Block;

fuzz_target!(|data: &[u8]| {
    if let Ok(block) = Block::decode(data) {
        assert_eq!(alloy_rlp::encode(&block), data);
        let _ = block.verify_body();
    }
});
