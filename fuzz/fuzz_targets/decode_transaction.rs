//! Transactions as `eth_sendRawTransaction` carries them (EIP-2718 bytes):
//! decoding never panics; accepted ones round-trip and recovery never panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use luxtensor_light::SignedTransaction;

fuzz_target!(|data: &[u8]| {
    if let Ok(tx) = SignedTransaction::decode_2718(data) {
        assert_eq!(tx.encoded_2718(), data);
        let _ = tx.recover_sender();
    }
});
