//! JSON-RPC 2.0 framing as geth does it: single calls and batches, ids
//! mirrored, notifications (no id) answered with nothing, geth's error codes
//! and messages, and the batch limit.
//!
//! | input | answer |
//! |---|---|
//! | not JSON, invalid UTF-8, nested deeper than 128 | `-32700 parse error`, id null |
//! | `[]` | `-32600 empty batch`, id null (one object, not an array) |
//! | more than `max_batch_len` calls | `-32600 batch too large`, id of the first call |
//! | not a request object (no method, wrong `jsonrpc`, bad id) | `-32600 invalid request` |
//! | unknown method | `-32601 the method X does not exist/is not available` |
//! | wrong arguments | `-32602` with the decoding error |

use super::RpcError;
use super::RpcState;
use super::subscriptions::ConnectionSubscriptions;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::time::Instant;

/// Longest method name accepted (geth's limit).
const MAX_METHOD_NAME: usize = 2048;

/// Serializes a result to JSON text.
pub(crate) fn json<T: Serialize + ?Sized>(value: &T) -> Result<String, RpcError> {
    serde_json::to_string(value)
        .map_err(|e| RpcError::Internal(format!("serializing the result: {e}")))
}

/// Positional parameters, with geth's messages for missing and bad ones.
pub(crate) struct Params<'a>(&'a [Value]);

impl<'a> Params<'a> {
    /// `params` must be an array, null or absent.
    pub fn new(params: &'a Value) -> Result<Self, RpcError> {
        match params {
            Value::Array(list) => Ok(Self(list)),
            Value::Null => Ok(Self(&[])),
            _ => Err(RpcError::InvalidParams("non-array args".into())),
        }
    }

    /// The raw value at `index`, if given and not null.
    pub fn get(&self, index: usize) -> Option<&'a Value> {
        self.0.get(index).filter(|v| !v.is_null())
    }

    /// A required argument.
    pub fn required<T: DeserializeOwned>(&self, index: usize) -> Result<T, RpcError> {
        match self.get(index) {
            Some(v) => T::deserialize(v)
                .map_err(|e| RpcError::InvalidParams(format!("invalid argument {index}: {e}"))),
            None => Err(RpcError::InvalidParams(format!(
                "missing value for required argument {index}"
            ))),
        }
    }

    /// An optional argument (absent or null: `None`).
    pub fn optional<T: DeserializeOwned>(&self, index: usize) -> Result<Option<T>, RpcError> {
        self.get(index)
            .map(|v| {
                T::deserialize(v)
                    .map_err(|e| RpcError::InvalidParams(format!("invalid argument {index}: {e}")))
            })
            .transpose()
    }

    /// Refuses more than `n` arguments.
    pub fn at_most(&self, n: usize) -> Result<(), RpcError> {
        match self.0.len() > n {
            true => Err(RpcError::InvalidParams(format!(
                "too many arguments, want at most {n}"
            ))),
            false => Ok(()),
        }
    }
}

/// One validated call of a message.
#[derive(Debug)]
pub(crate) struct Call {
    /// `None` for a notification (no reply).
    pub id: Option<Value>,
    pub method: String,
    pub params: Value,
}

/// A message element: a call, or an answer already decided (invalid request).
#[derive(Debug)]
pub(crate) enum Item {
    Call(Call),
    Invalid { id: Value, error: RpcError },
}

/// A parsed message.
#[derive(Debug)]
pub(crate) enum Message {
    Single(Item),
    Batch(Vec<Item>),
}

/// Parses a body. `Err` is the complete reply (parse error, empty or too large batch).
pub(crate) fn parse(body: &[u8], max_batch_len: usize) -> Result<Message, String> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| error_response(&Value::Null, &RpcError::SerializationError(e.to_string())))?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(error_response(
                    &Value::Null,
                    &RpcError::InvalidRequest("empty batch".into()),
                ));
            }
            if items.len() > max_batch_len {
                let id = items
                    .first()
                    .and_then(|i| i.get("id"))
                    .cloned()
                    .unwrap_or(Value::Null);
                return Err(error_response(
                    &id,
                    &RpcError::InvalidRequest(format!(
                        "batch too large: {} calls, the limit is {max_batch_len}",
                        items.len()
                    )),
                ));
            }
            Ok(Message::Batch(items.into_iter().map(item).collect()))
        }
        other => Ok(Message::Single(item(other))),
    }
}

fn item(value: Value) -> Item {
    let invalid = |id: Value, why: &str| Item::Invalid {
        id,
        error: RpcError::InvalidRequest(why.into()),
    };
    let Value::Object(mut map) = value else {
        return invalid(Value::Null, "invalid request");
    };
    let id = match map.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id),
        Some(_) => {
            return invalid(
                Value::Null,
                "invalid request: id must be a string, number or null",
            );
        }
    };
    let reply_id = id.clone().unwrap_or(Value::Null);
    if map.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(reply_id, "invalid request: \"jsonrpc\" must be \"2.0\"");
    }
    let method = match map.remove("method") {
        Some(Value::String(m)) if m.len() > MAX_METHOD_NAME => {
            return invalid(reply_id, "method name too long");
        }
        Some(Value::String(m)) => m,
        _ => return invalid(reply_id, "invalid request: missing method"),
    };
    let params = map.remove("params").unwrap_or(Value::Null);
    Item::Call(Call { id, method, params })
}

/// `{"jsonrpc":"2.0","id":..,"result":..}`.
pub(crate) fn result_response(id: &Value, result: &str) -> String {
    let id = serde_json::to_string(id).expect("ids serialize");
    let mut s = String::with_capacity(36 + id.len() + result.len());
    s.push_str(r#"{"jsonrpc":"2.0","id":"#);
    s.push_str(&id);
    s.push_str(r#","result":"#);
    s.push_str(result);
    s.push('}');
    s
}

/// `{"jsonrpc":"2.0","id":..,"error":{"code":..,"message":..}}`.
pub(crate) fn error_response(id: &Value, error: &RpcError) -> String {
    serde_json::json!({
        "jsonrpc": "2.0",
        "id": id,
        "error": { "code": error.code(), "message": error.to_string() },
    })
    .to_string()
}

/// Where a message came from: HTTP (no subscriptions) or a WebSocket
/// connection (with its subscriptions).
pub(crate) enum Transport<'a> {
    Http,
    WebSocket(&'a mut ConnectionSubscriptions),
}

/// What handling a message produced.
#[derive(Debug, Default)]
pub(crate) struct Reply {
    /// The response (`None` if every call was a notification).
    pub response: Option<String>,
    /// Notifications to send after the response (a `syncing` subscription's first status).
    pub after: Vec<String>,
}

/// Handles a whole message (blocking: reads the store). Batch answers keep
/// request order; notifications get no answer.
pub(crate) fn handle(state: &RpcState, body: &[u8], mut transport: Transport<'_>) -> Reply {
    let message = match parse(body, state.limits.max_batch_len) {
        Ok(m) => m,
        Err(reply) => {
            state
                .metrics
                .record_call("invalid", false, std::time::Duration::ZERO);
            return Reply {
                response: Some(reply),
                after: vec![],
            };
        }
    };
    let mut after = Vec::new();
    match message {
        Message::Single(item) => Reply {
            response: handle_item(state, item, &mut transport, &mut after),
            after,
        },
        Message::Batch(items) => {
            let answers: Vec<String> = items
                .into_iter()
                .filter_map(|i| handle_item(state, i, &mut transport, &mut after))
                .collect();
            let response = (!answers.is_empty()).then(|| {
                let mut s =
                    String::with_capacity(answers.iter().map(|a| a.len() + 1).sum::<usize>() + 2);
                s.push('[');
                for (i, a) in answers.iter().enumerate() {
                    if i > 0 {
                        s.push(',');
                    }
                    s.push_str(a);
                }
                s.push(']');
                s
            });
            Reply { response, after }
        }
    }
}

fn handle_item(
    state: &RpcState,
    item: Item,
    transport: &mut Transport<'_>,
    after: &mut Vec<String>,
) -> Option<String> {
    let call = match item {
        Item::Call(call) => call,
        Item::Invalid { id, error } => {
            state
                .metrics
                .record_call("invalid", false, std::time::Duration::ZERO);
            return Some(error_response(&id, &error));
        }
    };
    let started = Instant::now();
    let result = match (&call.method[..], &mut *transport) {
        ("eth_subscribe", Transport::WebSocket(subs)) => subs
            .subscribe(&call.params, &state.limits, current_sync(state))
            .and_then(|s| {
                after.extend(s.initial);
                json(&s.id)
            }),
        ("eth_unsubscribe", Transport::WebSocket(subs)) => {
            subs.unsubscribe(&call.params).and_then(|ok| json(&ok))
        }
        (method, _) => super::eth::call(state, method, &call.params),
    };
    state
        .metrics
        .record_call(&call.method, result.is_ok(), started.elapsed());
    let id = call.id?;
    Some(match result {
        Ok(result) => result_response(&id, &result),
        Err(error) => error_response(&id, &error),
    })
}

fn current_sync(state: &RpcState) -> Option<super::SyncProgress> {
    match state.broadcaster.is_syncing() {
        true => state.node.sync_status(),
        false => None,
    }
}
