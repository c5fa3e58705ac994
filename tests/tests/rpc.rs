//! JSON-RPC end to end: a real chain (produced, certified, imported into
//! redb) behind the real HTTP and WebSocket servers, driven by a raw
//! HTTP/1.1 client and a tokio-tungstenite client. Every method, error
//! code, limit, batch rule and subscription kind; bad input of every kind
//! leaves the server serving others.

use alloy_primitives::{Address, B256, keccak256};
use alloy_sol_types::{SolCall, SolEvent};
use luxtensor_full::rpc::{BroadcastEvent, RpcLimits, SyncProgress, WebSocketServer};
use luxtensor_full::staking::{IStaking, STAKING_ADDRESS};
use luxtensor_light::chain_spec::{DEV_ACCOUNTS, devnet_validator_owner};
use luxtensor_light::client::EpochUpdate;
use luxtensor_light::evidence::DoubleVote;
use luxtensor_light::{Block, CertifiedHeader, Evidence, SignedHeader, ValidatorSet};
use luxtensor_tests::rpc_support::{RpcChain, WsClient, error_of};
use serde_json::{Value, json};
use std::time::Duration;

fn hex_u64(v: &Value) -> u64 {
    let s = v.as_str().unwrap_or_else(|| panic!("quantity: {v}"));
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

fn hex_bytes(v: &Value) -> Vec<u8> {
    let s = v.as_str().unwrap_or_else(|| panic!("bytes: {v}"));
    alloy_primitives::hex::decode(s).unwrap()
}

fn stored_block(chain: &RpcChain, number: u64) -> Block {
    chain
        .chain
        .read()
        .unwrap()
        .store()
        .block_by_number(number)
        .unwrap()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_and_chain_methods_answer_like_geth() {
    let chain = RpcChain::start(12, RpcLimits::default()).await;
    let mut http = chain.http().await;
    let head = chain.head();
    assert_eq!(
        head, 13,
        "12 transactions and the empty block 8 after epoch 0 ended"
    );

    let version = http.result("web3_clientVersion", json!([])).await;
    assert!(version.as_str().unwrap().starts_with("luxtensor/v"));
    assert_eq!(http.result("net_version", json!([])).await, "31337");
    assert_eq!(http.result("net_peerCount", json!([])).await, "0x3");
    assert_eq!(http.result("net_listening", json!([])).await, true);
    assert_eq!(http.result("eth_chainId", json!([])).await, "0x7a69");
    assert_eq!(
        hex_u64(&http.result("eth_blockNumber", json!([])).await),
        head
    );
    assert_eq!(http.result("eth_syncing", json!([])).await, false);
    *chain.node.sync.lock().unwrap() = Some(SyncProgress {
        starting: 1,
        current: 5,
        highest: 90,
    });
    let syncing = http.result("eth_syncing", json!([])).await;
    assert_eq!(hex_u64(&syncing["highestBlock"]), 90);
    assert_eq!(hex_u64(&syncing["currentBlock"]), 5);
    *chain.node.sync.lock().unwrap() = None;

    let head_block = stored_block(&chain, head);
    let base = head_block.header.base_fee_per_gas;
    let gas_price = hex_u64(&http.result("eth_gasPrice", json!([])).await);
    assert!(
        gas_price >= 1_000_000_000 && gas_price <= base * 2 + 1_000_000_000,
        "{gas_price}"
    );
    assert_eq!(
        http.result("eth_maxPriorityFeePerGas", json!([])).await,
        "0x3b9aca00"
    );

    let history = http
        .result("eth_feeHistory", json!(["0x4", "latest", [25.0, 75.0]]))
        .await;
    assert_eq!(hex_u64(&history["oldestBlock"]), head - 3);
    assert_eq!(
        history["baseFeePerGas"].as_array().unwrap().len(),
        5,
        "4 blocks and the next"
    );
    assert_eq!(hex_u64(&history["baseFeePerGas"][3]), base);
    assert_eq!(history["gasUsedRatio"].as_array().unwrap().len(), 4);
    let rewards = history["reward"].as_array().unwrap();
    assert_eq!(rewards.len(), 4);
    // Every block holds one transfer with a 1 gwei tip.
    assert_eq!(rewards[0], json!(["0x3b9aca00", "0x3b9aca00"]));
    let (code, _) = http
        .error("eth_feeHistory", json!([4, "latest", [75.0, 25.0]]))
        .await;
    assert_eq!(code, -32602, "percentiles must increase");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocks_transactions_and_receipts_by_every_tag() {
    let chain = RpcChain::start(12, RpcLimits::default()).await;
    let mut http = chain.http().await;
    let head = chain.head();
    let block5 = stored_block(&chain, 5);
    let hash5 = format!("{}", block5.hash());

    // Tags: latest = safe = finalized = pending = the head; earliest = genesis.
    for tag in ["latest", "safe", "finalized", "pending"] {
        let block = http
            .result("eth_getBlockByNumber", json!([tag, false]))
            .await;
        assert_eq!(hex_u64(&block["number"]), head, "{tag}");
    }
    let genesis = http
        .result("eth_getBlockByNumber", json!(["earliest", false]))
        .await;
    assert_eq!(hex_u64(&genesis["number"]), 0);
    assert_eq!(
        http.result("eth_getBlockByNumber", json!(["0x99", false]))
            .await,
        Value::Null
    );

    let by_number = http
        .result("eth_getBlockByNumber", json!(["0x5", true]))
        .await;
    let by_hash = http
        .result("eth_getBlockByHash", json!([hash5, true]))
        .await;
    assert_eq!(by_number, by_hash);
    assert_eq!(by_number["hash"], hash5);
    assert_eq!(
        by_number["parentHash"],
        format!("{}", block5.header.parent_hash)
    );
    assert_eq!(
        by_number["stateRoot"],
        format!("{}", block5.header.state_root)
    );
    assert_eq!(
        by_number["receiptsRoot"],
        format!("{}", block5.header.receipts_root)
    );
    assert_eq!(hex_u64(&by_number["slot"]), block5.header.slot);
    assert_eq!(hex_u64(&by_number["epoch"]), block5.header.epoch);
    assert_eq!(
        by_number["validatorSetHash"],
        format!("{}", block5.header.validator_set_hash)
    );
    assert_eq!(
        by_number["parentQc"]["blockHash"],
        format!("{}", block5.header.parent_hash)
    );
    assert_eq!(
        hex_u64(&by_number["baseFeePerGas"]),
        block5.header.base_fee_per_gas
    );
    assert_eq!(by_number["uncles"], json!([]));
    let set = ValidatorSet::new(chain.spec.genesis_validators()).unwrap();
    let proposer = set.validators()[block5.header.proposer_index as usize].owner;
    assert_eq!(
        by_number["miner"],
        format!("{proposer:#x}"),
        "the proposer's owner gets the tips"
    );
    assert_eq!(
        hex_u64(&by_number["size"]),
        alloy_rlp::encode(&block5).len() as u64
    );
    let tx = &by_number["transactions"][0];
    assert_eq!(tx["hash"], format!("{}", block5.transactions[0].hash()));
    assert_eq!(tx["from"], format!("{:#x}", DEV_ACCOUNTS[0]));
    assert_eq!(tx["blockHash"], hash5);
    assert_eq!(tx["transactionIndex"], "0x0");
    let hashes_only = http
        .result("eth_getBlockByNumber", json!(["0x5", false]))
        .await;
    assert_eq!(hashes_only["transactions"], json!([tx["hash"]]));

    assert_eq!(
        http.result("eth_getBlockTransactionCountByNumber", json!(["0x5"]))
            .await,
        "0x1"
    );
    assert_eq!(
        http.result("eth_getBlockTransactionCountByHash", json!([hash5]))
            .await,
        "0x1"
    );
    assert_eq!(
        http.result(
            "eth_getBlockTransactionCountByHash",
            json!([format!("{}", B256::ZERO)])
        )
        .await,
        Value::Null
    );
    let by_index = http
        .result(
            "eth_getTransactionByBlockNumberAndIndex",
            json!(["0x5", "0x0"]),
        )
        .await;
    assert_eq!(&by_index, tx);
    let by_hash_index = http
        .result(
            "eth_getTransactionByBlockHashAndIndex",
            json!([hash5, "0x0"]),
        )
        .await;
    assert_eq!(&by_hash_index, tx);
    assert_eq!(
        http.result(
            "eth_getTransactionByBlockNumberAndIndex",
            json!(["0x5", "0x1"])
        )
        .await,
        Value::Null
    );
    assert_eq!(
        &http
            .result("eth_getTransactionByHash", json!([tx["hash"]]))
            .await,
        tx
    );
    assert_eq!(
        http.result(
            "eth_getTransactionByHash",
            json!([format!("{}", B256::repeat_byte(1))])
        )
        .await,
        Value::Null
    );

    // The stake call's receipt carries the staking contract's event.
    let receipt = http
        .result(
            "eth_getTransactionReceipt",
            json!([format!("{}", chain.stake_tx)]),
        )
        .await;
    assert_eq!(receipt["status"], "0x1");
    assert_eq!(receipt["blockNumber"], "0x1");
    assert_eq!(receipt["from"], format!("{:#x}", DEV_ACCOUNTS[10]));
    assert_eq!(receipt["to"], format!("{STAKING_ADDRESS:#x}"));
    let log = &receipt["logs"][0];
    assert_eq!(log["address"], format!("{STAKING_ADDRESS:#x}"));
    assert_eq!(
        log["topics"][0],
        format!("{}", IStaking::StakeRequested::SIGNATURE_HASH)
    );
    assert_eq!(log["removed"], false);
    assert_eq!(log["transactionHash"], format!("{}", chain.stake_tx));
    let receipts = http.result("eth_getBlockReceipts", json!(["0x1"])).await;
    assert_eq!(receipts, json!([receipt]));
    let transfer = http
        .result(
            "eth_getTransactionReceipt",
            json!([format!("{}", chain.transfers[0])]),
        )
        .await;
    assert_eq!(transfer["gasUsed"], "0x5208");
    assert_eq!(
        http.result("eth_getBlockReceipts", json!(["0x99"])).await,
        Value::Null
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_proofs_calls_and_transaction_submission() {
    let mut chain = RpcChain::start(4, RpcLimits::default()).await;
    let mut http = chain.http().await;
    let alice = format!("{:#x}", DEV_ACCOUNTS[0]);
    let account = chain
        .chain
        .read()
        .unwrap()
        .state()
        .account(&DEV_ACCOUNTS[0]);

    let balance = http
        .result("eth_getBalance", json!([alice, "latest"]))
        .await;
    assert_eq!(balance.as_str().unwrap(), format!("{:#x}", account.balance));
    assert_eq!(
        hex_u64(&http.result("eth_getTransactionCount", json!([alice])).await),
        account.nonce
    );
    assert_eq!(
        http.result(
            "eth_getCode",
            json!([format!("{STAKING_ADDRESS:#x}"), "latest"])
        )
        .await,
        "0xfe"
    );
    assert_eq!(
        http.result("eth_getCode", json!([alice, "latest"])).await,
        "0x"
    );
    assert_eq!(
        http.result("eth_getStorageAt", json!([alice, "0x0", "latest"]))
            .await,
        format!("{}", B256::ZERO)
    );
    let (code, message) = http.error("eth_getBalance", json!([alice, "0x1"])).await;
    assert_eq!(code, -32000);
    assert!(message.contains("historical state"), "{message}");

    // EIP-1186: the first proof node hashes to the head's state root.
    let proof = http
        .result(
            "eth_getProof",
            json!([alice, [format!("{}", B256::ZERO)], "latest"]),
        )
        .await;
    assert_eq!(
        proof["balance"].as_str().unwrap(),
        format!("{:#x}", account.balance)
    );
    let nodes = proof["accountProof"].as_array().unwrap();
    assert!(!nodes.is_empty());
    let root = chain.chain.read().unwrap().head().state_root;
    assert_eq!(keccak256(hex_bytes(&nodes[0])), root);
    assert_eq!(proof["storageProof"][0]["value"], "0x0");

    // Gas and calls, without an EVM.
    let transfer =
        json!({"from": alice, "to": format!("{:#x}", Address::repeat_byte(7)), "value": "0x1"});
    assert_eq!(
        http.result("eth_estimateGas", json!([transfer])).await,
        "0x5208"
    );
    let stake = chain.stake_transaction();
    let stake_call =
        json!({"to": format!("{STAKING_ADDRESS:#x}"), "data": format!("{}", stake.input())});
    let estimate = hex_u64(&http.result("eth_estimateGas", json!([stake_call])).await);
    assert!(
        estimate > 21_000 + 50_000 && estimate <= stake.gas_limit(),
        "{estimate}"
    );
    let (code, message) = http
        .error("eth_estimateGas", json!([{"data": "0x6000"}]))
        .await;
    assert_eq!(code, -32000);
    assert!(message.contains("no EVM"), "{message}");
    assert_eq!(
        http.result("eth_call", json!([transfer, "latest"])).await,
        "0x"
    );
    let (code, message) = http.error("eth_call", json!([stake_call, "latest"])).await;
    assert_eq!(
        (code, message.contains("staking contract")),
        (-32000, true),
        "{message}"
    );

    // Submission: accepted, decoded and handed to the node; refusals say why.
    let tx = chain.transfer_transaction();
    let raw = format!("0x{}", alloy_primitives::hex::encode(tx.encoded_2718()));
    assert_eq!(
        http.result("eth_sendRawTransaction", json!([raw])).await,
        format!("{}", tx.hash())
    );
    assert_eq!(chain.node.submitted.lock().unwrap().len(), 1);
    let pending = hex_u64(
        &http
            .result("eth_getTransactionCount", json!([alice, "pending"]))
            .await,
    );
    assert_eq!(pending, account.nonce + 1, "pending counts the mempool");
    let by_hash = http
        .result(
            "eth_getTransactionByHash",
            json!([format!("{}", tx.hash())]),
        )
        .await;
    assert_eq!(
        by_hash["blockHash"],
        Value::Null,
        "a pending transaction has no block"
    );
    let (code, message) = http
        .error("eth_sendRawTransaction", json!(["0x01020304"]))
        .await;
    assert_eq!(code, -32000);
    assert!(
        message.contains("unsupported transaction type"),
        "{message}"
    );
    let (code, _) = http.error("eth_sendRawTransaction", json!(["0xzz"])).await;
    assert_eq!(code, -32602);
    *chain.node.reject_with.lock().unwrap() =
        Some("nonce too low: next nonce 5, tx nonce 1".into());
    let (code, message) = http.error("eth_sendRawTransaction", json!([raw])).await;
    assert_eq!(
        (code, message.as_str()),
        (-32000, "nonce too low: next nonce 5, tx nonce 1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_by_range_address_topics_and_block_hash_within_bounds() {
    let limits = RpcLimits {
        max_logs_block_range: 8,
        ..Default::default()
    };
    let chain = RpcChain::start(10, limits).await;
    let mut http = chain.http().await;
    let staking = format!("{STAKING_ADDRESS:#x}");
    let topic = format!("{}", IStaking::StakeRequested::SIGNATURE_HASH);
    let logs = http
        .result(
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": "0x7", "address": staking}]),
        )
        .await;
    assert_eq!(logs.as_array().unwrap().len(), 1);
    assert_eq!(logs[0]["blockNumber"], "0x1");
    assert_eq!(
        logs[0]["topics"][1],
        format!(
            "{:#x}",
            B256::left_padding_from(DEV_ACCOUNTS[10].as_slice())
        )
    );
    let by_topic = http
        .result(
            "eth_getLogs",
            json!([{"fromBlock": "0x1", "toBlock": "0x1", "topics": [topic]}]),
        )
        .await;
    assert_eq!(by_topic, logs);
    let other_topic = http
        .result("eth_getLogs", json!([{"fromBlock": "0x1", "toBlock": "0x1", "topics": [[format!("{}", B256::ZERO)]]}]))
        .await;
    assert_eq!(other_topic, json!([]));
    let block1 = format!("{}", stored_block(&chain, 1).hash());
    let by_hash = http
        .result("eth_getLogs", json!([{"blockHash": block1}]))
        .await;
    assert_eq!(by_hash, logs);

    let (code, message) = http
        .error(
            "eth_getLogs",
            json!([{"fromBlock": "0x0", "toBlock": "0x9"}]),
        )
        .await;
    assert_eq!(code, -32005);
    assert!(message.contains("block range too large"), "{message}");
    let (code, _) = http
        .error(
            "eth_getLogs",
            json!([{"fromBlock": "0x5", "toBlock": "0x2"}]),
        )
        .await;
    assert_eq!(code, -32602);
    let (code, message) = http
        .error(
            "eth_getLogs",
            json!([{"topics": [null, null, null, null, null]}]),
        )
        .await;
    assert_eq!((code, message.as_str()), (-32602, "exceed max topics"));
    let (code, _) = http
        .error(
            "eth_getLogs",
            json!([{"blockHash": block1, "fromBlock": "0x1"}]),
        )
        .await;
    assert_eq!(code, -32602);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lux_namespace_serves_light_clients_and_operators() {
    let limits = RpcLimits {
        max_epoch_updates: 4,
        ..Default::default()
    };
    // 8-slot epochs: 20 blocks cross two epoch boundaries.
    let chain = RpcChain::start(20, limits).await;
    let mut http = chain.http().await;
    let head = chain.head();

    let set0 = http.result("lux_getValidatorSet", json!(["0x0"])).await;
    assert_eq!(set0["validators"].as_array().unwrap().len(), 4);
    assert_eq!(
        set0["hash"],
        format!("{}", stored_block(&chain, 1).header.validator_set_hash)
    );
    let decoded = ValidatorSet::decode(&hex_bytes(&set0["rlp"])).unwrap();
    assert_eq!(
        decoded.hash(),
        stored_block(&chain, 1).header.validator_set_hash
    );
    assert_eq!(
        http.result("lux_getValidatorSet", json!([1000])).await,
        Value::Null
    );

    // The head has no QC yet: `latest` is the highest certified block, and its QC verifies.
    let certified = http
        .result("lux_getCertifiedHeader", json!(["latest"]))
        .await;
    assert_eq!(hex_u64(&certified["header"]["number"]), head - 1);
    let decoded = CertifiedHeader::decode(&hex_bytes(&certified["rlp"])).unwrap();
    assert_eq!(decoded.qc.block_hash, decoded.header.hash());
    let set = chain
        .chain
        .write()
        .unwrap()
        .validator_set(decoded.header.epoch)
        .unwrap();
    decoded.qc.verify(&set, chain.spec.chain_id).unwrap();
    assert_eq!(
        http.result("lux_getCertifiedHeader", json!([format!("{:#x}", head)]))
            .await,
        Value::Null
    );

    // Epoch hand-overs: each verifies with set(e) and carries set(e+1).
    let updates = http.result("lux_getEpochUpdates", json!([0, 4])).await;
    let updates = updates.as_array().unwrap();
    assert_eq!(updates.len(), 2, "epochs 0 and 1 have ended");
    for (e, update) in updates.iter().enumerate() {
        let decoded = EpochUpdate::decode(&hex_bytes(&update["rlp"])).unwrap();
        assert_eq!(decoded.epoch(), e as u64);
        let set_e = chain
            .chain
            .write()
            .unwrap()
            .validator_set(e as u64)
            .unwrap();
        decoded
            .header
            .qc
            .verify(&set_e, chain.spec.chain_id)
            .unwrap();
        let set_next = chain
            .chain
            .write()
            .unwrap()
            .validator_set(e as u64 + 1)
            .unwrap();
        assert_eq!(
            decoded.header.header.next_validator_set_hash,
            set_next.hash()
        );
        assert!(
            update.get("nextValidatorSet").is_none(),
            "compact by default: {update}"
        );
    }
    // The readable views on request.
    let verbose = http
        .result("lux_getEpochUpdates", json!([0, 1, true]))
        .await;
    let set_1 = chain.chain.write().unwrap().validator_set(1).unwrap();
    assert_eq!(
        verbose[0]["nextValidatorSet"]["hash"],
        format!("{}", set_1.hash())
    );
    assert_eq!(verbose[0]["rlp"], updates[0]["rlp"]);
    let (code, _) = http
        .error("lux_getEpochUpdates", json!([0, 1, "yes"]))
        .await;
    assert_eq!(code, -32602);
    let (code, _) = http.error("lux_getEpochUpdates", json!([0, 5])).await;
    assert_eq!(code, -32005, "bounded count per call");

    let raw = http.result("lux_getRawBlock", json!(["0x3"])).await;
    assert_eq!(
        Block::decode(&hex_bytes(&raw)).unwrap(),
        stored_block(&chain, 3)
    );
    let raw = http.result("lux_getRawHeader", json!(["0x3"])).await;
    assert_eq!(
        SignedHeader::decode(&hex_bytes(&raw)).unwrap(),
        stored_block(&chain, 3).header
    );

    let contract = http.result("lux_stakingContract", json!([])).await;
    assert_eq!(contract["address"], format!("{STAKING_ADDRESS:#x}"));
    let abi = contract["abi"].as_array().unwrap();
    let stake = abi.iter().find(|i| i["name"] == "stake").unwrap();
    let signature = format!(
        "stake({})",
        stake["inputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["type"].as_str().unwrap())
            .collect::<Vec<_>>()
            .join(",")
    );
    assert_eq!(keccak256(signature)[..4], IStaking::stakeCall::SELECTOR);
    let event = abi.iter().find(|i| i["name"] == "StakeRequested").unwrap();
    assert_eq!(event["inputs"][0]["indexed"], true);

    let stats = http.result("lux_rotationStats", json!([])).await;
    assert_eq!(
        hex_u64(&stats["currentEpoch"]),
        chain.chain.read().unwrap().head().epoch
    );
    assert_eq!(
        hex_u64(&stats["epochLength"]),
        chain.spec.rotation.epoch_length
    );

    // Evidence: validator 0 voted twice in one slot.
    let v = luxtensor_tests::Validators::devnet(4);
    let first = v.vote(0, 3, B256::repeat_byte(1));
    let second = v.vote(0, 3, B256::repeat_byte(2));
    let evidence = Evidence::DoubleVote(Box::new(DoubleVote {
        epoch: 0,
        first: first.clone(),
        second,
    }));
    let hex = format!(
        "0x{}",
        alloy_primitives::hex::encode(alloy_rlp::encode(&evidence))
    );
    let accepted = http.result("lux_submitEvidence", json!([hex])).await;
    assert_eq!(
        accepted["offender"],
        format!("{:#x}", devnet_validator_owner(0))
    );
    assert_eq!(chain.node.evidence.lock().unwrap().len(), 1);
    let no_conflict = Evidence::DoubleVote(Box::new(DoubleVote {
        epoch: 0,
        first: first.clone(),
        second: first,
    }));
    let hex = format!(
        "0x{}",
        alloy_primitives::hex::encode(alloy_rlp::encode(&no_conflict))
    );
    let (code, message) = http.error("lux_submitEvidence", json!([hex])).await;
    assert_eq!(code, -32000);
    assert!(message.contains("invalid evidence"), "{message}");
    let (code, _) = http.error("lux_submitEvidence", json!(["0xc0"])).await;
    assert_eq!(code, -32602);
    assert_eq!(chain.node.evidence.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framing_errors_and_batches_follow_geth() {
    let chain = RpcChain::start(2, RpcLimits::default()).await;
    let mut http = chain.http().await;

    let parse = http.post(b"{\"jsonrpc\":\"2.0\",").await;
    assert_eq!(parse.status, 200, "JSON-RPC errors travel with HTTP 200");
    let parse = parse.json();
    assert_eq!((error_of(&parse).0, &parse["id"]), (-32700, &Value::Null));
    let utf8 = http
        .post(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"\xff\xfe\"}")
        .await
        .json();
    assert_eq!(error_of(&utf8).0, -32700);
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(error_of(&http.post(deep.as_bytes()).await.json()).0, -32700);

    let empty = http.post(b"[]").await.json();
    assert_eq!(error_of(&empty), (-32600, "empty batch".to_string()));
    assert_eq!(empty["id"], Value::Null);
    assert!(empty.is_object(), "an empty batch gets one object");

    let not_request = http.post(b"42").await.json();
    assert_eq!(error_of(&not_request).0, -32600);
    let no_method = http.post_json(&json!({"jsonrpc": "2.0", "id": 7})).await;
    assert_eq!(
        (error_of(&no_method).0, &no_method["id"]),
        (-32600, &json!(7))
    );
    let wrong_version = http
        .post_json(&json!({"jsonrpc": "1.0", "id": "x", "method": "eth_chainId"}))
        .await;
    assert_eq!(
        (error_of(&wrong_version).0, &wrong_version["id"]),
        (-32600, &json!("x"))
    );

    let (code, message) = http.error("eth_nope", json!([])).await;
    assert_eq!(
        (code, message.as_str()),
        (
            -32601,
            "the method eth_nope does not exist/is not available"
        )
    );
    let (code, message) = http
        .error("eth_getBlockByNumber", json!(["0x1", "yes"]))
        .await;
    assert_eq!(code, -32602);
    assert!(message.starts_with("invalid argument 1"), "{message}");
    let (code, message) = http.error("eth_getBlockByNumber", json!(["0x1"])).await;
    assert_eq!(
        (code, message.as_str()),
        (-32602, "missing value for required argument 1")
    );
    let (code, _) = http.error("eth_blockNumber", json!([1])).await;
    assert_eq!(code, -32602, "too many arguments");
    let (code, _) = http
        .error("eth_getBalance", json!({"address": "0x00"}))
        .await;
    assert_eq!(code, -32602, "non-array params");
    let (code, message) = http.error("eth_subscribe", json!(["newHeads"])).await;
    assert_eq!(
        (code, message.as_str()),
        (-32601, "notifications not supported")
    );

    // A string id, a null id, an invalid item and a notification, in order.
    let batch = json!([
        {"jsonrpc": "2.0", "id": "a", "method": "eth_chainId"},
        {"jsonrpc": "2.0", "method": "eth_chainId"},
        {"jsonrpc": "2.0", "id": null, "method": "eth_blockNumber"},
        {"id": 3},
        {"jsonrpc": "2.0", "id": 4, "method": "eth_nope"},
    ]);
    let answers = http.post_json(&batch).await;
    let answers = answers.as_array().unwrap();
    assert_eq!(answers.len(), 4, "the notification gets no answer");
    assert_eq!(
        answers[0],
        json!({"jsonrpc": "2.0", "id": "a", "result": "0x7a69"})
    );
    assert_eq!(answers[1]["id"], Value::Null);
    assert_eq!(hex_u64(&answers[1]["result"]), 2);
    assert_eq!(error_of(&answers[2]).0, -32600);
    assert_eq!(
        (error_of(&answers[3]).0, &answers[3]["id"]),
        (-32601, &json!(4))
    );
    let notifications = http
        .post(br#"[{"jsonrpc":"2.0","method":"eth_chainId"}]"#)
        .await;
    assert_eq!((notifications.status, notifications.body.len()), (200, 0));

    let big: Vec<Value> = (0..10_000)
        .map(|i| json!({"jsonrpc": "2.0", "id": i, "method": "eth_blockNumber"}))
        .collect();
    let too_big = http.post_json(&Value::Array(big.clone())).await;
    assert_eq!(error_of(&too_big).0, -32600);
    assert!(error_of(&too_big).1.starts_with("batch too large"));
    assert_eq!(
        too_big["id"],
        json!(0),
        "geth answers with the first call's id"
    );
    let full = http.post_json(&Value::Array(big[..1000].to_vec())).await;
    assert_eq!(full.as_array().unwrap().len(), 1000);
    assert_eq!(
        full[999]["id"],
        json!(999),
        "batch answers keep request order"
    );

    // Transport: a body over 5 MiB gets 413; a wrong content type 415; PUT 405; GET 200.
    let huge = vec![b' '; 5 * 1024 * 1024 + 1];
    let mut other = chain.http().await;
    let response = other
        .request("POST", Some("application/json"), &huge)
        .await
        .unwrap();
    assert_eq!(response.status, 413);
    let response = http
        .request("POST", Some("text/plain"), b"{}")
        .await
        .unwrap();
    assert_eq!(response.status, 415);
    let response = http
        .request("PUT", Some("application/json"), b"{}")
        .await
        .unwrap();
    assert_eq!(response.status, 405);
    let response = http.request("GET", None, b"").await.unwrap();
    assert_eq!(response.status, 200);
    // After all of that the server still answers.
    assert_eq!(http.result("eth_chainId", json!([])).await, "0x7a69");
    let mut fresh = chain.http().await;
    assert_eq!(fresh.result("eth_chainId", json!([])).await, "0x7a69");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_limit_get_503_until_one_closes() {
    let limits = RpcLimits {
        max_connections: 2,
        ..Default::default()
    };
    let chain = RpcChain::start(1, limits).await;
    let mut first = chain.http().await;
    let mut second = chain.http().await;
    assert_eq!(first.result("eth_chainId", json!([])).await, "0x7a69");
    assert_eq!(second.result("eth_chainId", json!([])).await, "0x7a69");
    let mut third = chain.http().await;
    let refused = third
        .request("POST", Some("application/json"), b"{}")
        .await
        .unwrap();
    assert_eq!(refused.status, 503);
    assert_eq!(
        String::from_utf8_lossy(&refused.body),
        "too many connections\n"
    );
    drop(first);
    // The slot is released when the server notices the close; poll until it does.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut retry = chain.http().await;
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"eth_chainId"}"#;
        let response = retry
            .request("POST", Some("application/json"), body)
            .await
            .unwrap();
        if response.status == 200 {
            assert_eq!(response.json()["result"], "0x7a69");
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the slot was never released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(second.result("eth_chainId", json!([])).await, "0x7a69");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_heads_and_logs_arrive_in_order_with_removed_logs_on_reorg() {
    let chain = RpcChain::start(2, RpcLimits::default()).await;
    let mut chain = chain;
    // Both the WebSocket port and an upgrade on the HTTP port serve subscriptions.
    let mut ws = chain.ws().await;
    let mut upgraded = WsClient::connect(chain.handle.http_addr).await;
    let heads = ws.subscribe(json!(["newHeads"])).await;
    assert!(heads.starts_with("0x") && heads.len() <= 34, "{heads}");
    let staking_logs = ws
        .subscribe(json!(["logs", {"address": format!("{STAKING_ADDRESS:#x}"),
            "topics": [format!("{}", IStaking::StakeRequested::SIGNATURE_HASH)]}]))
        .await;
    let other_logs = ws
        .subscribe(json!(["logs", {"address": format!("{:#x}", Address::repeat_byte(9))}]))
        .await;
    let upgraded_heads = upgraded.subscribe(json!(["newHeads"])).await;

    let mut blocks = Vec::new();
    for i in 0..3 {
        let tx = match i {
            1 => chain.stake_transaction(),
            _ => chain.transfer_transaction(),
        };
        blocks.push(chain.import_and_broadcast(vec![tx]));
    }
    for block in &blocks {
        let (id, header) = ws.notification().await;
        assert_eq!(id, heads);
        assert_eq!(header["hash"], format!("{}", block.hash()));
        assert_eq!(hex_u64(&header["number"]), block.header.number);
        assert_eq!(hex_u64(&header["slot"]), block.header.slot);
        assert!(
            header.get("transactions").is_none(),
            "newHeads carries a header, not a block"
        );
        if block.header.number == blocks[1].header.number {
            let (id, log) = ws.notification().await;
            assert_eq!(id, staking_logs, "only the matching logs subscription");
            assert_eq!(log["blockHash"], format!("{}", block.hash()));
            assert_eq!(log["removed"], false);
        }
        let (id, header) = upgraded.notification().await;
        assert_eq!(
            (id.as_str(), &header["hash"]),
            (upgraded_heads.as_str(), &json!(format!("{}", block.hash())))
        );
    }
    let _ = other_logs;

    // A reorg drops block 2 of the three: its logs come again with removed = true.
    let event = chain.event(&blocks[1]);
    let BroadcastEvent::NewBlock(dropped) = event else {
        unreachable!()
    };
    chain
        .handle
        .broadcaster
        .send(BroadcastEvent::RemovedBlocks(vec![dropped]))
        .unwrap();
    let (id, log) = ws.notification().await;
    assert_eq!(
        (id.as_str(), &log["removed"]),
        (staking_logs.as_str(), &json!(true))
    );
    assert_eq!(ws.buffered(), 0);

    // Unsubscribe answers true once, then geth's error; notifications stop at once.
    assert_eq!(
        ws.call("eth_unsubscribe", json!([heads])).await["result"],
        true
    );
    let again = ws.call("eth_unsubscribe", json!([heads])).await;
    assert_eq!(
        error_of(&again),
        (-32000, "subscription not found".to_string())
    );
    chain.import_and_broadcast(vec![chain.transfer_transaction()]);
    let (id, _) = upgraded.notification().await; // the event has been dispatched
    assert_eq!(id, upgraded_heads);
    let answer = ws.call("eth_chainId", json!([])).await;
    assert_eq!(answer["result"], "0x7a69");
    assert_eq!(ws.buffered(), 0, "no notification after unsubscribing");

    let unknown = ws.call("eth_subscribe", json!(["foo"])).await;
    assert_eq!(
        error_of(&unknown),
        (
            -32601,
            "no \"foo\" subscription in eth namespace".to_string()
        )
    );
    let pending_logs = ws
        .call("eth_subscribe", json!(["logs", {"fromBlock": "pending"}]))
        .await;
    assert_eq!(
        error_of(&pending_logs),
        (-32602, "pending logs are not supported".to_string())
    );
    let not_string = ws.call("eth_subscribe", json!([7])).await;
    assert_eq!(error_of(&not_string).0, -32602);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_transactions_and_syncing_subscriptions() {
    let limits = RpcLimits {
        max_subscriptions_per_connection: 4,
        ..Default::default()
    };
    let chain = RpcChain::start(1, limits).await;
    let mut ws = chain.ws().await;
    let hashes = ws.subscribe(json!(["newPendingTransactions"])).await;
    let full = ws.subscribe(json!(["newPendingTransactions", true])).await;
    let syncing = ws.subscribe(json!(["syncing"])).await;
    let (id, status) = ws.notification().await;
    assert_eq!(
        (id.as_str(), &status),
        (syncing.as_str(), &json!({"syncing": false})),
        "caught up: syncing false at once"
    );

    let tx = chain.transfer_transaction();
    chain
        .handle
        .broadcaster
        .send(BroadcastEvent::NewTransaction(tx.clone()))
        .unwrap();
    let mut got = [ws.notification().await, ws.notification().await];
    got.sort_by_key(|(id, _)| (id != &hashes) as u8);
    assert_eq!(got[0], (hashes.clone(), json!(format!("{}", tx.hash()))));
    assert_eq!(got[1].0, full);
    assert_eq!(got[1].1["hash"], format!("{}", tx.hash()));
    assert_eq!(got[1].1["from"], format!("{:#x}", DEV_ACCOUNTS[0]));
    assert_eq!(got[1].1["blockNumber"], Value::Null);

    *chain.node.sync.lock().unwrap() = Some(SyncProgress {
        starting: 1,
        current: 40,
        highest: 100,
    });
    chain
        .handle
        .broadcaster
        .send(BroadcastEvent::SyncStatus { syncing: true })
        .unwrap();
    let (id, status) = ws.notification().await;
    assert_eq!(id, syncing);
    assert_eq!(status["syncing"], true);
    assert_eq!(status["status"]["HighestBlock"], 100);
    *chain.node.sync.lock().unwrap() = None;
    chain
        .handle
        .broadcaster
        .send(BroadcastEvent::SyncStatus { syncing: false })
        .unwrap();
    assert_eq!(
        ws.notification().await,
        (syncing, json!({"syncing": false}))
    );

    // The per-connection subscription limit.
    let fourth = ws.subscribe(json!(["newHeads"])).await;
    assert!(fourth.starts_with("0x"));
    let fifth = ws.call("eth_subscribe", json!(["newHeads"])).await;
    assert_eq!(error_of(&fifth).0, -32005);
    // A batch over WebSocket answers in order too.
    ws.send_text(r#"[{"jsonrpc":"2.0","id":1,"method":"eth_chainId"},{"jsonrpc":"2.0","id":2,"method":"net_version"}]"#)
        .await;
    let batch = ws.next_message().await.unwrap();
    assert_eq!(batch[0]["result"], "0x7a69");
    assert_eq!(batch[1]["result"], "31337");
    // Inconsistent events are refused.
    let block = stored_block(&chain, 1);
    assert!(
        chain
            .handle
            .broadcaster
            .send(BroadcastEvent::new_block(block, vec![]))
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_disconnected_and_others_keep_up() {
    let limits = RpcLimits {
        ws_send_queue: 64,
        ..Default::default()
    };
    let mut chain = RpcChain::start(1, limits).await;
    let mut slow = chain.ws().await;
    for _ in 0..50 {
        slow.subscribe(json!(["newHeads"])).await;
    }
    let mut fast = chain.ws().await;
    let fast_id = fast.subscribe(json!(["newHeads"])).await;
    let block = chain.import(vec![]);
    let event = chain.event(&block);
    // Each event is 50 headers for the slow client, which reads nothing.
    let mut disconnected = false;
    for i in 0..2_000 {
        chain.handle.broadcaster.send(event.clone()).unwrap();
        let (id, header) = fast.notification().await;
        assert_eq!(
            (id.as_str(), &header["hash"]),
            (fast_id.as_str(), &json!(format!("{}", block.hash())))
        );
        if i % 20 == 19 {
            let m = metrics_text(&chain).await;
            if m.contains("luxtensor_rpc_slow_clients_disconnected_total 1") {
                disconnected = true;
                break;
            }
        }
    }
    assert!(disconnected, "the slow client was never disconnected");
    // The slow client finds its connection closed once it drains what was sent.
    let mut closed = false;
    for _ in 0..1_000_000 {
        if slow.next_message().await.is_none() {
            closed = true;
            break;
        }
    }
    assert!(closed);
    assert_eq!(
        fast.call("eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
}

async fn metrics_text(chain: &RpcChain) -> String {
    let (status, text) = get(chain.handle.metrics_addr.unwrap(), "/metrics").await;
    assert_eq!(status, 200);
    text
}

/// A one-off `GET path` (the metrics server's paths).
async fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut out))
        .await
        .expect("metrics answer in time")
        .unwrap();
    let text = String::from_utf8_lossy(&out).to_string();
    let status = text.split(' ').nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_websocket_messages_close_only_that_connection() {
    let limits = RpcLimits {
        max_ws_message_bytes: 4096,
        ..Default::default()
    };
    let chain = RpcChain::start(1, limits).await;
    let mut big = chain.ws().await;
    let mut other = chain.ws().await;
    big.send_text(&format!(
        r#"{{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":["{}"]}}"#,
        "a".repeat(8192)
    ))
    .await;
    assert!(
        big.next_message().await.is_none(),
        "the connection is closed"
    );
    assert_eq!(
        other.call("eth_chainId", json!([])).await["result"],
        "0x7a69"
    );
    // Malformed JSON over WebSocket gets a parse error and the connection stays.
    other.send_text("{nope").await;
    let parse = other.next_message().await.unwrap();
    assert_eq!(error_of(&parse).0, -32700);
    assert_eq!(
        other.call("net_version", json!([])).await["result"],
        "31337"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn polling_filters_collect_between_polls_and_expire() {
    let limits = RpcLimits {
        max_filters: 4,
        filter_timeout: Duration::from_millis(400),
        ..Default::default()
    };
    let mut chain = RpcChain::start(2, limits).await;
    let mut http = chain.http().await;
    let blocks_filter = http.result("eth_newBlockFilter", json!([])).await;
    let pending_filter = http
        .result("eth_newPendingTransactionFilter", json!([]))
        .await;
    let logs_filter = http
        .result(
            "eth_newFilter",
            json!([{"fromBlock": "earliest", "address": format!("{STAKING_ADDRESS:#x}")}]),
        )
        .await;
    // Probe subscription: events are dispatched in order, so once its
    // notification arrives the filters have seen the event too.
    let mut probe = chain.ws().await;
    probe.subscribe(json!(["newHeads"])).await;
    let first = chain.import_and_broadcast(vec![chain.transfer_transaction()]);
    let stake = chain.stake_transaction();
    let second = chain.import_and_broadcast(vec![stake]);
    probe.notification().await;
    probe.notification().await;
    let tx = chain.transfer_transaction();
    chain
        .handle
        .broadcaster
        .send(BroadcastEvent::NewTransaction(tx.clone()))
        .unwrap();
    chain.import_and_broadcast(vec![]);
    probe.notification().await;

    let changes = http
        .result("eth_getFilterChanges", json!([blocks_filter]))
        .await;
    let hashes: Vec<_> = changes
        .as_array()
        .unwrap()
        .iter()
        .take(2)
        .cloned()
        .collect();
    assert_eq!(
        hashes,
        vec![
            json!(format!("{}", first.hash())),
            json!(format!("{}", second.hash()))
        ]
    );
    assert_eq!(
        http.result("eth_getFilterChanges", json!([blocks_filter]))
            .await,
        json!([])
    );
    assert_eq!(
        http.result("eth_getFilterChanges", json!([pending_filter]))
            .await,
        json!([format!("{}", tx.hash())])
    );
    let logs = http
        .result("eth_getFilterChanges", json!([logs_filter]))
        .await;
    assert_eq!(logs.as_array().unwrap().len(), 1, "the new stake log only");
    assert_eq!(logs[0]["blockHash"], format!("{}", second.hash()));
    let all = http.result("eth_getFilterLogs", json!([logs_filter])).await;
    assert_eq!(
        all.as_array().unwrap().len(),
        2,
        "the stake logs of blocks 1 and 4"
    );

    assert_eq!(
        http.result("eth_uninstallFilter", json!([pending_filter]))
            .await,
        true
    );
    assert_eq!(
        http.result("eth_uninstallFilter", json!([pending_filter]))
            .await,
        false
    );
    let (code, message) = http
        .error("eth_getFilterChanges", json!([pending_filter]))
        .await;
    assert_eq!((code, message.as_str()), (-32000, "filter not found"));

    // Bounded: 4 filters at most.
    http.result("eth_newBlockFilter", json!([])).await;
    http.result("eth_newBlockFilter", json!([])).await;
    let (code, _) = http.error("eth_newBlockFilter", json!([])).await;
    assert_eq!(code, -32005);

    // Idle filters expire (the one polled just now too, after the timeout).
    tokio::time::sleep(Duration::from_millis(900)).await;
    let (code, _) = http
        .error("eth_getFilterChanges", json!([blocks_filter]))
        .await;
    assert_eq!(code, -32000);
    http.result("eth_newBlockFilter", json!([])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_on_their_own_address() {
    let chain = RpcChain::start(3, RpcLimits::default()).await;
    let mut http = chain.http().await;
    for _ in 0..3 {
        http.result("eth_blockNumber", json!([])).await;
    }
    http.error("eth_nope", json!([])).await;
    http.error("eth_getBlockByNumber", json!([])).await;
    let mut ws = chain.ws().await;
    ws.subscribe(json!(["newHeads"])).await;
    let metrics = chain.handle.metrics_addr.unwrap();
    let (status, text) = get(metrics, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        text.contains("luxtensor_rpc_requests_total{method=\"eth_blockNumber\",outcome=\"ok\"} 3"),
        "{text}"
    );
    assert!(text.contains("luxtensor_rpc_requests_total{method=\"other\",outcome=\"error\"} 1"));
    assert!(text.contains(
        "luxtensor_rpc_requests_total{method=\"eth_getBlockByNumber\",outcome=\"error\"} 1"
    ));
    assert!(text.contains(
        "luxtensor_rpc_request_duration_seconds_bucket{method=\"eth_blockNumber\",le=\"+Inf\"} 3"
    ));
    assert!(text.contains("luxtensor_head_block 3"));
    assert!(text.contains("luxtensor_finalized_block 3"));
    assert!(text.contains("luxtensor_peers 3"));
    assert!(text.contains("luxtensor_rpc_subscriptions 1"));
    assert!(text.contains("luxtensor_rpc_websocket_connections 1"));
    assert!(text.contains("luxtensor_syncing 0"));
    let (status, health) = get(metrics, "/health").await;
    assert_eq!(status, 200);
    let health: Value = serde_json::from_str(&health).unwrap();
    assert_eq!(
        (health["status"].as_str(), health["head"].as_u64()),
        (Some("ok"), Some(3))
    );
    *chain.node.sync.lock().unwrap() = Some(SyncProgress {
        starting: 0,
        current: 3,
        highest: 9,
    });
    assert_eq!(
        get(metrics, "/health").await.0,
        503,
        "a syncing node is not ready"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_websocket_server_api_serves_subscriptions() {
    let mut chain = RpcChain::start(1, RpcLimits::default()).await;
    let server = WebSocketServer::new(chain.state.clone());
    let broadcaster = server.get_broadcast_sender();
    let port = luxtensor_full::node::devnet::free_port().unwrap();
    let addr = format!("127.0.0.1:{port}");
    let task = tokio::spawn({
        let addr = addr.clone();
        async move { server.start(&addr).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let stream = loop {
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(s) => break s,
            Err(_) if tokio::time::Instant::now() < deadline => tokio::task::yield_now().await,
            Err(e) => panic!("server never listened: {e}"),
        }
    };
    drop(stream);
    let mut ws = WsClient::connect(addr.parse().unwrap()).await;
    let id = ws.subscribe(json!(["newHeads"])).await;
    let block = chain.import(vec![]);
    broadcaster.send(chain.event(&block)).unwrap();
    let (got, header) = ws.notification().await;
    assert_eq!(
        (got, header["hash"].clone()),
        (id, json!(format!("{}", block.hash())))
    );
    task.abort();
}

/// Slow-loris: a client that starts a request and never finishes its head
/// is disconnected after `header_read_timeout`, while another client is
/// served meanwhile (on the JSON-RPC port and on the WebSocket-only one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_request_head_is_disconnected() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let timeout = Duration::from_millis(300);
    let limits = RpcLimits {
        header_read_timeout: timeout,
        ..Default::default()
    };
    let chain = RpcChain::start(1, limits).await;
    let ports = [chain.handle.http_addr, chain.handle.ws_addr.unwrap()];
    let mut slow = Vec::new();
    for port in ports {
        let mut stream = tokio::net::TcpStream::connect(port).await.unwrap();
        stream
            .write_all(b"POST / HTTP/1.1\r\nHost: node\r\nContent-Type: applic")
            .await
            .unwrap();
        slow.push(stream);
    }
    let started = std::time::Instant::now();
    let mut http = chain.http().await;
    assert_eq!(http.result("eth_chainId", json!([])).await, "0x7a69");
    let mut ws = chain.ws().await;
    ws.subscribe(json!(["newHeads"])).await;
    for (stream, port) in slow.iter_mut().zip(ports) {
        let mut rest = Vec::new();
        let read =
            tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut rest)).await;
        assert!(
            matches!(read, Ok(Ok(_)) | Ok(Err(_))),
            "the slow client of {port} was not disconnected"
        );
    }
    assert!(
        started.elapsed() >= timeout - Duration::from_millis(50),
        "closed before the timeout"
    );
}
