//! Quorum certificates: decoding never panics, and verifying whatever decodes
//! against a real validator set returns an error instead of panicking.
#![no_main]
use libfuzzer_sys::fuzz_target;
use luxtensor_light::{ChainSpec, QuorumCert, ValidatorSet};
use std::sync::OnceLock;

fn set() -> &'static (ChainSpec, ValidatorSet) {
    static SET: OnceLock<(ChainSpec, ValidatorSet)> = OnceLock::new();
    SET.get_or_init(|| {
        let spec = ChainSpec::devnet(10);
        let set = spec.genesis_set().expect("devnet set");
        (spec, set)
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(qc) = QuorumCert::decode(data) {
        assert_eq!(alloy_rlp::encode(&qc), data);
        let (spec, set) = set();
        let _ = qc.verify(set, spec.chain_id);
    }
    let _ = ValidatorSet::decode(data);
});
