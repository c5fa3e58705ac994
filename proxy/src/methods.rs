//! The methods: each one answered from verified data, computed locally,
//! or (relaxed mode only) forwarded with a trust marker.
//!
//! | class | methods |
//! |---|---|
//! | local | `eth_chainId`, `lux_stakingContract`, `net_version`, `eth_blockNumber`, `eth_syncing`, `eth_gasPrice`, `eth_maxPriorityFeePerGas`, `web3_*`, `net_*`, `eth_accounts`, uncle counts |
//! | verified block data | blocks, headers, transactions, receipts, `eth_getLogs`, `eth_feeHistory` (rewards from verified receipts), `lux_getRawHeader`/`lux_getRawBlock` |
//! | verified state | `eth_getBalance`, `eth_getTransactionCount`, `eth_getCode`, `eth_getStorageAt`, `eth_getProof` (EIP-1186 against the verified state root) |
//! | self-verifying | `lux_getEpochUpdates`, `lux_getCertifiedHeader`, `lux_getValidatorSet` (signed or hash-committed data its reader checks) |
//! | bounded | `eth_estimateGas` (must lie between 21,000 and the head's gas limit), pending nonces (at least the proven nonce) |
//! | writes | `eth_sendRawTransaction` (to every usable upstream; the hash is computed locally) |
//! | unverifiable | everything else: refused in strict mode, forwarded marked in relaxed mode |

use crate::cache::{Cache, Scope};
use crate::proxy::Proxy;
use crate::rpc::{Answer, RpcFailure, Trust};
use crate::transport::CallError;
use crate::verify;
use alloy_eips::{BlockId, BlockNumberOrTag};
use alloy_primitives::{Address, B256, Bytes, U64, U128, U256};
use alloy_rpc_types_eth::Filter;
use futures::FutureExt;
use luxtensor_light::{SignedHeader, SignedTransaction};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// The staking contract's ABI, as the node's `lux_stakingContract` gives it
/// (a copy of `luxtensor_full`'s constant: the proxy does not depend on the
/// full node; `tests/web3/run.sh` checks both answers are equal).
const STAKING_ABI: &str = r#"[
{"type":"function","name":"stake","stateMutability":"payable","inputs":[{"name":"blsPubkey","type":"bytes"},{"name":"proofOfPossession","type":"bytes"}],"outputs":[]},
{"type":"function","name":"requestExit","stateMutability":"nonpayable","inputs":[],"outputs":[]},
{"type":"event","name":"StakeRequested","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"blsPubkey","type":"bytes","indexed":false},{"name":"amount","type":"uint256","indexed":false},{"name":"activationEpoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ExitRequested","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"exitEpoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ValidatorActivated","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"epoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ValidatorExited","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"epoch","type":"uint64","indexed":false}]},
{"type":"event","name":"ValidatorSlashed","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"amount","type":"uint256","indexed":false},{"name":"epoch","type":"uint64","indexed":false}]},
{"type":"event","name":"StakeWithdrawn","anonymous":false,"inputs":[{"name":"owner","type":"address","indexed":true},{"name":"amount","type":"uint256","indexed":false},{"name":"epoch","type":"uint64","indexed":false}]}
]"#;

/// Priority fee the node suggests (its default), in wei.
pub const DEFAULT_PRIORITY_FEE: u128 = 1_000_000_000;

struct Params<'a>(&'a [Value]);

impl<'a> Params<'a> {
    fn new(params: &'a Value) -> Result<Self, RpcFailure> {
        match params {
            Value::Array(list) => Ok(Self(list)),
            Value::Null => Ok(Self(&[])),
            _ => Err(RpcFailure::invalid_params("non-array args")),
        }
    }
    fn get(&self, i: usize) -> Option<&'a Value> {
        self.0.get(i).filter(|v| !v.is_null())
    }
    fn required<T: DeserializeOwned>(&self, i: usize) -> Result<T, RpcFailure> {
        match self.get(i) {
            Some(v) => T::deserialize(v)
                .map_err(|e| RpcFailure::invalid_params(format!("invalid argument {i}: {e}"))),
            None => Err(RpcFailure::invalid_params(format!(
                "missing value for required argument {i}"
            ))),
        }
    }
    fn optional<T: DeserializeOwned>(&self, i: usize) -> Result<Option<T>, RpcFailure> {
        self.get(i)
            .map(|v| {
                T::deserialize(v)
                    .map_err(|e| RpcFailure::invalid_params(format!("invalid argument {i}: {e}")))
            })
            .transpose()
    }
    fn at_most(&self, n: usize) -> Result<(), RpcFailure> {
        if self.0.len() > n {
            return Err(RpcFailure::invalid_params(format!(
                "too many arguments, want at most {n}"
            )));
        }
        Ok(())
    }
}

fn text<T: Serialize + ?Sized>(value: &T) -> Arc<str> {
    serde_json::to_string(value).expect("serializes").into()
}

/// Methods whose answers are cached (by method and params).
fn cacheable(method: &str) -> Option<&'static str> {
    const CACHED: &[&str] = &[
        "eth_getBlockByNumber",
        "eth_getBlockByHash",
        "eth_getBlockTransactionCountByNumber",
        "eth_getBlockTransactionCountByHash",
        "eth_getTransactionByBlockNumberAndIndex",
        "eth_getTransactionByBlockHashAndIndex",
        "eth_getBlockReceipts",
        "eth_getTransactionByHash",
        "eth_getTransactionReceipt",
        "eth_getBalance",
        "eth_getTransactionCount",
        "eth_getCode",
        "eth_getStorageAt",
        "eth_getProof",
        "eth_getLogs",
        "eth_feeHistory",
        "lux_getRawBlock",
        "lux_getRawHeader",
    ];
    CACHED.iter().copied().find(|m| *m == method)
}

/// Answers one call: from the cache, from a coalesced in-flight request,
/// or by computing it.
pub async fn call(proxy: &Arc<Proxy>, method: &str, params: Value) -> Answer {
    call_cached(proxy, method, params).await.answer
}

/// An answer, and where the cache holds it.
#[derive(Debug)]
pub struct Outcome {
    /// The answer.
    pub answer: Answer,
    /// The method's cache name and the scope of the cached answer, when
    /// the answer is (now) in the cache.
    pub cached: Option<(&'static str, Scope)>,
}

/// [`call`], saying whether (and for how long) the answer is cached: the
/// server keeps whole responses of [`Scope::Immutable`] answers.
pub async fn call_cached(proxy: &Arc<Proxy>, method: &str, params: Value) -> Outcome {
    proxy.counters.requests.fetch_add(1, Ordering::Relaxed);
    if let Some(allow) = &proxy.config.allow_methods
        && !allow.iter().any(|m| m == method)
    {
        return Outcome {
            answer: Err(RpcFailure::method_not_found(method)),
            cached: None,
        };
    }
    let Some(name) = cacheable(method) else {
        return Outcome {
            answer: dispatch(proxy, method, &params)
                .await
                .map(|(v, _, t)| (v, t)),
            cached: None,
        };
    };
    let key = Cache::key(method, &params);
    if let Some((hit, scope)) = proxy.cache.lock().expect("not poisoned").get(name, &key) {
        return Outcome {
            answer: Ok((hit, Trust::Verified)),
            cached: Some((name, scope)),
        };
    }
    let p = proxy.clone();
    let k = key.clone();
    let compute = async move {
        let (value, scope, _) = dispatch(&p, name, &params).await?;
        if let Some(scope) = scope {
            p.cache
                .lock()
                .expect("not poisoned")
                .put(k, value.clone(), scope);
        }
        Ok((value, scope))
    }
    .boxed();
    match proxy.coalesce(key, compute).await {
        Ok((value, scope)) => Outcome {
            answer: Ok((value, Trust::Verified)),
            cached: scope.map(|s| (name, s)),
        },
        Err(e) => Outcome {
            answer: Err(e),
            cached: None,
        },
    }
}

type Computed = Result<(Arc<str>, Option<Scope>, Trust), RpcFailure>;

fn verified(value: Arc<str>, scope: Scope) -> Computed {
    Ok((value, Some(scope), Trust::Verified))
}

fn local(value: Arc<str>) -> Computed {
    Ok((value, None, Trust::Verified))
}

fn no_head() -> RpcFailure {
    RpcFailure::unavailable("no verified head yet: the light client is still catching up".into())
}

/// The verified header a block tag or number names (`None`: beyond the head), and its cache scope.
async fn header_for_tag(
    proxy: &Proxy,
    tag: BlockNumberOrTag,
) -> Result<Option<(SignedHeader, Scope)>, RpcFailure> {
    let head = proxy.head().ok_or_else(no_head)?;
    let finalized = proxy.finalized();
    let scope_of = |h: &SignedHeader, tagged: bool| {
        if tagged {
            Scope::Head
        } else if finalized.as_ref().is_some_and(|f| h.number <= f.number) {
            Scope::Immutable
        } else {
            Scope::Block(h.hash())
        }
    };
    let (number, tagged) = match tag {
        BlockNumberOrTag::Latest | BlockNumberOrTag::Pending => {
            return Ok(Some((head, Scope::Head)));
        }
        BlockNumberOrTag::Safe | BlockNumberOrTag::Finalized => {
            return Ok(Some((
                finalized.unwrap_or_else(|| head.clone()),
                Scope::Head,
            )));
        }
        BlockNumberOrTag::Earliest => (0, false),
        BlockNumberOrTag::Number(n) => (n, false),
    };
    if number > head.number {
        return Ok(None);
    }
    Ok(proxy.header_by_number(number).await?.map(|h| {
        let s = scope_of(&h, tagged);
        (h, s)
    }))
}

async fn header_for_id(
    proxy: &Proxy,
    id: BlockId,
) -> Result<Option<(SignedHeader, Scope)>, RpcFailure> {
    match id {
        BlockId::Number(tag) => header_for_tag(proxy, tag).await,
        BlockId::Hash(h) => Ok(proxy.header_by_hash(h.block_hash).await?.map(|header| {
            let scope = block_scope(proxy, &header);
            (header, scope)
        })),
    }
}

/// The scope of an answer about a verified canonical block: immutable once
/// the block is final, until then true while the block stays canonical
/// (a reorg may replace it, and a block that left the canonical chain is
/// not served, even by hash).
fn block_scope(proxy: &Proxy, header: &SignedHeader) -> Scope {
    let hash = header.hash();
    let v = proxy.verified.lock().expect("not poisoned");
    let final_and_canonical = v
        .canon
        .finalized_header()
        .is_some_and(|f| header.number <= f.number)
        && v.canon.by_hash(&hash).is_some();
    if final_and_canonical {
        Scope::Immutable
    } else {
        Scope::Block(hash)
    }
}

fn block_id_param(p: &Params<'_>, i: usize, by_hash: bool) -> Result<BlockId, RpcFailure> {
    Ok(if by_hash {
        BlockId::from(p.required::<B256>(i)?)
    } else {
        BlockId::Number(p.required(i)?)
    })
}

/// Computes an answer.
async fn dispatch(proxy: &Arc<Proxy>, method: &str, params: &Value) -> Computed {
    let p = Params::new(params)?;
    match method {
        "web3_clientVersion" => {
            p.at_most(0)?;
            local(text(&format!(
                "luxtensor-proxy/v{}/{}-{}/rust",
                env!("CARGO_PKG_VERSION"),
                std::env::consts::OS,
                std::env::consts::ARCH
            )))
        }
        "web3_sha3" => {
            p.at_most(1)?;
            let data: Bytes = p.required(0)?;
            local(text(&alloy_primitives::keccak256(&data)))
        }
        "net_version" => {
            p.at_most(0)?;
            local(text(&proxy.spec.chain_id.to_string()))
        }
        "net_listening" => {
            p.at_most(0)?;
            local(text(&true))
        }
        "net_peerCount" => {
            p.at_most(0)?;
            local(text(&U64::from(proxy.pool.usable().len())))
        }
        "lux_stakingContract" => {
            // A protocol constant (the address is fixed, the ABI is the
            // protocol's), so it needs no upstream and no proof.
            p.at_most(0)?;
            let abi: Value = serde_json::from_str(STAKING_ABI).expect("the ABI constant is JSON");
            local(text(&json!({
                "address": luxtensor_light::chain_spec::STAKING_ADDRESS,
                "abi": abi
            })))
        }
        "eth_chainId" => {
            p.at_most(0)?;
            local(text(&U64::from(proxy.spec.chain_id)))
        }
        "eth_accounts" => {
            p.at_most(0)?;
            local(text(&Vec::<Address>::new()))
        }
        "eth_syncing" => {
            p.at_most(0)?;
            local(text(&proxy.head().is_none()))
        }
        "eth_blockNumber" => {
            p.at_most(0)?;
            let head = proxy.head().ok_or_else(no_head)?;
            local(text(&U64::from(head.number)))
        }
        "eth_gasPrice" => {
            p.at_most(0)?;
            let head = proxy.head().ok_or_else(no_head)?;
            local(text(&U256::from(
                u128::from(next_base_fee(&head)) + DEFAULT_PRIORITY_FEE,
            )))
        }
        "eth_maxPriorityFeePerGas" => {
            p.at_most(0)?;
            local(text(&U256::from(DEFAULT_PRIORITY_FEE)))
        }
        "eth_getUncleCountByBlockNumber" | "eth_getUncleCountByBlockHash" => {
            p.at_most(1)?;
            let id = block_id_param(&p, 0, method.ends_with("Hash"))?;
            match header_for_id(proxy, id).await? {
                Some(_) => local(text(&U64::ZERO)),
                None => local("null".into()),
            }
        }
        "eth_getUncleByBlockNumberAndIndex" | "eth_getUncleByBlockHashAndIndex" => {
            p.at_most(2)?;
            local("null".into())
        }
        "eth_getBlockByNumber" | "eth_getBlockByHash" => {
            p.at_most(2)?;
            let id = block_id_param(&p, 0, method.ends_with("Hash"))?;
            let full: bool = p.required(1)?;
            let Some((header, scope)) = header_for_id(proxy, id).await? else {
                return verified("null".into(), Scope::Head);
            };
            let block = proxy.block(&header).await?;
            let json = if full {
                text(&block.json)
            } else {
                text(&verify::with_tx_hashes(block.json.clone(), &block.txs))
            };
            verified(json, scope)
        }
        "eth_getBlockTransactionCountByNumber" | "eth_getBlockTransactionCountByHash" => {
            p.at_most(1)?;
            let id = block_id_param(&p, 0, method.ends_with("Hash"))?;
            let Some((header, scope)) = header_for_id(proxy, id).await? else {
                return verified("null".into(), Scope::Head);
            };
            let block = proxy.block(&header).await?;
            verified(text(&U64::from(block.txs.len())), scope)
        }
        "eth_getTransactionByBlockNumberAndIndex" | "eth_getTransactionByBlockHashAndIndex" => {
            p.at_most(2)?;
            let id = block_id_param(&p, 0, method.contains("ByBlockHash"))?;
            let index: U64 = p.required(1)?;
            let Some((header, scope)) = header_for_id(proxy, id).await? else {
                return verified("null".into(), Scope::Head);
            };
            let block = proxy.block(&header).await?;
            match block.txs.get(index.saturating_to::<usize>()) {
                Some(tx) => verified(text(&tx.json), scope),
                None => verified("null".into(), scope),
            }
        }
        "eth_getBlockReceipts" => {
            p.at_most(1)?;
            let id: BlockId = p.required(0)?;
            let Some((header, scope)) = header_for_id(proxy, id).await? else {
                return verified("null".into(), Scope::Head);
            };
            let receipts = proxy.receipts(&header).await?;
            verified(text(&*receipts), scope)
        }
        "eth_getTransactionByHash" => {
            p.at_most(1)?;
            let hash: B256 = p.required(0)?;
            transaction_by_hash(proxy, hash).await
        }
        "eth_getTransactionReceipt" => {
            p.at_most(1)?;
            let hash: B256 = p.required(0)?;
            receipt_by_hash(proxy, hash).await
        }
        "eth_getBalance" | "eth_getTransactionCount" | "eth_getCode" => {
            p.at_most(2)?;
            let address: Address = p.required(0)?;
            let id: Option<BlockId> = p.optional(1)?;
            let pending = matches!(id, Some(BlockId::Number(BlockNumberOrTag::Pending)));
            let (proof, header) = state_proof(proxy, address, vec![], id).await?;
            let scope = Scope::Head;
            match method {
                "eth_getBalance" => verified(text(&proof.balance), scope),
                "eth_getTransactionCount" if pending => {
                    pending_nonce(proxy, address, proof.nonce).await
                }
                "eth_getTransactionCount" => verified(text(&U64::from(proof.nonce)), scope),
                _ => {
                    let code_hash = proof.code_hash;
                    let code = proxy
                        .fetch_checked(
                            "eth_getCode",
                            json!([address, {"blockHash": header.hash()}]),
                            |v| {
                                let code: Bytes =
                                    serde_json::from_value(v.clone()).map_err(|e| {
                                        verify::VerifyError::Shape {
                                            what: "code",
                                            reason: e.to_string(),
                                        }
                                    })?;
                                verify::verify_code(&code, code_hash).map(|_| code)
                            },
                        )
                        .await?;
                    verified(text(&code), scope)
                }
            }
        }
        "eth_getStorageAt" => {
            p.at_most(3)?;
            let address: Address = p.required(0)?;
            let slot: U256 = p.required(1)?;
            let id: Option<BlockId> = p.optional(2)?;
            let key = B256::from(slot);
            let (proof, _) = state_proof(proxy, address, vec![key], id).await?;
            let value = proof
                .storage_proof
                .first()
                .map(|s| B256::from(s.value))
                .unwrap_or_default();
            verified(text(&value), Scope::Head)
        }
        "eth_getProof" => {
            p.at_most(3)?;
            let address: Address = p.required(0)?;
            let keys: Vec<B256> = p.required(1)?;
            let id: Option<BlockId> = p.optional(2)?;
            let (proof, _) = state_proof(proxy, address, keys, id).await?;
            verified(text(&proof), Scope::Head)
        }
        "eth_getLogs" => {
            p.at_most(1)?;
            let filter: Filter = p.required(0)?;
            let logs = crate::logs::get_logs(proxy, &filter).await?;
            verified(text(&logs), Scope::Head)
        }
        "eth_feeHistory" => fee_history(proxy, &p).await,
        "eth_estimateGas" => {
            p.at_most(3)?;
            let head = proxy.head().ok_or_else(no_head)?;
            let (_, answer) = proxy
                .pool
                .call(method, params, &[])
                .await
                .map_err(|e| RpcFailure::unavailable(e.to_string()))?;
            let value = answer.map_err(RpcFailure::from_upstream)?;
            let gas: U64 = serde_json::from_value(value)
                .map_err(|e| RpcFailure::unavailable(format!("eth_estimateGas: {e}")))?;
            let gas = gas.to::<u64>();
            if !(21_000..=head.gas_limit).contains(&gas) {
                return Err(RpcFailure::unavailable(format!(
                    "the upstream's gas estimate {gas} is outside [21000, {}]",
                    head.gas_limit
                )));
            }
            local(text(&U64::from(gas)))
        }
        "eth_sendRawTransaction" => {
            p.at_most(1)?;
            let raw: Bytes = p.required(0)?;
            send_raw_transaction(proxy, raw).await
        }
        "lux_getRawHeader" | "lux_getRawBlock" => {
            p.at_most(1)?;
            let id: BlockId = p.required(0)?;
            let Some((header, scope)) = header_for_id(proxy, id).await? else {
                return verified("null".into(), Scope::Head);
            };
            if method == "lux_getRawHeader" {
                return verified(text(&Bytes::from(alloy_rlp::encode(&header))), scope);
            }
            let hash = header.hash();
            let raw = proxy
                .fetch_checked(method, json!([hash]), |v| {
                    let bytes: Bytes = serde_json::from_value(v.clone()).map_err(|e| {
                        verify::VerifyError::Shape {
                            what: "raw block",
                            reason: e.to_string(),
                        }
                    })?;
                    let block = luxtensor_light::Block::decode(&bytes).map_err(|e| {
                        verify::VerifyError::Shape {
                            what: "raw block",
                            reason: e.to_string(),
                        }
                    })?;
                    if block.header.header != header.header {
                        return Err(verify::VerifyError::Mismatch {
                            what: "raw block header",
                            expected: hash.to_string(),
                            got: block.hash().to_string(),
                        });
                    }
                    block
                        .verify_body()
                        .map_err(|e| verify::VerifyError::Mismatch {
                            what: "raw block body",
                            expected: "the header's roots".into(),
                            got: e.to_string(),
                        })?;
                    Ok(bytes)
                })
                .await?;
            verified(text(&raw), scope)
        }
        "lux_getEpochUpdates" | "lux_getCertifiedHeader" | "lux_getValidatorSet" => {
            forward(proxy, method, params, Trust::Verified).await
        }
        "eth_subscribe" | "eth_unsubscribe" => {
            Err(RpcFailure::new(-32601, "notifications not supported"))
        }
        m if crate::filters::is_filter_method(m) => {
            crate::filters::call(proxy, m, params).map(|v| (v, None, Trust::Verified))
        }
        "eth_getFilterLogs" => {
            p.at_most(1)?;
            let id: String = p.required(0)?;
            let filter = crate::filters::log_filter(proxy, &id)?;
            let logs = crate::logs::get_logs(proxy, &filter).await?;
            local(text(&logs))
        }
        other if proxy.config.relaxed => {
            proxy
                .counters
                .forwarded_unverified
                .fetch_add(1, Ordering::Relaxed);
            forward(proxy, other, params, Trust::Unverified).await
        }
        other => {
            proxy
                .counters
                .refused_unverifiable
                .fetch_add(1, Ordering::Relaxed);
            Err(RpcFailure::unverifiable(format!(
                "{other} cannot be verified against the light client's headers, so this proxy (strict mode) does not serve it; start it with --relaxed to forward such calls marked \"trust\":\"unverified\""
            )))
        }
    }
}

async fn forward(proxy: &Proxy, method: &str, params: &Value, trust: Trust) -> Computed {
    let (_, answer) = proxy
        .pool
        .call(method, params, &[])
        .await
        .map_err(|e| RpcFailure::unavailable(e.to_string()))?;
    let value = answer.map_err(RpcFailure::from_upstream)?;
    Ok((text(&value), None, trust))
}

/// EIP-1559's next base fee after `parent`.
pub fn next_base_fee(parent: &SignedHeader) -> u64 {
    alloy_eips::calc_next_block_base_fee(
        parent.gas_used,
        parent.gas_limit,
        parent.base_fee_per_gas,
        alloy_eips::eip1559::BaseFeeParams::ethereum(),
    )
}

/// An account proof at the verified header `id` names, checked against its
/// state root. The node keeps state at its head only, so the proof is asked
/// for by block hash; an upstream that has moved on (or not yet arrived) is
/// skipped, and after one refresh of the heads the request fails with the
/// node's "historical state" error.
async fn state_proof(
    proxy: &Arc<Proxy>,
    address: Address,
    keys: Vec<B256>,
    id: Option<BlockId>,
) -> Result<
    (
        alloy_rpc_types_eth::EIP1186AccountProofResponse,
        SignedHeader,
    ),
    RpcFailure,
> {
    let id = id.unwrap_or(BlockId::Number(BlockNumberOrTag::Latest));
    let mut last = None;
    for round in 0..3 {
        let Some((header, _)) = header_for_id(proxy, id).await? else {
            return Err(RpcFailure::new(-32000, "header not found"));
        };
        let params = json!([address, keys, {"blockHash": header.hash()}]);
        // Hedged: a stalled upstream is not waited for; one that answered
        // (with a proof that failed, or an error) is not asked again.
        let mut exclude = Vec::new();
        while let Ok((upstream, answer)) = proxy.pool.call("eth_getProof", &params, &exclude).await
        {
            exclude.push(upstream);
            match answer {
                Ok(v) => match verify::verify_proof(&v, header.state_root, address, &keys) {
                    Ok(proof) => {
                        proxy.pool.verified(upstream);
                        return Ok((proof, header));
                    }
                    Err(e) => {
                        proxy
                            .counters
                            .verification_failures
                            .fetch_add(1, Ordering::Relaxed);
                        proxy.pool.lie(upstream, &format!("eth_getProof: {e}"));
                    }
                },
                Err(CallError::Rpc {
                    code,
                    message,
                    data,
                }) => {
                    last = Some(RpcFailure {
                        code,
                        message,
                        data,
                    });
                }
                Err(e) => last = Some(RpcFailure::unavailable(e.to_string())),
            }
        }
        if round == 0
            && matches!(
                id,
                BlockId::Number(BlockNumberOrTag::Latest | BlockNumberOrTag::Pending)
            )
        {
            crate::follower::refresh(proxy).await;
        } else if round > 0 {
            break;
        }
    }
    Err(last.unwrap_or_else(|| RpcFailure::unavailable("no upstream served a valid proof".into())))
}

/// The pending nonce: the upstream's answer if it is at least the proven
/// nonce and at most 1,024 above it (a bounded claim), else the proven nonce.
async fn pending_nonce(proxy: &Proxy, address: Address, proven: u64) -> Computed {
    let answer = proxy
        .pool
        .call("eth_getTransactionCount", &json!([address, "pending"]), &[])
        .await;
    let claimed = match answer {
        Ok((_, Ok(v))) => serde_json::from_value::<U64>(v).ok().map(|n| n.to::<u64>()),
        _ => None,
    };
    let nonce = match claimed {
        Some(n) if n >= proven && n <= proven + 1024 => n,
        _ => proven,
    };
    local(text(&U64::from(nonce)))
}

/// The verified header of `block_hash`, after one refresh of the heads if
/// it is not known yet (an upstream may be a block ahead of the proxy).
async fn header_in_verified_chain(
    proxy: &Arc<Proxy>,
    block_hash: B256,
) -> Result<Option<SignedHeader>, RpcFailure> {
    if let Some(h) = proxy.header_by_hash(block_hash).await? {
        return Ok(Some(h));
    }
    crate::follower::refresh(proxy).await;
    proxy.header_by_hash(block_hash).await
}

async fn transaction_by_hash(proxy: &Arc<Proxy>, hash: B256) -> Computed {
    let (_, answer) = proxy
        .pool
        .call("eth_getTransactionByHash", &json!([hash]), &[])
        .await
        .map_err(|e| RpcFailure::unavailable(e.to_string()))?;
    let value = answer.map_err(RpcFailure::from_upstream)?;
    if value.is_null() {
        // Absence cannot be proven without an index: not cached.
        return local("null".into());
    }
    let block_hash = value.get("blockHash").cloned().unwrap_or(Value::Null);
    if block_hash.is_null() {
        // Pending: its content is self-authenticating (hash and signature).
        let (h, _, _) = verify::verify_tx_json(&value).map_err(|e| {
            RpcFailure::unavailable(format!(
                "the upstream's pending transaction is invalid: {e}"
            ))
        })?;
        if h != hash {
            return Err(RpcFailure::unavailable(
                "the upstream served another transaction".into(),
            ));
        }
        return local(text(&value));
    }
    let block_hash: B256 = serde_json::from_value(block_hash)
        .map_err(|e| RpcFailure::unavailable(format!("blockHash: {e}")))?;
    let Some(header) = header_in_verified_chain(proxy, block_hash).await? else {
        // Not (yet) in the verified chain: as far as the proxy can tell, not mined.
        return local("null".into());
    };
    let block = proxy.block(&header).await?;
    match block.txs.iter().find(|t| t.hash == hash) {
        Some(tx) => verified(text(&tx.json), block_scope(proxy, &header)),
        None => Err(RpcFailure::unavailable(format!(
            "the upstream places {hash} in block {block_hash}, which does not contain it"
        ))),
    }
}

async fn receipt_by_hash(proxy: &Arc<Proxy>, hash: B256) -> Computed {
    let (_, answer) = proxy
        .pool
        .call("eth_getTransactionReceipt", &json!([hash]), &[])
        .await
        .map_err(|e| RpcFailure::unavailable(e.to_string()))?;
    let value = answer.map_err(RpcFailure::from_upstream)?;
    if value.is_null() {
        return local("null".into());
    }
    let block_hash: B256 = value
        .get("blockHash")
        .cloned()
        .map(serde_json::from_value)
        .transpose()
        .map_err(|e| RpcFailure::unavailable(format!("blockHash: {e}")))?
        .ok_or_else(|| RpcFailure::unavailable("a receipt without blockHash".into()))?;
    let Some(header) = header_in_verified_chain(proxy, block_hash).await? else {
        // Not (yet) in the verified chain: as far as the proxy can tell, not mined.
        return local("null".into());
    };
    let receipts = proxy.receipts(&header).await?;
    let hash_text = Value::String(hash.to_string());
    match receipts
        .iter()
        .find(|r| r.get("transactionHash") == Some(&hash_text))
    {
        Some(r) => verified(text(r), block_scope(proxy, &header)),
        None => Err(RpcFailure::unavailable(format!(
            "block {block_hash} has no receipt for {hash}"
        ))),
    }
}

async fn send_raw_transaction(proxy: &Proxy, raw: Bytes) -> Computed {
    let tx =
        SignedTransaction::decode_2718(&raw).map_err(|e| RpcFailure::new(-32000, e.to_string()))?;
    tx.check_chain_id(proxy.spec.chain_id)
        .map_err(|e| RpcFailure::new(-32000, e.to_string()))?;
    tx.recover_sender()
        .map_err(|e| RpcFailure::new(-32000, e.to_string()))?;
    let hash = tx.hash();
    let mut targets = proxy.pool.usable();
    if targets.is_empty() {
        targets = proxy.pool.order();
    }
    let params = json!([raw]);
    let calls = targets.iter().map(|&id| {
        let params = &params;
        async move {
            (
                id,
                proxy
                    .pool
                    .call_on(id, "eth_sendRawTransaction", params)
                    .await,
            )
        }
    });
    let results = futures::future::join_all(calls).await;
    let mut accepted = false;
    let mut first_error = None;
    for (id, result) in results {
        match result {
            Ok(v) => {
                let served: Option<B256> = serde_json::from_value(v).ok();
                if served == Some(hash) {
                    accepted = true;
                    proxy.pool.verified(id);
                } else {
                    proxy
                        .counters
                        .verification_failures
                        .fetch_add(1, Ordering::Relaxed);
                    proxy.pool.lie(id, &format!(
                        "eth_sendRawTransaction answered {served:?}, the transaction's hash is {hash}"
                    ));
                }
            }
            Err(e) => {
                if first_error.is_none() {
                    first_error = Some(RpcFailure::from_upstream(e));
                }
            }
        }
    }
    if accepted {
        return local(text(&hash));
    }
    Err(first_error
        .unwrap_or_else(|| RpcFailure::unavailable("no upstream accepted the transaction".into())))
}

async fn fee_history(proxy: &Arc<Proxy>, p: &Params<'_>) -> Computed {
    p.at_most(3)?;
    let count: U64 = match p.get(0) {
        Some(Value::Number(n)) => U64::from(n.as_u64().unwrap_or(0)),
        _ => p.required(0)?,
    };
    let newest: BlockNumberOrTag = p.required(1)?;
    let percentiles: Option<Vec<f64>> = p.optional(2)?;
    if let Some(ps) = &percentiles {
        luxtensor_light::fee::check_reward_percentiles(ps)
            .map_err(|e| RpcFailure::invalid_params(e.to_string()))?;
    }
    let Some((newest, _)) = header_for_tag(proxy, newest).await? else {
        return Err(RpcFailure::invalid_params(
            "requested block is beyond the head",
        ));
    };
    let count = count.to::<u64>().min(1024).min(newest.number + 1);
    let mut history = alloy_rpc_types_eth::FeeHistory {
        reward: percentiles.as_ref().map(|_| Vec::new()),
        ..Default::default()
    };
    if count == 0 {
        return local(text(&history));
    }
    let oldest = newest.number + 1 - count;
    history.oldest_block = oldest;
    let mut last = None;
    for n in oldest..=newest.number {
        let h = proxy
            .header_by_number(n)
            .await?
            .ok_or_else(|| RpcFailure::unavailable(format!("no verified header {n}")))?;
        history
            .base_fee_per_gas
            .push(u128::from(h.base_fee_per_gas));
        history
            .gas_used_ratio
            .push(h.gas_used as f64 / h.gas_limit.max(1) as f64);
        if let (Some(ps), Some(rewards)) = (&percentiles, &mut history.reward) {
            rewards.push(block_rewards(proxy, &h, ps).await?);
        }
        last = Some(h);
    }
    if let Some(last) = last {
        history
            .base_fee_per_gas
            .push(u128::from(next_base_fee(&last)));
    }
    verified(text(&history), Scope::Head)
}

/// The tips at the given percentiles of one verified block, from its
/// verified receipts (each receipt's effective gas price and gas used are
/// checked against the block's transactions and receipts root).
async fn block_rewards(
    proxy: &Arc<Proxy>,
    header: &SignedHeader,
    percentiles: &[f64],
) -> Result<Vec<u128>, RpcFailure> {
    let receipts = proxy.receipts(header).await?;
    let base = u128::from(header.base_fee_per_gas);
    let tips = receipts
        .iter()
        .map(|r| {
            let field = |name| {
                r.get(name)
                    .and_then(|v| serde_json::from_value::<U128>(v.clone()).ok())
                    .map(|v| v.to::<u128>())
                    .unwrap_or_default()
            };
            let gas = u64::try_from(field("gasUsed")).unwrap_or(u64::MAX);
            (field("effectiveGasPrice").saturating_sub(base), gas)
        })
        .collect();
    Ok(luxtensor_light::fee::reward_percentiles(tips, percentiles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staking_abi_has_stake_and_its_event() {
        let abi: Vec<Value> = serde_json::from_str(STAKING_ABI).unwrap();
        let names: Vec<&str> = abi.iter().filter_map(|e| e["name"].as_str()).collect();
        for name in ["stake", "requestExit", "StakeRequested", "ExitRequested"] {
            assert!(names.contains(&name), "{name} missing from {names:?}");
        }
    }
}
