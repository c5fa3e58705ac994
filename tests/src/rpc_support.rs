//! RPC test fixtures: a real chain behind a real server, a minimal
//! keep-alive HTTP/1.1 client over raw TCP, and a WebSocket client
//! (tokio-tungstenite) that separates responses from notifications.
//! Every wait has a timeout.

use crate::Validators;
use crate::producer::Producer;
use crate::wallet::{dev_signer, staking_call, transfer};
use alloy_primitives::{Address, B256, U256};
use futures::{SinkExt, StreamExt};
use luxtensor_full::Importer;
use luxtensor_full::rpc::{
    self, BroadcastEvent, RpcConfig, RpcHandle, RpcLimits, RpcState, StaticNode,
};
use luxtensor_full::staking::{STAKING_ADDRESS, stake_calldata};
use luxtensor_light::chain_spec::{DEV_ACCOUNTS, TOKEN, devnet_validator_key};
use luxtensor_light::{Block, ChainSpec, SignedTransaction};
use serde_json::{Value, json};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// How long any single wait in these helpers may take.
pub const WAIT: Duration = Duration::from_secs(20);

/// A chain of finalized blocks in a temporary database, served over RPC.
pub struct RpcChain {
    /// The database directory (removed on drop).
    pub dir: tempfile::TempDir,
    /// The chain spec.
    pub spec: ChainSpec,
    /// Produces the next blocks.
    pub producer: Producer,
    /// The chain the server reads.
    pub chain: Arc<RwLock<Importer>>,
    /// The test node handle (records submitted transactions and evidence).
    pub node: Arc<StaticNode>,
    /// The server's state.
    pub state: RpcState,
    /// The running servers.
    pub handle: RpcHandle,
    /// Hash of the stake transaction in block 1 (emits `StakeRequested`).
    pub stake_tx: B256,
    /// Hashes of the transfers, one per block from block 2 on.
    pub transfers: Vec<B256>,
    /// Stake transactions made so far.
    stakes: u32,
}

impl RpcChain {
    /// `blocks` transactions in as many blocks (block 1 holds a stake call,
    /// the others one transfer each; the empty block after each epoch's
    /// ending block comes on top), served on 127.0.0.1 with `limits`.
    pub async fn start(blocks: usize, limits: RpcLimits) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut v = Validators::devnet(4);
        // Keys 4..=8 may be staked by the tests (and then propose).
        v.keys.extend((4..=8).map(devnet_validator_key));
        let spec = v.spec.clone();
        let producer = Producer::new(v);
        let importer = Importer::open(spec.clone(), dir.path().join("db")).expect("open db");
        let chain = Arc::new(RwLock::new(importer));
        let node = Arc::new(StaticNode {
            peers: 3,
            ..Default::default()
        });
        let state = RpcState::new(chain.clone(), node.clone(), limits);
        let config = RpcConfig {
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            ws_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
            metrics_next_free: false,
        };
        let handle = rpc::serve(config, state.clone()).await.expect("serve");
        let mut this = Self {
            dir,
            spec,
            producer,
            chain,
            node,
            state,
            handle,
            stake_tx: B256::ZERO,
            transfers: Vec::new(),
            stakes: 0,
        };
        for i in 0..blocks {
            let tx = match i {
                0 => this.stake_transaction(),
                _ => this.transfer_transaction(),
            };
            let hash = tx.hash();
            this.import_included(tx);
            match i {
                0 => this.stake_tx = hash,
                _ => this.transfers.push(hash),
            }
        }
        this
    }

    /// Imports `tx` in the next block that can carry transactions (the
    /// block after an epoch's ending block carries none; it is imported
    /// empty and the transaction goes into the one after).
    fn import_included(&mut self, tx: SignedTransaction) -> Block {
        for _ in 0..3 {
            let block = self.import(vec![tx.clone()]);
            if block.transactions.len() == 1 {
                return block;
            }
        }
        panic!("the producer never included the transaction");
    }

    /// A stake call for the next unused validator key (4, 5, ...), from
    /// development account 10, 11, ... Each call uses a new key and owner.
    pub fn stake_transaction(&mut self) -> SignedTransaction {
        let index = 4 + self.stakes;
        assert!(index <= 8, "the producer holds keys 4..=8 only");
        self.stakes += 1;
        let key = devnet_validator_key(index);
        let owner = 10 + self.stakes - 1;
        let calldata = stake_calldata(
            key.public_key().as_slice(),
            key.proof_of_possession(self.spec.chain_id).as_slice(),
        );
        let nonce = self
            .chain
            .read()
            .unwrap()
            .state()
            .account(&DEV_ACCOUNTS[owner as usize])
            .nonce;
        staking_call(
            &dev_signer(owner),
            self.spec.chain_id,
            nonce,
            STAKING_ADDRESS,
            TOKEN * U256::from(40),
            calldata,
        )
    }

    /// A 1-wei transfer from development account 0 to `0x0707..07`.
    pub fn transfer_transaction(&self) -> SignedTransaction {
        let nonce = self
            .chain
            .read()
            .unwrap()
            .state()
            .account(&DEV_ACCOUNTS[0])
            .nonce;
        transfer(
            &dev_signer(0),
            self.spec.chain_id,
            nonce,
            Address::repeat_byte(7),
            U256::from(1),
        )
    }

    /// Produces and imports the next block with `txs` (senders recovered).
    pub fn import(&mut self, txs: Vec<SignedTransaction>) -> Block {
        let txs = txs
            .into_iter()
            .map(|t| {
                let sender = t.recover_sender().expect("signed");
                (t, sender)
            })
            .collect();
        let block = self.producer.next_block(txs);
        self.chain.write().unwrap().import(&block).expect("import");
        block
    }

    /// The `NewBlock` event of a stored block (with its stored receipts).
    pub fn event(&self, block: &Block) -> BroadcastEvent {
        let receipts = self
            .chain
            .read()
            .unwrap()
            .store()
            .receipts(&block.hash())
            .unwrap()
            .unwrap();
        BroadcastEvent::new_block(block.clone(), receipts)
    }

    /// Produces, imports and broadcasts the next block.
    pub fn import_and_broadcast(&mut self, txs: Vec<SignedTransaction>) -> Block {
        let block = self.import(txs);
        self.handle
            .broadcaster
            .send(self.event(&block))
            .expect("broadcast");
        block
    }

    /// The head block number.
    pub fn head(&self) -> u64 {
        self.chain.read().unwrap().head().number
    }

    /// A keep-alive HTTP client to the JSON-RPC port.
    pub async fn http(&self) -> HttpClient {
        HttpClient::connect(self.handle.http_addr).await
    }

    /// A WebSocket client on the WebSocket-only port.
    pub async fn ws(&self) -> WsClient {
        WsClient::connect(self.handle.ws_addr.expect("ws port")).await
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A minimal HTTP/1.1 client with keep-alive.
pub struct HttpClient {
    addr: SocketAddr,
    stream: Option<BufReader<TcpStream>>,
    next_id: u64,
}

impl HttpClient {
    /// Connects to `addr`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = tokio::time::timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        stream.set_nodelay(true).unwrap();
        Self {
            addr,
            stream: Some(BufReader::new(stream)),
            next_id: 1,
        }
    }

    /// Sends one request and reads the response (reconnecting if the
    /// server closed the previous connection). The body is written while
    /// the response is read, so a server that answers early never deadlocks.
    pub async fn request(
        &mut self,
        method: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        let reused = self.stream.is_some();
        let result = self.request_once(method, content_type, body).await;
        // A kept-alive connection the server closed between two requests
        // (hyper may after an error answer) fails before any byte of the
        // answer; like every HTTP client, retry once on a fresh connection.
        match result {
            Err(e) if reused && e.kind() == std::io::ErrorKind::UnexpectedEof => {
                self.request_once(method, content_type, body).await
            }
            other => other,
        }
    }

    async fn request_once(
        &mut self,
        method: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<HttpResponse> {
        if self.stream.is_none() {
            *self = Self {
                next_id: self.next_id,
                ..Self::connect(self.addr).await
            };
        }
        let stream = self.stream.as_mut().expect("connected");
        let mut head = format!(
            "{method} / HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("content-type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        let result = tokio::time::timeout(WAIT, async {
            let (reader, writer) = tokio::io::split(stream);
            let mut reader = reader;
            let mut writer = writer;
            let write = async move {
                writer.write_all(head.as_bytes()).await?;
                writer.write_all(body).await?;
                writer.flush().await
            };
            let read = read_response(&mut reader);
            tokio::pin!(write, read);
            let mut written = false;
            loop {
                tokio::select! {
                    response = &mut read => return response,
                    _ = &mut write, if !written => written = true,
                }
            }
        })
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("HTTP request timed out")));
        match &result {
            Ok(r) if r.header("connection") != Some("close") => {}
            _ => self.stream = None,
        }
        result
    }

    /// POSTs a JSON body; returns the response.
    pub async fn post(&mut self, body: &[u8]) -> HttpResponse {
        self.request("POST", Some("application/json"), body)
            .await
            .expect("HTTP exchange")
    }

    /// POSTs a JSON value; returns the response body as JSON.
    pub async fn post_json(&mut self, value: &Value) -> Value {
        let response = self.post(value.to_string().as_bytes()).await;
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        response.json()
    }

    /// Calls `method`; returns the whole response object.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let response = self
            .post_json(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))
            .await;
        assert_eq!(response["id"], json!(id), "the id is mirrored: {response}");
        response
    }

    /// Calls `method` and returns its result, failing on an error.
    pub async fn result(&mut self, method: &str, params: Value) -> Value {
        let response = self.call(method, params).await;
        assert!(response.get("error").is_none(), "{method}: {response}");
        response["result"].clone()
    }

    /// Calls `method` expecting an error; returns (code, message).
    pub async fn error(&mut self, method: &str, params: Value) -> (i64, String) {
        let response = self.call(method, params).await;
        error_of(&response)
    }
}

/// (code, message) of an error response.
pub fn error_of(response: &Value) -> (i64, String) {
    let error = response
        .get("error")
        .unwrap_or_else(|| panic!("expected an error: {response}"));
    (
        error["code"].as_i64().expect("numeric code"),
        error["message"].as_str().expect("message").to_string(),
    )
}

async fn read_response<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut tokio::io::ReadHalf<R>,
) -> std::io::Result<HttpResponse> {
    // `reader` reads from a BufReader, so byte-wise reads are cheap.
    let head = read_until(reader, b"\r\n\r\n").await?;
    let head = String::from_utf8_lossy(&head).to_string();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other("bad status line"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let get = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let body = if let Some(len) = get("content-length") {
        let len: usize = len
            .parse()
            .map_err(|_| std::io::Error::other("bad length"))?;
        let mut body = vec![0; len];
        reader.read_exact(&mut body).await?;
        body
    } else if get("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        let mut body = Vec::new();
        loop {
            let line = read_until(reader, b"\r\n").await?;
            let size = usize::from_str_radix(String::from_utf8_lossy(&line).trim(), 16)
                .map_err(|_| std::io::Error::other("bad chunk size"))?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).await?;
            if size == 0 {
                break;
            }
            body.extend_from_slice(&chunk[..size]);
        }
        body
    } else {
        Vec::new()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

async fn read_until<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut R,
    end: &[u8],
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let mut byte = [0u8; 1];
        if reader.read(&mut byte).await? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed before the response",
            ));
        }
        out.push(byte[0]);
        if out.ends_with(end) {
            return Ok(out);
        }
        if out.len() > 64 * 1024 {
            return Err(std::io::Error::other("response head too long"));
        }
    }
}

/// A WebSocket JSON-RPC client.
pub struct WsClient {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>,
    next_id: u64,
    notifications: VecDeque<Value>,
}

impl WsClient {
    /// Connects to `ws://addr/`.
    pub async fn connect(addr: SocketAddr) -> Self {
        let (ws, _) = tokio::time::timeout(
            WAIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}/")),
        )
        .await
        .expect("WebSocket connect timed out")
        .expect("WebSocket connect");
        Self {
            ws,
            next_id: 1,
            notifications: VecDeque::new(),
        }
    }

    /// Sends raw text.
    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.to_string().into()))
            .await
            .expect("WebSocket send");
    }

    /// The next JSON message, or `None` if the connection closed.
    pub async fn next_message(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a WebSocket message");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Some(serde_json::from_str(&text).expect("server sends JSON"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
                Some(Ok(Message::Binary(_))) => panic!("the server sends text"),
                Some(Ok(Message::Close(_)) | Err(_)) | None => return None,
            }
        }
    }

    /// Calls `method`; returns the whole response (notifications that
    /// arrive first are kept for [`Self::notification`]).
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        let request = json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params});
        self.send_text(&request.to_string()).await;
        loop {
            let message = self.next_message().await.expect("connection open");
            if message.get("id") == Some(&json!(id)) {
                return message;
            }
            assert_eq!(
                message["method"], "eth_subscription",
                "unexpected: {message}"
            );
            self.notifications.push_back(message);
        }
    }

    /// Subscribes; returns the subscription id.
    pub async fn subscribe(&mut self, params: Value) -> String {
        let response = self.call("eth_subscribe", params).await;
        response["result"]
            .as_str()
            .unwrap_or_else(|| panic!("subscription id: {response}"))
            .to_string()
    }

    /// The next notification: `(subscription id, result)`.
    pub async fn notification(&mut self) -> (String, Value) {
        let message = match self.notifications.pop_front() {
            Some(m) => m,
            None => self.next_message().await.expect("connection open"),
        };
        assert_eq!(message["method"], "eth_subscription", "{message}");
        assert!(message.get("id").is_none(), "notifications have no id");
        (
            message["params"]["subscription"]
                .as_str()
                .unwrap()
                .to_string(),
            message["params"]["result"].clone(),
        )
    }

    /// Notifications already received but not yet taken.
    pub fn buffered(&self) -> usize {
        self.notifications.len()
    }
}
