//! The devnet's funded accounts are exactly the first 20 accounts of the
//! standard development mnemonic, so Hardhat/Anvil keys work unchanged.

use alloy_signer_local::{MnemonicBuilder, coins_bip39::English};
use luxtensor_light::chain_spec::{DEV_ACCOUNTS, DEV_MNEMONIC};

#[test]
fn dev_accounts_derive_from_the_standard_mnemonic() {
    for (index, expected) in DEV_ACCOUNTS.iter().enumerate() {
        let signer = MnemonicBuilder::<English>::default()
            .phrase(DEV_MNEMONIC)
            .index(index as u32)
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(signer.address(), *expected, "dev account {index}");
    }
    assert_eq!(
        DEV_ACCOUNTS[0].to_checksum(None),
        "0xf39Fd6e51aad88F6F4ce6aB8827279cffFb92266"
    );
}
