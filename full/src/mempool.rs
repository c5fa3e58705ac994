//! The full node's pool of pending transactions.
//!
//! [`Mempool`] holds signed transactions that arrived over RPC or gossip until
//! a block includes them. It is pure bookkeeping: the caller recovers senders,
//! reads on-chain nonces and the base fee, and passes them in; the pool does no
//! I/O, reads no clock and spawns no threads.
//!
//! The rules, checked by [`Mempool::insert`] in this order (each refusal is a
//! [`MempoolError`] variant whose message resembles geth's txpool errors):
//!
//! 1. a transaction already in the pool is refused (`already known`);
//! 2. its EIP-2718 encoding must fit [`MAX_TRANSACTION_BYTES`] and the pool's
//!    byte budget (`oversized data`);
//! 3. its nonce must be at least the sender's on-chain nonce (`nonce too low`)
//!    and less than `account_nonce + max_per_sender`, since a transaction
//!    further ahead could only run after more than a sender's share of the
//!    pool (`nonce too high`);
//! 4. its priority fee may not exceed its fee cap, and its fee cap must cover
//!    the current base fee;
//! 5. a transaction with the same sender and nonce as a pooled one replaces it
//!    only if it raises **both** the fee cap and the priority fee by at least
//!    [`MempoolConfig::price_bump_percent`] (geth's rule);
//!    otherwise a sender may hold at most [`MempoolConfig::max_per_sender`];
//! 6. the pool is bounded by count and by bytes: when full, the cheapest
//!    transactions are evicted to make room, unless the newcomer does not
//!    outbid them, in which case it is refused (`txpool is full`).
//!
//! ## What "cheapest" means
//!
//! Transactions are priced by fee cap (`max_fee_per_gas`), then by priority
//! fee. A transaction cannot be mined before its sender's lower nonces, so for
//! eviction each one is priced at the cheapest of itself and the sender's
//! pooled transactions with lower nonces (its *eviction price*), ties going to
//! the highest nonce. Eviction prices never rise with the nonce, so the
//! cheapest transaction of a sender is always its highest-nonce one: eviction
//! never opens a nonce gap in front of a sender's remaining transactions, and a
//! cheap transaction cannot shelter behind an expensive successor.
//!
//! ## Example
//!
//! ```text
//! let mut pool = Mempool::new(MempoolConfig::default());
//! let sender = tx.recover_sender()?;
//! pool.insert(tx, sender, state.nonce(&sender), head.base_fee)?;
//! let block_txs = pool.best_transactions(base_fee, 500, |a| state.nonce(a));
//! ```

use alloy_consensus::Transaction;
use alloy_eips::eip2718::Encodable2718;
use alloy_primitives::{Address, B256, U256};
use luxtensor_light::SignedTransaction;
use luxtensor_light::codec::MAX_TRANSACTION_BYTES;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};

/// Limits of a [`Mempool`]; see [`MempoolConfig::default`] for the defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MempoolConfig {
    /// Most transactions held at once. Default 10 000.
    pub max_transactions: usize,
    /// Most bytes (sum of EIP-2718 encodings) held at once. Default 32 MiB.
    pub max_bytes: usize,
    /// Most transactions one sender may hold, and how far past its on-chain
    /// nonce a transaction's nonce may reach. Default 64.
    pub max_per_sender: usize,
    /// How much (in percent) a replacement must raise both the fee cap and the
    /// priority fee of the transaction it replaces. Default 10, like geth.
    pub price_bump_percent: u64,
}

impl Default for MempoolConfig {
    /// 10 000 transactions, 32 MiB, 64 per sender, 10 % replacement bump.
    fn default() -> Self {
        Self {
            max_transactions: 10_000,
            max_bytes: 32 * 1024 * 1024,
            max_per_sender: 64,
            price_bump_percent: 10,
        }
    }
}

/// What a successful [`Mempool::insert`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertOutcome {
    /// The transaction was added alongside the pooled ones.
    Added,
    /// The transaction took the place of the sender's pooled transaction with
    /// the same nonce.
    Replaced {
        /// Hash of the transaction that was dropped.
        replaced: B256,
    },
}

/// Why [`Mempool::insert`] refused a transaction. Every variant names the rule
/// that was broken; messages follow geth's txpool errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MempoolError {
    /// A transaction with this hash is already pooled.
    #[error("already known")]
    AlreadyKnown,
    /// The encoding is larger than one transaction may be.
    #[error("oversized data: transaction is {size} bytes, the pool accepts at most {max}")]
    Oversized {
        /// Length of the EIP-2718 encoding.
        size: usize,
        /// The smaller of [`MAX_TRANSACTION_BYTES`] and [`MempoolConfig::max_bytes`].
        max: usize,
    },
    /// The nonce was already used on chain.
    #[error("nonce too low: next nonce {account_nonce}, tx nonce {tx_nonce}")]
    NonceTooLow {
        /// The sender's on-chain nonce.
        account_nonce: u64,
        /// The transaction's nonce.
        tx_nonce: u64,
    },
    /// The nonce is so far ahead of the on-chain nonce that the transaction
    /// could only run after more than a sender's share of the pool.
    #[error(
        "nonce too high: next nonce {account_nonce}, tx nonce {tx_nonce}, \
         at most {max_ahead} nonces ahead are pooled"
    )]
    NonceTooHigh {
        /// The sender's on-chain nonce.
        account_nonce: u64,
        /// The transaction's nonce.
        tx_nonce: u64,
        /// [`MempoolConfig::max_per_sender`].
        max_ahead: usize,
    },
    /// An EIP-1559 transaction offers a priority fee above its fee cap.
    #[error("max priority fee per gas higher than max fee per gas: {tip} > {fee_cap}")]
    TipAboveFeeCap {
        /// `max_priority_fee_per_gas`.
        tip: u128,
        /// `max_fee_per_gas`.
        fee_cap: u128,
    },
    /// The fee cap does not cover the current base fee.
    #[error("max fee per gas less than block base fee: {fee_cap} < {base_fee}")]
    FeeCapBelowBaseFee {
        /// `max_fee_per_gas` (the gas price of a legacy transaction).
        fee_cap: u128,
        /// The current base fee.
        base_fee: u64,
    },
    /// Same sender and nonce as a pooled transaction, without raising both
    /// fees by [`MempoolConfig::price_bump_percent`].
    #[error(
        "replacement transaction underpriced: needs max fee {required_fee} and priority fee \
         {required_tip}, offers {offered_fee} and {offered_tip}"
    )]
    ReplacementUnderpriced {
        /// Smallest fee cap that would replace the pooled transaction.
        required_fee: u128,
        /// The offered fee cap.
        offered_fee: u128,
        /// Smallest priority fee that would replace the pooled transaction.
        required_tip: u128,
        /// The offered priority fee.
        offered_tip: u128,
    },
    /// The sender already holds [`MempoolConfig::max_per_sender`] transactions.
    #[error("account limit exceeded: sender already has {max} pooled transactions")]
    SenderLimit {
        /// [`MempoolConfig::max_per_sender`].
        max: usize,
    },
    /// The pool is at its count or byte bound and the transaction does not
    /// outbid the transactions that would have to be evicted for it.
    #[error("txpool is full: transaction does not outbid the cheapest pooled transactions")]
    PoolFull,
}

/// Ready (`pending`) and nonce-gapped (`queued`) counts, as `txpool_status` reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Transactions that run in sequence from their sender's on-chain nonce.
    pub pending: usize,
    /// Transactions behind a nonce gap.
    pub queued: usize,
}

/// A transaction's position in the eviction order: cheapest first, then
/// highest nonce first; the hash makes keys unique.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct EvictionKey {
    fee_cap: u128,
    tip: u128,
    nonce: Reverse<u64>,
    hash: B256,
}

impl EvictionKey {
    fn price(&self) -> (u128, u128) {
        (self.fee_cap, self.tip)
    }
}

/// A pooled transaction with what the indexes need.
#[derive(Debug, Clone)]
struct Pooled {
    tx: SignedTransaction,
    sender: Address,
    /// Length of the EIP-2718 encoding.
    size: usize,
    /// `max_fee_per_gas` (gas price for legacy).
    fee_cap: u128,
    /// `max_priority_fee_per_gas` (gas price for legacy).
    tip: u128,
    /// Arrival order, to break ties in block building like geth's first-seen time.
    seq: u64,
    /// The entry of this transaction in `Mempool::by_price`.
    key: EvictionKey,
}

/// Bounded pool of pending transactions, nonce-ordered per sender.
///
/// Three indexes are kept in step: by hash (owns the transactions), by sender
/// (nonce → hash) and by eviction price. See the [module docs](self) for the rules.
#[derive(Debug, Clone)]
pub struct Mempool {
    config: MempoolConfig,
    by_hash: HashMap<B256, Pooled>,
    by_sender: HashMap<Address, BTreeMap<u64, B256>>,
    by_price: BTreeSet<EvictionKey>,
    size_bytes: usize,
    next_seq: u64,
}

impl Mempool {
    /// An empty pool with the given limits.
    pub fn new(config: MempoolConfig) -> Self {
        Self {
            config,
            by_hash: HashMap::new(),
            by_sender: HashMap::new(),
            by_price: BTreeSet::new(),
            size_bytes: 0,
            next_seq: 0,
        }
    }

    /// The limits this pool enforces.
    pub fn config(&self) -> &MempoolConfig {
        &self.config
    }

    /// Adds `tx`, replacing the sender's pooled transaction with the same nonce
    /// or evicting cheaper transactions if the rules allow (see the
    /// [module docs](self)). `sender` is already recovered by the caller;
    /// `account_nonce` is the sender's on-chain nonce and `base_fee` the
    /// current base fee. On error the pool is unchanged.
    pub fn insert(
        &mut self,
        tx: SignedTransaction,
        sender: Address,
        account_nonce: u64,
        base_fee: u64,
    ) -> Result<InsertOutcome, MempoolError> {
        let hash = tx.hash();
        if self.by_hash.contains_key(&hash) {
            return Err(MempoolError::AlreadyKnown);
        }
        let size = tx.envelope().encode_2718_len();
        let max_size = MAX_TRANSACTION_BYTES.min(self.config.max_bytes);
        if size > max_size {
            return Err(MempoolError::Oversized {
                size,
                max: max_size,
            });
        }
        let nonce = tx.nonce();
        if nonce < account_nonce {
            return Err(MempoolError::NonceTooLow {
                account_nonce,
                tx_nonce: nonce,
            });
        }
        let max_ahead = self.config.max_per_sender;
        if u128::from(nonce - account_nonce) >= max_ahead as u128 {
            return Err(MempoolError::NonceTooHigh {
                account_nonce,
                tx_nonce: nonce,
                max_ahead,
            });
        }
        let envelope = tx.envelope();
        let fee_cap = envelope.max_fee_per_gas();
        let tip = envelope.priority_fee_or_price();
        if tip > fee_cap {
            return Err(MempoolError::TipAboveFeeCap { tip, fee_cap });
        }
        if fee_cap < u128::from(base_fee) {
            return Err(MempoolError::FeeCapBelowBaseFee { fee_cap, base_fee });
        }

        let sender_txs = self.by_sender.get(&sender);
        let replaced = sender_txs.and_then(|txs| txs.get(&nonce)).copied();
        if let Some(old_hash) = replaced {
            let old = &self.by_hash[&old_hash];
            let bump = self.config.price_bump_percent;
            let required_fee = replacement_threshold(old.fee_cap, bump);
            let required_tip = replacement_threshold(old.tip, bump);
            if U256::from(fee_cap) < required_fee || U256::from(tip) < required_tip {
                return Err(MempoolError::ReplacementUnderpriced {
                    required_fee: required_fee.saturating_to(),
                    offered_fee: fee_cap,
                    required_tip: required_tip.saturating_to(),
                    offered_tip: tip,
                });
            }
        } else if sender_txs.map_or(0, BTreeMap::len) >= self.config.max_per_sender {
            return Err(MempoolError::SenderLimit {
                max: self.config.max_per_sender,
            });
        }

        // Apply, then look for room; undo if there is none.
        let old = replaced.map(|h| self.detach(&h));
        let seq = self.next_seq;
        self.next_seq = self.next_seq.wrapping_add(1);
        self.attach(Pooled {
            tx,
            sender,
            size,
            fee_cap,
            tip,
            seq,
            key: EvictionKey {
                fee_cap,
                tip,
                nonce: Reverse(nonce),
                hash,
            },
        });
        self.reprice(&sender);

        match self.eviction_victims(self.by_hash[&hash].key.price()) {
            Some(victims) => {
                for victim in victims {
                    let evicted = self.detach(&victim);
                    self.reprice(&evicted.sender);
                }
                Ok(match old {
                    Some(old) => InsertOutcome::Replaced {
                        replaced: old.tx.hash(),
                    },
                    None => InsertOutcome::Added,
                })
            }
            None => {
                self.detach(&hash);
                if let Some(old) = old {
                    self.attach(old);
                }
                self.reprice(&sender);
                Err(MempoolError::PoolFull)
            }
        }
    }

    /// Transactions ready for a block, at most `max` of them.
    ///
    /// Each sender's transactions come in nonce order starting at its on-chain
    /// nonce (given by `account_nonce`) and stop at the first gap or at the
    /// first transaction whose fee cap is below `base_fee`. Across senders the
    /// transaction with the highest effective tip at `base_fee` goes first,
    /// ties going to the one that arrived first.
    pub fn best_transactions(
        &self,
        base_fee: u64,
        max: usize,
        account_nonce: impl Fn(&Address) -> u64,
    ) -> Vec<SignedTransaction> {
        let mut out = Vec::new();
        if max == 0 {
            return out;
        }
        // Heads of each sender's ready sequence, best tip on top.
        let mut heads = BinaryHeap::new();
        for (sender, txs) in &self.by_sender {
            let nonce = account_nonce(sender);
            if let Some(head) = self.ready_at(sender, txs, nonce, base_fee) {
                heads.push(head);
            }
        }
        while let Some((_, _, sender, nonce)) = heads.pop() {
            let txs = &self.by_sender[&sender];
            out.push(self.by_hash[&txs[&nonce]].tx.clone());
            if out.len() == max {
                break;
            }
            if let Some(next) = nonce
                .checked_add(1)
                .and_then(|n| self.ready_at(&sender, txs, n, base_fee))
            {
                heads.push(next);
            }
        }
        out
    }

    /// The heap entry for `sender`'s transaction at exactly `nonce`, if it is
    /// pooled and its fee cap covers `base_fee`.
    fn ready_at(
        &self,
        sender: &Address,
        txs: &BTreeMap<u64, B256>,
        nonce: u64,
        base_fee: u64,
    ) -> Option<(u128, Reverse<u64>, Address, u64)> {
        let pooled = &self.by_hash[txs.get(&nonce)?];
        let tip = pooled.tx.envelope().effective_tip_per_gas(base_fee)?;
        Some((tip, Reverse(pooled.seq), *sender, nonce))
    }

    /// After a block: drops every transaction of `sender` with a nonce below
    /// its new on-chain nonce `new_nonce`.
    pub fn remove_mined(&mut self, sender: &Address, new_nonce: u64) {
        let Some(txs) = self.by_sender.get(sender) else {
            return;
        };
        let stale: Vec<B256> = txs.range(..new_nonce).map(|(_, h)| *h).collect();
        for hash in &stale {
            self.detach(hash);
        }
        self.reprice(sender);
    }

    /// Removes the transaction with this hash, returning it. The sender's
    /// higher nonces stay pooled (behind a gap until it is filled).
    pub fn remove(&mut self, hash: &B256) -> Option<SignedTransaction> {
        if !self.by_hash.contains_key(hash) {
            return None;
        }
        let removed = self.detach(hash);
        self.reprice(&removed.sender);
        Some(removed.tx)
    }

    /// The pooled transaction with this hash.
    pub fn get(&self, hash: &B256) -> Option<&SignedTransaction> {
        self.by_hash.get(hash).map(|p| &p.tx)
    }

    /// Whether a transaction with this hash is pooled.
    pub fn contains(&self, hash: &B256) -> bool {
        self.by_hash.contains_key(hash)
    }

    /// Number of pooled transactions.
    pub fn len(&self) -> usize {
        self.by_hash.len()
    }

    /// Whether the pool holds no transaction.
    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// Sum of the EIP-2718 encoded sizes of the pooled transactions.
    pub fn size_bytes(&self) -> usize {
        self.size_bytes
    }

    /// All pooled transactions of `sender`, in nonce order (gaps included).
    pub fn pending_for(&self, sender: &Address) -> Vec<SignedTransaction> {
        self.by_sender.get(sender).map_or_else(Vec::new, |txs| {
            txs.values().map(|h| self.by_hash[h].tx.clone()).collect()
        })
    }

    /// Ready and gapped counts for `txpool_status`, given on-chain nonces.
    /// Transactions below their sender's on-chain nonce (mined, awaiting
    /// [`remove_mined`](Self::remove_mined)) are in neither count.
    pub fn status(&self, account_nonce: impl Fn(&Address) -> u64) -> PoolStatus {
        let mut status = PoolStatus::default();
        for (sender, txs) in &self.by_sender {
            let start = account_nonce(sender);
            let mut expected = Some(start);
            for &nonce in txs.range(start..).map(|(n, _)| n) {
                if expected == Some(nonce) {
                    status.pending += 1;
                    expected = nonce.checked_add(1);
                } else {
                    expected = None;
                    status.queued += 1;
                }
            }
        }
        status
    }

    /// Hashes to evict, cheapest first, so that the pool fits its bounds;
    /// `None` if that would take a transaction not strictly cheaper than
    /// `price` (the newcomer's eviction price).
    fn eviction_victims(&self, price: (u128, u128)) -> Option<Vec<B256>> {
        let mut count = self.by_hash.len();
        let mut bytes = self.size_bytes;
        let mut victims = Vec::new();
        let mut cheapest = self.by_price.iter();
        while count > self.config.max_transactions || bytes > self.config.max_bytes {
            // The newcomer is in the index at `price`, so this stops in time.
            let key = cheapest.next().filter(|k| k.price() < price)?;
            victims.push(key.hash);
            count -= 1;
            bytes -= self.by_hash[&key.hash].size;
        }
        Some(victims)
    }

    /// Adds `pooled` to every index, priced at its own fees; call
    /// [`reprice`](Self::reprice) for its sender afterwards.
    fn attach(&mut self, pooled: Pooled) {
        let hash = pooled.key.hash;
        let nonce = pooled.key.nonce.0;
        self.by_sender
            .entry(pooled.sender)
            .or_default()
            .insert(nonce, hash);
        self.by_price.insert(pooled.key);
        self.size_bytes += pooled.size;
        self.by_hash.insert(hash, pooled);
    }

    /// Takes a pooled transaction out of every index; call
    /// [`reprice`](Self::reprice) for its sender afterwards.
    fn detach(&mut self, hash: &B256) -> Pooled {
        let pooled = self
            .by_hash
            .remove(hash)
            .expect("detach is only called for pooled hashes");
        if let Some(txs) = self.by_sender.get_mut(&pooled.sender) {
            txs.remove(&pooled.key.nonce.0);
            if txs.is_empty() {
                self.by_sender.remove(&pooled.sender);
            }
        }
        self.by_price.remove(&pooled.key);
        self.size_bytes -= pooled.size;
        pooled
    }

    /// Recomputes the eviction prices of `sender`'s transactions: each is the
    /// cheaper of its own price and that of the sender's lower nonces.
    fn reprice(&mut self, sender: &Address) {
        let Some(txs) = self.by_sender.get(sender) else {
            return;
        };
        let mut floor: Option<(u128, u128)> = None;
        for (&nonce, hash) in txs {
            let pooled = self
                .by_hash
                .get_mut(hash)
                .expect("the sender index only holds pooled hashes");
            let own = (pooled.fee_cap, pooled.tip);
            let price = floor.map_or(own, |f| f.min(own));
            floor = Some(price);
            let key = EvictionKey {
                fee_cap: price.0,
                tip: price.1,
                nonce: Reverse(nonce),
                hash: *hash,
            };
            if pooled.key != key {
                self.by_price.remove(&pooled.key);
                self.by_price.insert(key);
                pooled.key = key;
            }
        }
    }
}

/// Smallest fee that replaces one of `old`: at least `bump` percent more
/// (rounded down, as geth does) and strictly more.
fn replacement_threshold(old: u128, bump: u64) -> U256 {
    let old = U256::from(old);
    let bumped = old * (U256::from(100u64) + U256::from(bump)) / U256::from(100u64);
    bumped.max(old + U256::from(1u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloy_consensus::{SignableTransaction, TxEip1559, TxEnvelope, TxLegacy};
    use alloy_primitives::{Bytes, TxKind};
    use alloy_signer::SignerSync;
    use alloy_signer_local::PrivateKeySigner;
    use proptest::prelude::*;
    use std::collections::HashSet;

    const CHAIN_ID: u64 = 1337;
    const GWEI: u128 = 1_000_000_000;

    fn signer(key: u8) -> PrivateKeySigner {
        PrivateKeySigner::from_bytes(&B256::repeat_byte(key)).unwrap()
    }

    fn addr(key: u8) -> Address {
        signer(key).address()
    }

    /// An EIP-1559 transfer from key `key` with `data` bytes of call data.
    fn tx_data(key: u8, nonce: u64, fee_cap: u128, tip: u128, data: usize) -> SignedTransaction {
        let tx = TxEip1559 {
            chain_id: CHAIN_ID,
            nonce,
            gas_limit: 21_000,
            max_fee_per_gas: fee_cap,
            max_priority_fee_per_gas: tip,
            to: TxKind::Call(Address::repeat_byte(0xaa)),
            value: U256::from(1),
            input: Bytes::from(vec![0x11; data]),
            ..Default::default()
        };
        let sig = signer(key).sign_hash_sync(&tx.signature_hash()).unwrap();
        SignedTransaction::new(TxEnvelope::Eip1559(tx.into_signed(sig))).unwrap()
    }

    fn tx(key: u8, nonce: u64, fee_cap: u128, tip: u128) -> SignedTransaction {
        tx_data(key, nonce, fee_cap, tip, 0)
    }

    fn legacy(key: u8, nonce: u64, gas_price: u128) -> SignedTransaction {
        let tx = TxLegacy {
            chain_id: Some(CHAIN_ID),
            nonce,
            gas_price,
            gas_limit: 21_000,
            to: TxKind::Call(Address::repeat_byte(0xbb)),
            value: U256::from(1),
            input: Bytes::new(),
        };
        let sig = signer(key).sign_hash_sync(&tx.signature_hash()).unwrap();
        SignedTransaction::new(TxEnvelope::Legacy(tx.into_signed(sig))).unwrap()
    }

    fn pool(max_transactions: usize, max_bytes: usize, max_per_sender: usize) -> Mempool {
        Mempool::new(MempoolConfig {
            max_transactions,
            max_bytes,
            max_per_sender,
            price_bump_percent: 10,
        })
    }

    /// Inserts with on-chain nonce 0 and base fee 0.
    fn add(
        pool: &mut Mempool,
        key: u8,
        t: &SignedTransaction,
    ) -> Result<InsertOutcome, MempoolError> {
        pool.insert(t.clone(), addr(key), 0, 0)
    }

    fn hashes(txs: &[SignedTransaction]) -> Vec<B256> {
        txs.iter().map(SignedTransaction::hash).collect()
    }

    /// The three indexes, the byte count and the eviction prices agree, and the bounds hold.
    fn check_invariants(pool: &Mempool) {
        let config = &pool.config;
        assert!(pool.len() <= config.max_transactions);
        assert!(pool.size_bytes() <= config.max_bytes);
        let per_sender: usize = pool.by_sender.values().map(BTreeMap::len).sum();
        assert_eq!(pool.len(), per_sender);
        assert_eq!(pool.len(), pool.by_price.len());
        let bytes: usize = pool.by_hash.values().map(|p| p.size).sum();
        assert_eq!(pool.size_bytes(), bytes);
        for (sender, txs) in &pool.by_sender {
            assert!(!txs.is_empty());
            assert!(txs.len() <= config.max_per_sender);
            let mut floor: Option<(u128, u128)> = None;
            for (&nonce, hash) in txs {
                let p = &pool.by_hash[hash];
                assert_eq!(p.sender, *sender);
                assert_eq!(p.tx.nonce(), nonce);
                assert_eq!(p.tx.hash(), *hash);
                assert_eq!(p.size, p.tx.encoded_2718().len());
                let price = floor.map_or((p.fee_cap, p.tip), |f| f.min((p.fee_cap, p.tip)));
                floor = Some(price);
                assert_eq!(p.key.price(), price);
                assert!(pool.by_price.contains(&p.key));
            }
        }
    }

    #[test]
    fn insert_then_get_contains_len_and_size() {
        let mut pool = Mempool::new(MempoolConfig::default());
        assert!(pool.is_empty());
        let t = tx(1, 0, 2 * GWEI, GWEI);
        assert_eq!(add(&mut pool, 1, &t), Ok(InsertOutcome::Added));
        assert!(pool.contains(&t.hash()));
        assert_eq!(pool.get(&t.hash()), Some(&t));
        assert_eq!(pool.len(), 1);
        assert!(!pool.is_empty());
        assert_eq!(pool.size_bytes(), t.encoded_2718().len());
        assert_eq!(pool.pending_for(&addr(1)), vec![t.clone()]);
        assert!(pool.pending_for(&addr(2)).is_empty());
        assert!(!pool.contains(&B256::ZERO));
        check_invariants(&pool);
    }

    #[test]
    fn the_same_transaction_twice_is_already_known() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let t = tx(1, 0, 2 * GWEI, GWEI);
        add(&mut pool, 1, &t).unwrap();
        let err = add(&mut pool, 1, &t).unwrap_err();
        assert_eq!(err, MempoolError::AlreadyKnown);
        assert_eq!(err.to_string(), "already known");
        assert_eq!(pool.len(), 1);
    }

    #[test]
    fn a_nonce_below_the_account_nonce_is_too_low() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let err = pool
            .insert(tx(1, 4, GWEI, GWEI), addr(1), 5, 0)
            .unwrap_err();
        assert_eq!(
            err,
            MempoolError::NonceTooLow {
                account_nonce: 5,
                tx_nonce: 4
            }
        );
        assert!(err.to_string().starts_with("nonce too low"));
        assert!(pool.is_empty());
        assert!(pool.insert(tx(1, 5, GWEI, GWEI), addr(1), 5, 0).is_ok());
    }

    #[test]
    fn a_nonce_a_full_sender_share_ahead_is_too_high() {
        let mut pool = pool(100, 1 << 20, 4);
        let err = pool
            .insert(tx(1, 14, GWEI, GWEI), addr(1), 10, 0)
            .unwrap_err();
        assert_eq!(
            err,
            MempoolError::NonceTooHigh {
                account_nonce: 10,
                tx_nonce: 14,
                max_ahead: 4
            }
        );
        assert!(err.to_string().starts_with("nonce too high"));
        assert!(pool.insert(tx(1, 13, GWEI, GWEI), addr(1), 10, 0).is_ok());
    }

    #[test]
    fn fee_rules_refuse_tip_above_cap_and_cap_below_base_fee() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let err = pool
            .insert(tx(1, 0, GWEI, 2 * GWEI), addr(1), 0, 0)
            .unwrap_err();
        assert_eq!(
            err,
            MempoolError::TipAboveFeeCap {
                tip: 2 * GWEI,
                fee_cap: GWEI
            }
        );
        assert!(
            err.to_string()
                .starts_with("max priority fee per gas higher than max fee per gas")
        );
        let base_fee = 3_000_000_000;
        let err = pool
            .insert(tx(1, 0, 2 * GWEI, GWEI), addr(1), 0, base_fee)
            .unwrap_err();
        assert_eq!(
            err,
            MempoolError::FeeCapBelowBaseFee {
                fee_cap: 2 * GWEI,
                base_fee
            }
        );
        assert!(
            err.to_string()
                .starts_with("max fee per gas less than block base fee")
        );
        let err = pool
            .insert(legacy(1, 0, GWEI), addr(1), 0, base_fee)
            .unwrap_err();
        assert!(matches!(err, MempoolError::FeeCapBelowBaseFee { .. }));
        assert!(pool.is_empty());
    }

    #[test]
    fn replacement_needs_both_fees_bumped_by_ten_percent() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let old = tx(1, 0, 100 * GWEI, 10 * GWEI);
        add(&mut pool, 1, &old).unwrap();

        // 9 % more on both: refused.
        let err = add(&mut pool, 1, &tx(1, 0, 109 * GWEI, 109 * GWEI / 10)).unwrap_err();
        assert_eq!(
            err,
            MempoolError::ReplacementUnderpriced {
                required_fee: 110 * GWEI,
                offered_fee: 109 * GWEI,
                required_tip: 11 * GWEI,
                offered_tip: 109 * GWEI / 10,
            }
        );
        assert!(
            err.to_string()
                .starts_with("replacement transaction underpriced")
        );
        // Fee cap doubled but the priority fee unchanged: refused.
        let err = add(&mut pool, 1, &tx(1, 0, 200 * GWEI, 10 * GWEI)).unwrap_err();
        assert!(matches!(err, MempoolError::ReplacementUnderpriced { .. }));
        assert_eq!(pool.len(), 1);
        assert!(pool.contains(&old.hash()));

        // Exactly 10 % more on both: accepted, the old one is gone.
        let new = tx(1, 0, 110 * GWEI, 11 * GWEI);
        assert_eq!(
            add(&mut pool, 1, &new),
            Ok(InsertOutcome::Replaced {
                replaced: old.hash()
            })
        );
        assert_eq!(pool.len(), 1);
        assert!(!pool.contains(&old.hash()));
        assert_eq!(pool.pending_for(&addr(1)), vec![new]);
        check_invariants(&pool);
    }

    #[test]
    fn legacy_replacement_bumps_the_gas_price_and_tiny_fees_must_still_rise() {
        let mut pool = Mempool::new(MempoolConfig::default());
        add(&mut pool, 1, &legacy(1, 0, 100)).unwrap();
        assert!(add(&mut pool, 1, &legacy(1, 0, 109)).is_err());
        assert!(matches!(
            add(&mut pool, 1, &legacy(1, 0, 110)),
            Ok(InsertOutcome::Replaced { .. })
        ));
        // 10 % of 5 rounds to nothing, yet a replacement must pay strictly more.
        add(&mut pool, 2, &tx(2, 0, 5, 5)).unwrap();
        assert_eq!(
            add(&mut pool, 2, &tx(2, 0, 5, 5)),
            Err(MempoolError::AlreadyKnown)
        );
        let err = add(&mut pool, 2, &tx_data(2, 0, 5, 5, 1)).unwrap_err();
        assert!(matches!(
            err,
            MempoolError::ReplacementUnderpriced {
                required_fee: 6,
                required_tip: 6,
                ..
            }
        ));
        assert!(add(&mut pool, 2, &tx(2, 0, 6, 6)).is_ok());
        check_invariants(&pool);
    }

    #[test]
    fn a_full_pool_evicts_the_cheapest_and_refuses_what_is_not_better() {
        let mut pool = pool(3, 1 << 20, 16);
        let a = tx(1, 0, 10 * GWEI, GWEI);
        let b = tx(2, 0, 20 * GWEI, GWEI);
        let c = tx(3, 0, 30 * GWEI, GWEI);
        for (k, t) in [(1, &a), (2, &b), (3, &c)] {
            add(&mut pool, k, t).unwrap();
        }
        // Cheaper than everything (or as cheap as the cheapest): refused, pool unchanged.
        let err = add(&mut pool, 4, &tx(4, 0, 5 * GWEI, GWEI)).unwrap_err();
        assert_eq!(err, MempoolError::PoolFull);
        assert_eq!(err.to_string().split(':').next(), Some("txpool is full"));
        assert_eq!(
            add(&mut pool, 4, &tx(4, 0, 10 * GWEI, GWEI)),
            Err(MempoolError::PoolFull)
        );
        assert_eq!(pool.len(), 3);
        // Same fee cap, higher priority fee: better, evicts `a`.
        let d = tx(4, 0, 10 * GWEI, 2 * GWEI);
        assert_eq!(add(&mut pool, 4, &d), Ok(InsertOutcome::Added));
        assert_eq!(pool.len(), 3);
        assert!(!pool.contains(&a.hash()));
        assert!(pool.contains(&d.hash()));
        // A well-paying newcomer evicts the now cheapest, `d`.
        let e = tx(5, 0, 40 * GWEI, GWEI);
        add(&mut pool, 5, &e).unwrap();
        assert!(!pool.contains(&d.hash()));
        assert_eq!(pool.len(), 3);
        check_invariants(&pool);
    }

    #[test]
    fn eviction_takes_a_senders_highest_nonce_and_prices_it_by_its_ancestors() {
        let mut pool = pool(3, 1 << 20, 16);
        // Sender 1: a cheap nonce 0 and an expensive nonce 1 that cannot run before it.
        let a0 = tx(1, 0, GWEI, GWEI);
        let a1 = tx(1, 1, 100 * GWEI, GWEI);
        let b0 = tx(2, 0, 50 * GWEI, GWEI);
        for (k, t) in [(1, &a0), (1, &a1), (2, &b0)] {
            add(&mut pool, k, t).unwrap();
        }
        // The victim is a1 (priced like a0), not a0: no gap in front of a1.
        let c0 = tx(3, 0, 60 * GWEI, GWEI);
        add(&mut pool, 3, &c0).unwrap();
        assert!(!pool.contains(&a1.hash()));
        assert!(pool.contains(&a0.hash()));
        check_invariants(&pool);
        // Then a0 itself.
        add(&mut pool, 4, &tx(4, 0, 70 * GWEI, GWEI)).unwrap();
        assert!(!pool.contains(&a0.hash()));
        assert!(pool.pending_for(&addr(1)).is_empty());
        check_invariants(&pool);
    }

    #[test]
    fn a_bigger_replacement_evicts_only_cheaper_transactions() {
        let a = tx(1, 0, 10, 1);
        let b = tx(2, 0, 20, 1);
        let budget = a.encoded_2718().len() + b.encoded_2718().len() + 5;
        let mut pool = pool(10, budget, 16);
        add(&mut pool, 1, &a).unwrap();
        add(&mut pool, 2, &b).unwrap();
        // A bigger replacement for `a` would need `b`'s room, but `b` pays more: refused,
        // and `a` is still there.
        let before = nonce_sets(&pool);
        let err = add(&mut pool, 1, &tx_data(1, 0, 12, 2, 40)).unwrap_err();
        assert_eq!(err, MempoolError::PoolFull);
        assert_eq!(hashes(&pool.pending_for(&addr(1))), vec![a.hash()]);
        assert_eq!(nonce_sets(&pool), before);
        check_invariants(&pool);
        // A bigger replacement for `b` needs `a`'s room, and `a` pays less: evicted.
        let b2 = tx_data(2, 0, 22, 2, 10);
        assert_eq!(
            add(&mut pool, 2, &b2),
            Ok(InsertOutcome::Replaced { replaced: b.hash() })
        );
        assert_eq!(hashes(&pool.pending_for(&addr(2))), vec![b2.hash()]);
        assert!(!pool.contains(&a.hash()));
        assert_eq!(pool.len(), 1);
        check_invariants(&pool);
    }

    #[test]
    fn the_byte_bound_evicts_as_many_cheap_transactions_as_needed() {
        let cheap: Vec<_> = (1..=3).map(|k| tx(k, 0, 10 + u128::from(k), 1)).collect();
        let sizes: Vec<usize> = cheap.iter().map(|t| t.encoded_2718().len()).collect();
        let budget: usize = sizes.iter().sum();
        let mut pool = pool(100, budget, 16);
        for (k, t) in (1..=3).zip(&cheap) {
            add(&mut pool, k, t).unwrap();
        }
        assert_eq!(pool.size_bytes(), budget);
        // Bigger than one cheap transaction, smaller than two: evicts the two cheapest.
        let big = tx_data(9, 0, 100, 1, sizes[0] - 20);
        let big_size = big.encoded_2718().len();
        assert!(big_size > sizes[0] && big_size <= sizes[0] + sizes[1]);
        add(&mut pool, 9, &big).unwrap();
        assert!(!pool.contains(&cheap[0].hash()));
        assert!(!pool.contains(&cheap[1].hash()));
        assert!(pool.contains(&cheap[2].hash()));
        assert_eq!(pool.size_bytes(), sizes[2] + big_size);
        check_invariants(&pool);
        // Larger than the whole budget: oversized, whatever it pays.
        let huge = tx_data(9, 1, 1000, 1, budget);
        let err = add(&mut pool, 9, &huge).unwrap_err();
        assert_eq!(
            err,
            MempoolError::Oversized {
                size: huge.encoded_2718().len(),
                max: budget
            }
        );
        assert!(err.to_string().starts_with("oversized data"));
    }

    #[test]
    fn a_transaction_over_the_protocol_size_cap_is_oversized() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let t = tx_data(1, 0, 10, 1, MAX_TRANSACTION_BYTES);
        assert!(matches!(
            add(&mut pool, 1, &t),
            Err(MempoolError::Oversized {
                max: MAX_TRANSACTION_BYTES,
                ..
            })
        ));
    }

    #[test]
    fn a_sender_holds_at_most_max_per_sender_transactions() {
        let mut pool = pool(100, 1 << 20, 3);
        for nonce in 0..3 {
            add(&mut pool, 1, &tx(1, nonce, GWEI, GWEI)).unwrap();
        }
        let err = pool
            .insert(tx(1, 3, GWEI, GWEI), addr(1), 1, 0)
            .unwrap_err();
        assert_eq!(err, MempoolError::SenderLimit { max: 3 });
        assert!(err.to_string().starts_with("account limit exceeded"));
        // Replacing one of its own is still allowed, and other senders are unaffected.
        assert!(add(&mut pool, 1, &tx(1, 2, 2 * GWEI, 2 * GWEI)).is_ok());
        assert!(add(&mut pool, 2, &tx(2, 0, GWEI, GWEI)).is_ok());
        check_invariants(&pool);
    }

    #[test]
    fn best_transactions_follow_nonces_per_sender_and_tips_across_senders() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let base_fee = 10;
        // Sender 1: tips 5 then 1 then 9 (effective tip capped by fee cap - base fee).
        let a0 = tx(1, 0, 100, 5);
        let a1 = tx(1, 1, 100, 1);
        let a2 = tx(1, 2, 100, 9);
        // Sender 2: tip 3, then a gap (nonce 2 without nonce 1).
        let b0 = tx(2, 0, 100, 3);
        let b2 = tx(2, 2, 100, 50);
        // Sender 3: legacy, gas price 17 → tip 7 at base fee 10.
        let c0 = legacy(3, 0, 17);
        // Sender 4: on-chain nonce 1, stale nonce 0 still pooled; tip 4 (fee cap 14).
        let d0 = tx(4, 0, 100, 100);
        let d1 = tx(4, 1, 14, 14);
        // Sender 5: fee cap would be fine now but falls below a higher base fee.
        let e0 = tx(5, 0, 12, 2);
        for (k, t) in [
            (1, &a0),
            (1, &a1),
            (1, &a2),
            (2, &b0),
            (2, &b2),
            (3, &c0),
            (4, &d0),
            (4, &d1),
            (5, &e0),
        ] {
            add(&mut pool, k, t).unwrap();
        }
        let nonces = |a: &Address| if *a == addr(4) { 1 } else { 0 };
        let best = pool.best_transactions(base_fee, 100, nonces);
        // c0 (7) a0 (5) d1 (4) b0 (3) e0 (2) a1 (1) a2 (9, unlocked after a1); b2 behind a gap.
        assert_eq!(
            hashes(&best),
            hashes(&[
                c0.clone(),
                a0.clone(),
                d1.clone(),
                b0.clone(),
                e0.clone(),
                a1.clone(),
                a2.clone()
            ])
        );
        // At most `max`.
        assert_eq!(
            hashes(&pool.best_transactions(base_fee, 3, nonces)),
            hashes(&[c0.clone(), a0.clone(), d1.clone()])
        );
        assert!(pool.best_transactions(base_fee, 0, nonces).is_empty());
        // At base fee 13, e0 (cap 12) is skipped; d1 tips 1; c0 tips 4.
        let best = pool.best_transactions(13, 100, nonces);
        assert!(!best.contains(&e0));
        assert_eq!(hashes(&best[..2]), hashes(&[a0, c0]));
        assert_eq!(
            pool.status(nonces),
            PoolStatus {
                pending: 7,
                queued: 1
            }
        );
    }

    #[test]
    fn equal_tips_go_in_arrival_order() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let txs: Vec<_> = (1..=4).map(|k| tx(k, 0, 10, 2)).collect();
        for (k, t) in (1..=4).zip(&txs) {
            add(&mut pool, k, t).unwrap();
        }
        assert_eq!(hashes(&pool.best_transactions(0, 10, |_| 0)), hashes(&txs));
    }

    #[test]
    fn remove_mined_drops_lower_nonces_and_remove_takes_one() {
        let mut pool = Mempool::new(MempoolConfig::default());
        let txs: Vec<_> = (0..5).map(|n| tx(1, n, 10, 1)).collect();
        for t in &txs {
            add(&mut pool, 1, t).unwrap();
        }
        let other = tx(2, 0, 10, 1);
        add(&mut pool, 2, &other).unwrap();
        pool.remove_mined(&addr(1), 3);
        assert_eq!(hashes(&pool.pending_for(&addr(1))), hashes(&txs[3..]));
        assert!(pool.contains(&other.hash()));
        pool.remove_mined(&addr(9), 100);
        check_invariants(&pool);

        assert_eq!(pool.remove(&txs[3].hash()), Some(txs[3].clone()));
        assert_eq!(pool.remove(&txs[3].hash()), None);
        // Nonce 4 stays, behind the gap.
        assert_eq!(hashes(&pool.pending_for(&addr(1))), hashes(&txs[4..]));
        assert!(pool.best_transactions(0, 10, |_| 3).is_empty());
        assert_eq!(
            pool.status(|_| 3),
            PoolStatus {
                pending: 0,
                queued: 1
            }
        );
        pool.remove_mined(&addr(1), 5);
        pool.remove_mined(&addr(2), 1);
        assert!(pool.is_empty());
        assert_eq!(pool.size_bytes(), 0);
        check_invariants(&pool);
    }

    #[test]
    fn a_pool_with_no_room_at_all_refuses_everything() {
        let mut pool = pool(0, 1 << 20, 16);
        assert_eq!(
            add(&mut pool, 1, &tx(1, 0, 10, 1)),
            Err(MempoolError::PoolFull)
        );
        check_invariants(&pool);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert {
            key: u8,
            nonce: u64,
            fee_cap: u128,
            tip: u128,
            data: usize,
            account_nonce: u64,
        },
        Remove {
            index: usize,
        },
        RemoveMined {
            key: u8,
            nonce: u64,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (1u8..=4, 0u64..8, 1u128..20, 0u128..20, 0usize..120, 0u64..3).prop_map(
                |(key, nonce, fee_cap, tip, data, account_nonce)| Op::Insert {
                    key, nonce, fee_cap, tip: tip.min(fee_cap), data, account_nonce
                }
            ),
            1 => any::<usize>().prop_map(|index| Op::Remove { index }),
            1 => (1u8..=4, 0u64..8).prop_map(|(key, nonce)| Op::RemoveMined { key, nonce }),
        ]
    }

    /// Nonces held per sender.
    fn nonce_sets(pool: &Mempool) -> HashMap<Address, HashSet<u64>> {
        pool.by_sender
            .iter()
            .map(|(a, txs)| (*a, txs.keys().copied().collect()))
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        #[test]
        fn random_operations_keep_bounds_and_indexes_consistent(
            ops in proptest::collection::vec(op(), 1..40)
        ) {
            let small = tx(1, 0, 10, 1).encoded_2718().len();
            let mut pool = pool(6, 8 * small, 4);
            for op in ops {
                match op {
                    Op::Insert { key, nonce, fee_cap, tip, data, account_nonce } => {
                        let t = tx_data(key, nonce, fee_cap, tip, data);
                        let before = pool.clone();
                        let result = pool.insert(t.clone(), addr(key), account_nonce, 0);
                        match result {
                            Err(_) => {
                                // Refusals leave the pool as it was.
                                prop_assert_eq!(nonce_sets(&pool), nonce_sets(&before));
                                let now: HashSet<B256> = pool.by_hash.keys().copied().collect();
                                let was: HashSet<B256> = before.by_hash.keys().copied().collect();
                                prop_assert_eq!(now, was);
                                prop_assert_eq!(pool.size_bytes(), before.size_bytes());
                            }
                            Ok(outcome) => {
                                prop_assert!(pool.contains(&t.hash()));
                                if let InsertOutcome::Replaced { replaced } = outcome {
                                    prop_assert!(!pool.contains(&replaced));
                                }
                                // Eviction only ever takes a sender's highest nonces.
                                let after = nonce_sets(&pool);
                                for (sender, old) in nonce_sets(&before) {
                                    let now = after.get(&sender).cloned().unwrap_or_default();
                                    let lost = old.difference(&now);
                                    let max_left = now.iter().max();
                                    for n in lost {
                                        prop_assert!(max_left.is_none_or(|m| n > m));
                                    }
                                }
                            }
                        }
                    }
                    Op::Remove { index } => {
                        let all: Vec<B256> = {
                            let mut v: Vec<_> = pool.by_hash.keys().copied().collect();
                            v.sort();
                            v
                        };
                        if !all.is_empty() {
                            let h = all[index % all.len()];
                            prop_assert!(pool.remove(&h).is_some());
                            prop_assert!(!pool.contains(&h));
                        }
                    }
                    Op::RemoveMined { key, nonce } => {
                        pool.remove_mined(&addr(key), nonce);
                        prop_assert!(pool.pending_for(&addr(key)).iter().all(|t| t.nonce() >= nonce));
                    }
                }
                check_invariants(&pool);
            }
        }
    }
}
