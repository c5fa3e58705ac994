//! Validator signatures: BLS12-381 in Ethereum's min-pk scheme (48-byte public
//! keys, 96-byte signatures), with domain separation per message kind and per
//! chain id.
//!
//! Every signed message is a 32-byte *signing root*:
//! `keccak256("LUXTENSOR" ‖ domain ‖ chain_id as 8 big-endian bytes ‖ payload)`,
//! where `domain` is one byte ([`Domain`]) and `payload` is 32 bytes. Votes
//! and proposals are signed with the ciphersuite
//! `BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_`, proofs of possession with
//! `BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_` (the IETF draft's PoP scheme,
//! as Ethereum uses it), so a proof of possession can never be replayed as a
//! vote and a vote of one chain never counts on another.

use alloy_primitives::{B256, FixedBytes, keccak256};
use blst::BLST_ERROR;
use blst::min_pk::{PublicKey, SecretKey, Signature};

/// A compressed BLS public key (48 bytes), as it appears on the wire.
pub type BlsPublicKey = FixedBytes<48>;
/// A compressed BLS signature (96 bytes), as it appears on the wire.
pub type BlsSignature = FixedBytes<96>;

/// Ciphersuite for votes and proposals.
pub const SIGNATURE_DST: &[u8] = b"BLS_SIG_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";
/// Ciphersuite for proofs of possession.
pub const POP_DST: &[u8] = b"BLS_POP_BLS12381G2_XMD:SHA-256_SSWU_RO_POP_";

/// What a signature is for; part of every signing root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Domain {
    /// A validator's vote for a block (payload: slot and block hash).
    Vote = 1,
    /// A proposer's seal on a header (payload: the block hash).
    Proposal = 2,
    /// A proof that the registrant holds the secret key (payload: the public key's hash).
    ProofOfPossession = 3,
}

/// Why a key or signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BlsError {
    /// The bytes are not a valid compressed public key in the right subgroup (or are the identity).
    #[error("invalid BLS public key: {0:?}")]
    InvalidPublicKey(BLST_ERROR),
    /// The bytes are not a valid compressed signature.
    #[error("invalid BLS signature encoding: {0:?}")]
    InvalidSignature(BLST_ERROR),
    /// The signature is well formed but does not verify for this key and message.
    #[error("BLS signature does not verify")]
    VerificationFailed,
    /// Key material for key generation was shorter than 32 bytes.
    #[error("BLS key material must be at least 32 bytes")]
    ShortKeyMaterial,
}

/// The 32-byte message that is actually signed for `domain` on `chain_id`.
pub fn signing_root(domain: Domain, chain_id: u64, payload: &B256) -> B256 {
    let mut buf = [0u8; 9 + 1 + 8 + 32];
    buf[..9].copy_from_slice(b"LUXTENSOR");
    buf[9] = domain as u8;
    buf[10..18].copy_from_slice(&chain_id.to_be_bytes());
    buf[18..].copy_from_slice(payload.as_slice());
    keccak256(buf)
}

/// Signing root of a vote for `block_hash` at `slot`.
pub fn vote_signing_root(chain_id: u64, slot: u64, block_hash: &B256) -> B256 {
    let mut payload = [0u8; 40];
    payload[..8].copy_from_slice(&slot.to_be_bytes());
    payload[8..].copy_from_slice(block_hash.as_slice());
    signing_root(Domain::Vote, chain_id, &keccak256(payload))
}

/// Signing root of a proposer's seal on the header with hash `block_hash`.
pub fn proposal_signing_root(chain_id: u64, block_hash: &B256) -> B256 {
    signing_root(Domain::Proposal, chain_id, block_hash)
}

/// Signing root of a proof of possession for `public_key`.
pub fn pop_signing_root(chain_id: u64, public_key: &BlsPublicKey) -> B256 {
    signing_root(Domain::ProofOfPossession, chain_id, &keccak256(public_key))
}

/// Decompresses and validates a public key: on the curve, in the prime-order
/// subgroup, not the identity. About 60 µs, which is why a
/// [`ValidatorSet`](crate::ValidatorSet) keeps its keys decoded.
pub fn decode_public_key(bytes: &BlsPublicKey) -> Result<PublicKey, BlsError> {
    PublicKey::key_validate(bytes.as_slice()).map_err(BlsError::InvalidPublicKey)
}

/// Decompresses a signature (the subgroup check happens during verification).
pub fn decode_signature(bytes: &BlsSignature) -> Result<Signature, BlsError> {
    Signature::from_bytes(bytes.as_slice()).map_err(BlsError::InvalidSignature)
}

/// Verifies one signature by one key over a signing root.
pub fn verify(
    public_key: &PublicKey,
    signing_root: &B256,
    signature: &BlsSignature,
) -> Result<(), BlsError> {
    let signature = decode_signature(signature)?;
    match signature.verify(
        true,
        signing_root.as_slice(),
        SIGNATURE_DST,
        &[],
        public_key,
        false,
    ) {
        BLST_ERROR::BLST_SUCCESS => Ok(()),
        _ => Err(BlsError::VerificationFailed),
    }
}

/// Checks a proof of possession for `public_key` on `chain_id`; required
/// before a key may join a validator set, so that aggregate signatures cannot
/// be forged by rogue-key attacks.
pub fn verify_proof_of_possession(
    chain_id: u64,
    public_key: &BlsPublicKey,
    proof: &BlsSignature,
) -> Result<(), BlsError> {
    let key = decode_public_key(public_key)?;
    let proof = decode_signature(proof)?;
    let root = pop_signing_root(chain_id, public_key);
    match proof.verify(true, root.as_slice(), POP_DST, &[], &key, false) {
        BLST_ERROR::BLST_SUCCESS => Ok(()),
        _ => Err(BlsError::VerificationFailed),
    }
}

/// A validator's secret key, with its public key (derived once: deriving
/// it costs a scalar multiplication, and signers compare it often). Signing
/// is pure; where the key lives (file, remote signer) is the binary's
/// business.
#[derive(Clone)]
pub struct BlsSecretKey {
    secret: SecretKey,
    public: BlsPublicKey,
}

impl std::fmt::Debug for BlsSecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "BlsSecretKey({})", self.public)
    }
}

impl BlsSecretKey {
    fn new(secret: SecretKey) -> Self {
        let public = BlsPublicKey::from(secret.sk_to_pk().compress());
        Self { secret, public }
    }

    /// Derives a key from at least 32 bytes of key material (IETF `KeyGen`).
    pub fn from_key_material(ikm: &[u8]) -> Result<Self, BlsError> {
        SecretKey::key_gen(ikm, &[])
            .map(Self::new)
            .map_err(|_| BlsError::ShortKeyMaterial)
    }

    /// Restores a key from its 32-byte big-endian scalar.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, BlsError> {
        SecretKey::from_bytes(bytes)
            .map(Self::new)
            .map_err(BlsError::InvalidPublicKey)
    }

    /// The 32-byte big-endian scalar, for storing the key.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.secret.to_bytes()
    }

    /// The compressed public key.
    pub fn public_key(&self) -> BlsPublicKey {
        self.public
    }

    /// Signs a signing root (see [`signing_root`]).
    pub fn sign(&self, signing_root: &B256) -> BlsSignature {
        BlsSignature::from(
            self.secret
                .sign(signing_root.as_slice(), SIGNATURE_DST, &[])
                .compress(),
        )
    }

    /// The proof of possession to submit when registering this key on `chain_id`.
    pub fn proof_of_possession(&self, chain_id: u64) -> BlsSignature {
        let root = pop_signing_root(chain_id, &self.public_key());
        BlsSignature::from(self.secret.sign(root.as_slice(), POP_DST, &[]).compress())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(i: u8) -> BlsSecretKey {
        BlsSecretKey::from_key_material(&[i; 32]).unwrap()
    }

    #[test]
    fn signature_verifies_only_for_its_root_and_key() {
        let root = vote_signing_root(7, 10, &B256::repeat_byte(1));
        let sig = key(1).sign(&root);
        let pk = decode_public_key(&key(1).public_key()).unwrap();
        assert_eq!(verify(&pk, &root, &sig), Ok(()));
        let other_slot = vote_signing_root(7, 11, &B256::repeat_byte(1));
        assert_eq!(
            verify(&pk, &other_slot, &sig),
            Err(BlsError::VerificationFailed)
        );
        let other_chain = vote_signing_root(8, 10, &B256::repeat_byte(1));
        assert_eq!(
            verify(&pk, &other_chain, &sig),
            Err(BlsError::VerificationFailed)
        );
        let other_key = decode_public_key(&key(2).public_key()).unwrap();
        assert_eq!(
            verify(&other_key, &root, &sig),
            Err(BlsError::VerificationFailed)
        );
    }

    #[test]
    fn domains_separate_vote_and_proposal() {
        let hash = B256::repeat_byte(9);
        assert_ne!(
            proposal_signing_root(1, &hash),
            signing_root(Domain::Vote, 1, &hash)
        );
    }

    #[test]
    fn proof_of_possession_is_bound_to_key_and_chain() {
        let pop = key(1).proof_of_possession(5);
        assert_eq!(
            verify_proof_of_possession(5, &key(1).public_key(), &pop),
            Ok(())
        );
        assert_eq!(
            verify_proof_of_possession(6, &key(1).public_key(), &pop),
            Err(BlsError::VerificationFailed)
        );
        assert_eq!(
            verify_proof_of_possession(5, &key(2).public_key(), &pop),
            Err(BlsError::VerificationFailed)
        );
        // A proof of possession is not a valid vote signature, even over the same root.
        let root = pop_signing_root(5, &key(1).public_key());
        let pk = decode_public_key(&key(1).public_key()).unwrap();
        assert_eq!(verify(&pk, &root, &pop), Err(BlsError::VerificationFailed));
    }

    #[test]
    fn rejects_malformed_keys_and_signatures() {
        assert!(decode_public_key(&BlsPublicKey::ZERO).is_err());
        assert!(decode_public_key(&BlsPublicKey::repeat_byte(0xff)).is_err());
        assert!(decode_signature(&BlsSignature::repeat_byte(0xff)).is_err());
        assert_eq!(
            BlsSecretKey::from_key_material(&[1; 31]).unwrap_err(),
            BlsError::ShortKeyMaterial
        );
    }

    #[test]
    fn secret_key_round_trips() {
        let k = key(3);
        let restored = BlsSecretKey::from_bytes(&k.to_bytes()).unwrap();
        assert_eq!(restored.public_key(), k.public_key());
    }
}
