//! A stand-in full node for the light client: it serves a generated chain
//! over WebSocket JSON-RPC with the node's method names and JSON shapes
//! (`eth_subscribe("newHeads")`, `lux_getEpochUpdates`,
//! `lux_getCertifiedHeader`, `lux_getValidatorSet`; see
//! `full/src/rpc/lux.rs`), and streams heads at slot pace.
//!
//! [`ServedChain`] generates long chains quickly: a QC's aggregate signature
//! is one signature by the sum of the signers' secret keys (all votes sign
//! the same message, so it equals the aggregate of their votes), so a
//! header costs two signatures whatever the set size. Sets come from
//! [`light_chain::set_of`]; [`churn`] gives a realistic rotation schedule.
//!
//! A [`LightServer`] can lie ([`Behaviour::BadQc`]) or serve a fork
//! ([`ServedChain::fork`]) for the adversarial tests.

use crate::light_chain::{self, Member};
use alloy_primitives::{B256, Bytes, U256, keccak256};
use futures::{SinkExt, StreamExt};
use luxtensor_light::client::EpochUpdate;
use luxtensor_light::client::net::wire::{new_head_json, qc_json};
use luxtensor_light::{
    BlsSecretKey, CertifiedHeader, ChainSpec, Header, QuorumCert, SignedHeader, SignerBitfield,
    ValidatorSet, bls, chain_spec,
};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio_tungstenite::tungstenite::Message;

/// The order of the BLS12-381 scalar field.
const BLS_R: U256 = U256::from_be_bytes([
    0x73, 0xed, 0xa7, 0x53, 0x29, 0x9d, 0x7d, 0x48, 0x33, 0x39, 0xd8, 0x08, 0x09, 0xa1, 0xd8, 0x05,
    0x53, 0xbd, 0xa4, 0x02, 0xff, 0xfe, 0x5b, 0xfe, 0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01,
]);

/// A rotation schedule: `n` validators with stakes of 32 to 38 tokens;
/// from epoch 2 on, the `churn` oldest members leave each epoch and `churn`
/// new ones join.
pub fn churn(n: u32, churn: u32, epochs: u64) -> Vec<Vec<Member>> {
    (0..=epochs + 1)
        .map(|e| {
            let first = e.saturating_sub(1) as u32 * churn;
            (first..first + n)
                .map(|i| (i, 32 + u64::from(i % 7)))
                .collect()
        })
        .collect()
}

/// A generated chain, ready to serve: one certified header per slot.
#[derive(Clone)]
pub struct ServedChain {
    /// The spec (its genesis set is the schedule's epoch 0).
    pub spec: ChainSpec,
    /// Members of each epoch (devnet key index, stake in tokens).
    pub members: Vec<Vec<Member>>,
    /// Set(e) for every epoch of the chain and the one after.
    pub sets: Vec<ValidatorSet>,
    /// Headers of slots 1.. (index `slot - 1`), each with its QC.
    pub headers: Vec<CertifiedHeader>,
    /// `updates[e]`: the hand-over of epoch e, built from its last block as the node does.
    pub updates: Vec<EpochUpdate>,
    by_hash: HashMap<B256, usize>,
    keys: HashMap<u32, BlsSecretKey>,
}

impl ServedChain {
    /// A chain of `epochs` epochs following `schedule` (epoch 1 must equal
    /// epoch 0; later epochs repeat the last entry), with `slot_ms` slots,
    /// whose genesis is `age_slots` slots before now (so that a server
    /// started now streams from slot `age_slots`).
    pub fn build(schedule: &[Vec<Member>], epochs: u64, slot_ms: u64, age_slots: u64) -> Self {
        let mut spec = ChainSpec::devnet(0);
        spec.slot_duration_ms = slot_ms;
        spec.rotation.max_validators = 1_000;
        spec.withdrawal_delay_epochs = spec.withdrawal_delay_epochs.max(4);
        let now_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis() as u64;
        spec.genesis_timestamp = (now_ms.saturating_sub(age_slots * slot_ms)) / 1000;
        let members: Vec<Vec<Member>> = (0..=epochs + 1)
            .map(|e| match e {
                0 | 1 => schedule[0].clone(),
                e => schedule
                    .get(e as usize)
                    .unwrap_or_else(|| schedule.last().expect("a schedule"))
                    .clone(),
            })
            .collect();
        let mut keys = HashMap::new();
        for m in members.iter().flatten() {
            keys.entry(m.0)
                .or_insert_with(|| chain_spec::devnet_validator_key(m.0));
        }
        spec.validators = members[0]
            .iter()
            .map(|&(i, tokens)| chain_spec::GenesisValidator {
                owner: chain_spec::devnet_validator_owner(i),
                public_key: keys[&i].public_key(),
                proof_of_possession: keys[&i].proof_of_possession(spec.chain_id),
                stake: chain_spec::TOKEN * U256::from(tokens),
            })
            .collect();
        let sets = members.iter().map(|m| light_chain::set_of(m)).collect();
        let mut chain = Self {
            spec,
            members,
            sets,
            headers: Vec::new(),
            updates: Vec::new(),
            by_hash: HashMap::new(),
            keys,
        };
        chain.extend_from(0, |_| {});
        chain
    }

    /// The same chain up to `slot - 1`, then another certified header at
    /// `slot` (another state root) and its own descendants: a fork that a
    /// quorum signed twice (equivocation).
    pub fn fork(&self, slot: u64) -> Self {
        let mut fork = Self {
            spec: self.spec.clone(),
            members: self.members.clone(),
            sets: self.sets.clone(),
            headers: self.headers[..slot as usize - 1].to_vec(),
            updates: Vec::new(),
            by_hash: HashMap::new(),
            keys: self.keys.clone(),
        };
        fork.extend_from(slot as usize - 1, |h| {
            if h.slot == slot {
                h.state_root = keccak256(b"fork");
            }
        });
        fork
    }

    /// Generates headers from index `start` to the end of the chain.
    fn extend_from(&mut self, start: usize, edit: impl Fn(&mut Header)) {
        let length = self.spec.rotation.epoch_length;
        let epochs = self.members.len() as u64 - 2;
        let (mut parent, mut parent_qc) = match start {
            0 => (self.spec.genesis_header(), QuorumCert::genesis()),
            i => (
                self.headers[i - 1].header.header.clone(),
                self.headers[i - 1].qc.clone(),
            ),
        };
        for slot in start as u64 + 1..epochs * length {
            let epoch = slot / length;
            let set = &self.sets[epoch as usize];
            let mut header = Header {
                parent_hash: parent.hash(),
                number: parent.number + 1,
                slot,
                epoch,
                timestamp: self.spec.slot_timestamp(slot),
                proposer_index: set.proposer_index(slot) as u32,
                validator_set_hash: set.hash(),
                next_validator_set_hash: self.sets[epoch as usize + 1].hash(),
                parent_qc,
                ..parent.clone()
            };
            edit(&mut header);
            let proposer = self.members[epoch as usize][header.proposer_index as usize].0;
            let sealed = header.sign(&self.keys[&proposer], self.spec.chain_id);
            let qc = self.quorum_qc(epoch, slot, sealed.hash());
            parent = sealed.header.clone();
            parent_qc = qc.clone();
            self.headers.push(CertifiedHeader { header: sealed, qc });
        }
        self.by_hash = self
            .headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.header.hash(), i))
            .collect();
        self.updates = (0..epochs)
            .map(|e| {
                let last = ((e + 1) * length - 1) as usize - 1;
                EpochUpdate::new(
                    self.headers[last].clone(),
                    &self.sets[e as usize],
                    &self.sets[e as usize + 1],
                )
            })
            .collect();
    }

    /// A QC by the smallest quorum prefix of `epoch`'s set, signed once by
    /// the sum of the signers' secret keys.
    pub fn quorum_qc(&self, epoch: u64, slot: u64, block_hash: B256) -> QuorumCert {
        let set = &self.sets[epoch as usize];
        let mut bits = SignerBitfield::with_set_len(set.len());
        let mut stake = U256::ZERO;
        let mut secret = U256::ZERO;
        for (i, v) in set.validators().iter().enumerate() {
            if set.is_quorum(stake) {
                break;
            }
            stake += v.stake;
            bits.set(i);
            let key = &self.keys[&self.members[epoch as usize][i].0];
            secret = secret.add_mod(U256::from_be_bytes(key.to_bytes()), BLS_R);
        }
        let key = BlsSecretKey::from_bytes(&secret.to_be_bytes::<32>())
            .expect("a sum of secret keys is a secret key");
        let signature = key.sign(&bls::vote_signing_root(
            self.spec.chain_id,
            slot,
            &block_hash,
        ));
        QuorumCert {
            slot,
            block_hash,
            signers: bits,
            signature,
        }
    }

    /// The last slot of the chain.
    pub fn last_slot(&self) -> u64 {
        self.headers.len() as u64
    }

    /// The certified header at `slot` (1-based).
    pub fn at_slot(&self, slot: u64) -> &CertifiedHeader {
        &self.headers[slot as usize - 1]
    }

    /// The spec as JSON, for `luxtensor-light --chain`.
    pub fn spec_json(&self) -> String {
        serde_json::to_string_pretty(&self.spec).expect("a spec serialises")
    }
}

/// How a server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Behaviour {
    /// Serves the chain as a node would.
    Honest,
    /// Every QC it serves beside a header (updates, certified headers)
    /// lacks its last signer: a lie the client refuses with `qc_insufficient_stake`.
    BadQc,
}

/// A running server: its URL, and it stops when dropped.
pub struct LightServer {
    /// `ws://127.0.0.1:PORT`.
    pub url: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct Shared {
    chain: ServedChain,
    behaviour: Behaviour,
    /// When the head was at `start_slot`.
    started: Instant,
    start_slot: u64,
}

impl Shared {
    /// The slot of the head now (the node's newest block).
    fn head_slot(&self) -> u64 {
        let elapsed = self.started.elapsed().as_millis() as u64;
        (self.start_slot + elapsed / self.chain.spec.slot_duration_ms.max(1))
            .min(self.chain.last_slot())
    }

    fn tamper(&self, qc: &QuorumCert) -> QuorumCert {
        if self.behaviour == Behaviour::Honest || qc.signers.count() == 0 {
            return qc.clone();
        }
        let last = qc.signers.signers().last().expect("a signer");
        let mut bits = SignerBitfield::with_set_len(qc.signers.as_bytes().len() * 8);
        for i in qc.signers.signers().filter(|i| *i != last) {
            bits.set(i);
        }
        QuorumCert {
            signers: SignerBitfield::from_bytes(Bytes::copy_from_slice(
                &bits.as_bytes()[..qc.signers.as_bytes().len()],
            )),
            ..qc.clone()
        }
    }

    /// The header as served (a liar cannot re-seal a header, so it lies
    /// only in the QCs served beside headers).
    fn served_header(&self, slot: u64) -> SignedHeader {
        self.chain.at_slot(slot).header.clone()
    }

    fn head_json(&self, slot: u64) -> Value {
        let h = self.served_header(slot);
        let owner = self.chain.members[h.epoch as usize][h.proposer_index as usize].0;
        new_head_json(&h, chain_spec::devnet_validator_owner(owner))
    }

    fn certified_json(&self, slot: u64) -> Value {
        let certified = CertifiedHeader {
            header: self.served_header(slot),
            qc: self.tamper(&self.chain.at_slot(slot).qc),
        };
        json!({
            "header": self.head_json(slot),
            "qc": qc_json(&certified.qc),
            "rlp": Bytes::from(alloy_rlp::encode(&certified)),
        })
    }

    fn set_json(&self, epoch: u64) -> Value {
        let set = &self.chain.sets[epoch as usize];
        json!({
            "epoch": format!("{epoch:#x}"),
            "hash": set.hash(),
            "totalStake": set.total_stake(),
            "validators": set.validators().iter().map(|v| json!({
                "owner": v.owner,
                "publicKey": v.public_key,
                "stake": v.stake,
            })).collect::<Vec<_>>(),
            "rlp": Bytes::from(set.encode_to_vec()),
        })
    }

    /// As the node serves it: compact (`{epoch, rlp}`) unless `verbose`.
    fn update_json(&self, epoch: u64, verbose: bool) -> Value {
        let mut update = self.chain.updates[epoch as usize].clone();
        let slot = update.slot();
        update.header.header = self.served_header(slot);
        update.header.qc = self.tamper(&update.header.qc);
        let mut value = json!({
            "epoch": format!("{epoch:#x}"),
            "rlp": Bytes::from(update.encode_to_vec()),
        });
        if verbose {
            value["certifiedHeader"] = self.certified_json(slot);
            value["nextValidatorSet"] = self.set_json(epoch + 1);
        }
        value
    }

    /// Answers one request (`None`: an unknown request, answered with an error).
    fn call(&self, method: &str, params: &[Value]) -> Result<Value, (i64, String)> {
        let head = self.head_slot();
        let epoch_of = |v: Option<&Value>| -> Result<u64, (i64, String)> {
            match v {
                Some(Value::Number(n)) => n.as_u64(),
                Some(Value::String(s)) => u64::from_str_radix(s.trim_start_matches("0x"), 16).ok(),
                _ => None,
            }
            .ok_or((-32602, "invalid argument: expected an epoch number".into()))
        };
        match method {
            "lux_getEpochUpdates" => {
                let from = epoch_of(params.first())?;
                let count = epoch_of(params.get(1))?;
                if count > 64 {
                    return Err((
                        -32005,
                        format!("at most 64 epoch updates per call, {count} asked"),
                    ));
                }
                let head_epoch = self.chain.at_slot(head.max(1)).header.epoch;
                let last = from.saturating_add(count).min(head_epoch);
                let verbose = params.get(2) == Some(&Value::Bool(true));
                Ok(Value::Array(
                    (from..last).map(|e| self.update_json(e, verbose)).collect(),
                ))
            }
            "lux_getCertifiedHeader" => {
                // Certified: below the head (the head's QC comes with its child).
                let slot = match params.first() {
                    Some(Value::String(s)) if s.len() == 66 => {
                        let hash: B256 = s
                            .parse()
                            .map_err(|_| (-32602, "invalid hash".to_string()))?;
                        self.chain.by_hash.get(&hash).map(|i| *i as u64 + 1)
                    }
                    Some(Value::String(s)) if s == "latest" || s == "finalized" || s == "safe" => {
                        Some(head.saturating_sub(1))
                    }
                    Some(Value::String(s)) => {
                        u64::from_str_radix(s.trim_start_matches("0x"), 16).ok()
                    }
                    _ => return Err((-32602, "invalid argument 0: block id".into())),
                };
                Ok(match slot {
                    Some(slot) if slot >= 1 && slot < head => self.certified_json(slot),
                    _ => Value::Null,
                })
            }
            "lux_getValidatorSet" => {
                let epoch = epoch_of(params.first())?;
                let head_epoch = self.chain.at_slot(head.max(1)).header.epoch;
                Ok(if epoch <= head_epoch + 1 {
                    self.set_json(epoch)
                } else {
                    Value::Null
                })
            }
            other => Err((
                -32601,
                format!("the method {other} does not exist/is not available"),
            )),
        }
    }
}

impl LightServer {
    /// Serves `chain` on a free loopback port, the head starting at
    /// `start_slot` and advancing one slot per slot duration.
    pub fn start(chain: ServedChain, start_slot: u64, behaviour: Behaviour) -> Self {
        Self::start_on(0, chain, start_slot, behaviour)
    }

    /// Like [`start`](Self::start) on a given loopback port (0: any free one).
    pub fn start_on(port: u16, chain: ServedChain, start_slot: u64, behaviour: Behaviour) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("bind loopback");
        listener.set_nonblocking(true).expect("non-blocking");
        let addr: SocketAddr = listener.local_addr().expect("an address");
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel();
        let shared = Arc::new(Shared {
            chain,
            behaviour,
            started: Instant::now(),
            start_slot: start_slot.max(1),
        });
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            runtime.block_on(async move {
                let listener =
                    tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
                tokio::select! {
                    _ = stop_rx => {}
                    _ = async {
                        while let Ok((stream, _)) = listener.accept().await {
                            tokio::spawn(connection(stream, shared.clone()));
                        }
                    } => {}
                }
            });
        });
        Self {
            url: format!("ws://{addr}"),
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }
}

impl Drop for LightServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, shared: Arc<Shared>) {
    let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
        return;
    };
    let mut subscribed_from: Option<u64> = None;
    let slot_ms = shared.chain.spec.slot_duration_ms.max(1);
    let mut ticker = tokio::time::interval(Duration::from_millis(slot_ms / 4 + 1));
    loop {
        tokio::select! {
            message = ws.next() => {
                let text = match message {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    _ => return,
                };
                let Ok(request) = serde_json::from_str::<Value>(text.as_str()) else { return };
                let id = request.get("id").cloned().unwrap_or(Value::Null);
                let method = request.get("method").and_then(Value::as_str).unwrap_or("");
                let params = request.get("params").and_then(Value::as_array).cloned().unwrap_or_default();
                let reply = if method == "eth_subscribe" {
                    if params.first().and_then(Value::as_str) == Some("newHeads") {
                        subscribed_from = Some(shared.head_slot());
                        json!({"jsonrpc": "2.0", "id": id, "result": "0x1"})
                    } else {
                        json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "no such subscription"}})
                    }
                } else {
                    match shared.call(method, &params) {
                        Ok(result) => json!({"jsonrpc": "2.0", "id": id, "result": result}),
                        Err((code, message)) => json!({"jsonrpc": "2.0", "id": id, "error": {"code": code, "message": message}}),
                    }
                };
                if ws.send(Message::text(reply.to_string())).await.is_err() {
                    return;
                }
            }
            _ = ticker.tick() => {
                if let Some(next) = subscribed_from.as_mut() {
                    let head = shared.head_slot();
                    while *next <= head {
                        let note = json!({"jsonrpc": "2.0", "method": "eth_subscription",
                            "params": {"subscription": "0x1", "result": shared.head_json(*next)}});
                        if ws.send(Message::text(note.to_string())).await.is_err() {
                            return;
                        }
                        *next += 1;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summed_key_qcs_verify_and_churn_changes_the_set() {
        let chain = ServedChain::build(&churn(10, 2, 4), 4, 100, 0);
        for h in &chain.headers {
            let set = &chain.sets[h.header.epoch as usize];
            h.verify(set, &chain.spec)
                .expect("a valid certified header");
        }
        assert_ne!(chain.sets[2].hash(), chain.sets[3].hash());
        let fork = chain.fork(10);
        assert_eq!(fork.at_slot(9), chain.at_slot(9));
        assert_ne!(
            fork.at_slot(10).header.hash(),
            chain.at_slot(10).header.hash()
        );
        fork.at_slot(10)
            .verify(&fork.sets[1], &fork.spec)
            .expect("the fork is certified too");
    }
}
