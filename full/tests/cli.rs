//! The `luxtensor-node` command line: key generation and configuration errors.
//! (Being an integration test of `luxtensor-full`, this file also makes
//! `cargo test --workspace` build the binary that the process tests in
//! `tests/` start.)

use std::process::Command;

fn node() -> Command {
    Command::new(env!("CARGO_BIN_EXE_luxtensor-node"))
}

#[test]
fn keygen_writes_a_key_and_prints_what_staking_needs() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("validator.key");
    let out = node().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let hex = std::fs::read_to_string(&key).unwrap();
    let secret = luxtensor_light::BlsSecretKey::from_bytes(
        &alloy_primitives::hex::decode(hex.trim()).unwrap(),
    )
    .unwrap();
    let public_key = secret.public_key().to_string();
    assert!(stdout.contains(&public_key), "{stdout}");
    let pop = secret.proof_of_possession(31337);
    let calldata =
        luxtensor_full::staking::stake_calldata(secret.public_key().as_slice(), pop.as_slice());
    assert!(stdout.contains(&calldata.to_string()), "{stdout}");

    // A second run refuses to overwrite the key.
    let again = node().args(["keygen", "--out"]).arg(&key).output().unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("refusing to overwrite"));
    assert_eq!(std::fs::read_to_string(&key).unwrap(), hex);
}

#[test]
fn configuration_errors_name_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let missing = node()
        .args([
            "run",
            "--no-rpc",
            "--chain",
            "/nonexistent/chain.toml",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!missing.status.success());
    assert!(
        String::from_utf8_lossy(&missing.stderr).contains("--chain /nonexistent/chain.toml"),
        "{}",
        String::from_utf8_lossy(&missing.stderr)
    );

    let config = dir.path().join("node.toml");
    std::fs::write(&config, "data-dir = \"x\"\nmax-peer = 3\n").unwrap();
    let unknown = node()
        .args(["run", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(!unknown.status.success());
    let stderr = String::from_utf8_lossy(&unknown.stderr);
    assert!(stderr.contains("max-peer"), "{stderr}");

    let bad_addr = node()
        .args([
            "run",
            "--no-rpc",
            "--p2p-addr",
            "not-a-multiaddr",
            "--data-dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!bad_addr.status.success());
    assert!(String::from_utf8_lossy(&bad_addr.stderr).contains("--p2p-addr"));
}
