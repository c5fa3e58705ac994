//! JSON-RPC 2.0 framing as the node (and geth) does it: single calls and
//! batches, ids mirrored, notifications answered with nothing, the node's
//! error codes, and the proxy's own two:
//!
//! | code | when |
//! |---|---|
//! | -32002 | no upstream could supply an answer that verifies (`resource unavailable`) |
//! | -32004 | strict mode: the method's answer cannot be verified (`method not supported`) |

use crate::transport::CallError;
use serde_json::Value;

/// Longest method name accepted (geth's limit).
const MAX_METHOD_NAME: usize = 2048;

/// A JSON-RPC error answer.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcFailure {
    /// The code.
    pub code: i64,
    /// The message.
    pub message: String,
    /// Optional data.
    pub data: Option<Value>,
}

impl RpcFailure {
    /// Any code and message.
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    /// -32602 invalid params.
    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(-32602, message)
    }

    /// -32601 method not found.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            -32601,
            format!("the method {method} does not exist/is not available"),
        )
    }

    /// -32002: no verified answer could be obtained.
    pub fn unavailable(message: String) -> Self {
        Self::new(-32002, message)
    }

    /// -32004: refused in strict mode.
    pub fn unverifiable(message: String) -> Self {
        Self::new(-32004, message)
    }

    /// An upstream's JSON-RPC error, passed on as is; transport failures become -32002.
    pub fn from_upstream(e: CallError) -> Self {
        match e {
            CallError::Rpc {
                code,
                message,
                data,
            } => Self {
                code,
                message,
                data,
            },
            other => Self::unavailable(other.to_string()),
        }
    }

    fn to_json(&self) -> Value {
        let mut error = serde_json::json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }
}

/// How far an answer was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trust {
    /// Checked against verified headers, or computed locally.
    Verified,
    /// Forwarded unchecked (relaxed mode): the response carries `"trust":"unverified"`.
    Unverified,
}

/// A successful answer: the result as JSON text and its trust level.
pub type Answer = Result<(std::sync::Arc<str>, Trust), RpcFailure>;

/// One request of a body, as parsed.
#[derive(Debug)]
pub enum Parsed {
    /// A call: its id (`None` for a notification), method and params.
    Call {
        /// The id as JSON text, `None` for a notification.
        id: Option<String>,
        /// The method.
        method: String,
        /// The params (array, object or null).
        params: Value,
    },
    /// Not a valid request: answered with this error and this id.
    Invalid {
        /// The id as JSON text (`null` when unknown).
        id: String,
        /// The error.
        error: RpcFailure,
    },
}

/// Reads one request object.
pub fn parse_call(value: Value) -> Parsed {
    let Value::Object(mut obj) = value else {
        return Parsed::Invalid {
            id: "null".into(),
            error: RpcFailure::new(-32600, "invalid request"),
        };
    };
    let id = match obj.remove("id") {
        None => None,
        Some(id @ (Value::Null | Value::Number(_) | Value::String(_))) => Some(id.to_string()),
        Some(_) => {
            return Parsed::Invalid {
                id: "null".into(),
                error: RpcFailure::new(-32600, "invalid request"),
            };
        }
    };
    let invalid = |id: &Option<String>, message: &str| Parsed::Invalid {
        id: id.clone().unwrap_or_else(|| "null".into()),
        error: RpcFailure::new(-32600, message),
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return invalid(&id, "invalid request");
    }
    let method = match obj.remove("method") {
        Some(Value::String(m)) => m,
        _ => return invalid(&id, "invalid request"),
    };
    if method.len() > MAX_METHOD_NAME {
        return invalid(&id, "method name too long");
    }
    Parsed::Call {
        id,
        method,
        params: obj.remove("params").unwrap_or(Value::Null),
    }
}

/// A response object as text.
/// How every answer to a single call starts; the id's JSON text follows.
pub const RESPONSE_PREFIX: &str = r#"{"jsonrpc":"2.0","id":"#;

/// Where the id's value is in a body that is one JSON object whose `"id"`
/// member is a plain id: an integer of at most 18 digits, or a string of
/// at most 64 characters without escapes. `None` for anything else (a
/// batch, no id, an escaped key, a second `"id"`, malformed JSON): such a
/// body is not answered by splicing its id into a kept response.
pub fn id_span(body: &[u8]) -> Option<std::ops::Range<usize>> {
    let mut scan = Scan { body, at: 0 };
    scan.expect(b'{')?;
    let mut found = None;
    loop {
        scan.expect(b'"')?;
        let key = scan.string_rest()?;
        scan.expect(b':')?;
        scan.skip_ws();
        let start = scan.at;
        scan.value()?;
        if key == b"id" {
            if found.is_some() {
                return None;
            }
            found = Some(start..scan.at);
        }
        scan.skip_ws();
        match scan.next()? {
            b',' => continue,
            b'}' => break,
            _ => return None,
        }
    }
    let span = found?;
    plain_id(&body[span.clone()]).then_some(span)
}

fn plain_id(id: &[u8]) -> bool {
    match id {
        [b'"', inner @ .., b'"'] => {
            inner.len() <= 64 && inner.iter().all(|&c| c >= 0x20 && c != b'"' && c != b'\\')
        }
        [b'0'] => true,
        [b'1'..=b'9', rest @ ..] => rest.len() < 18 && rest.iter().all(u8::is_ascii_digit),
        _ => false,
    }
}

/// A forward-only scanner over the top level of one JSON object (enough
/// to find its members' spans; values are skipped, not checked).
struct Scan<'a> {
    body: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn skip_ws(&mut self) {
        while self
            .body
            .get(self.at)
            .is_some_and(|c| b" \t\r\n".contains(c))
        {
            self.at += 1;
        }
    }

    fn next(&mut self) -> Option<u8> {
        let c = *self.body.get(self.at)?;
        self.at += 1;
        Some(c)
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        self.skip_ws();
        (self.next()? == want).then_some(())
    }

    /// The rest of a string after its opening quote; `None` if it has escapes.
    fn string_rest(&mut self) -> Option<&'a [u8]> {
        let start = self.at;
        loop {
            match self.next()? {
                b'"' => return Some(&self.body[start..self.at - 1]),
                b'\\' => return None,
                _ => {}
            }
        }
    }

    /// Skips one value: a string, an object or array (nesting counted,
    /// strings inside skipped), or a scalar up to the next delimiter.
    fn value(&mut self) -> Option<()> {
        let mut depth = 0usize;
        loop {
            match *self.body.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    loop {
                        match self.next()? {
                            b'"' => break,
                            b'\\' => {
                                self.next()?;
                            }
                            _ => {}
                        }
                    }
                }
                b'{' | b'[' => {
                    depth += 1;
                    self.at += 1;
                }
                b'}' | b']' if depth > 0 => {
                    depth -= 1;
                    self.at += 1;
                }
                b',' | b'}' | b']' | b' ' | b'\t' | b'\r' | b'\n' if depth == 0 => break,
                _ => self.at += 1,
            }
            if depth == 0 && matches!(self.body.get(self.at - 1), Some(b'"' | b'}' | b']')) {
                break;
            }
        }
        Some(())
    }
}

/// One call's answer as text.
pub fn response(id: &str, answer: &Answer) -> String {
    match answer {
        Ok((result, Trust::Verified)) => {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result}}}"#)
        }
        Ok((result, Trust::Unverified)) => {
            format!(r#"{{"jsonrpc":"2.0","id":{id},"result":{result},"trust":"unverified"}}"#)
        }
        Err(e) => format!(r#"{{"jsonrpc":"2.0","id":{id},"error":{}}}"#, e.to_json()),
    }
}

/// An error response as text.
pub fn error_response(id: &str, error: &RpcFailure) -> String {
    response(id, &Err(error.clone()))
}

/// Parses a body: one call or a batch. `Err` is the single error answer
/// for the whole body (parse error, empty or too large batch).
pub fn parse_body(body: &[u8], max_batch: usize) -> Result<(bool, Vec<Parsed>), String> {
    let value: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(_) => {
            return Err(error_response(
                "null",
                &RpcFailure::new(-32700, "parse error"),
            ));
        }
    };
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(error_response(
                    "null",
                    &RpcFailure::new(-32600, "empty batch"),
                ));
            }
            if items.len() > max_batch {
                let id = items
                    .first()
                    .and_then(|f| f.get("id"))
                    .map_or("null".to_string(), Value::to_string);
                return Err(error_response(
                    &id,
                    &RpcFailure::new(-32600, "batch too large"),
                ));
            }
            Ok((true, items.into_iter().map(parse_call).collect()))
        }
        other => Ok((false, vec![parse_call(other)])),
    }
}

/// Joins the answers of a body: one object, a batch array, or nothing.
pub fn join(batch: bool, answers: Vec<String>) -> Option<String> {
    if answers.is_empty() {
        return None;
    }
    if !batch {
        return answers.into_iter().next();
    }
    Some(format!("[{}]", answers.join(",")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_matches_geth() {
        assert!(parse_body(b"{", 10).unwrap_err().contains("-32700"));
        assert!(parse_body(b"[]", 10).unwrap_err().contains("empty batch"));
        let big = serde_json::json!([{"jsonrpc":"2.0","id":7,"method":"a"},{"jsonrpc":"2.0","id":8,"method":"a"}]);
        let e = parse_body(big.to_string().as_bytes(), 1).unwrap_err();
        assert!(e.contains("batch too large") && e.contains(r#""id":7"#));
        let (batch, calls) = parse_body(br#"{"jsonrpc":"2.0","method":"x"}"#, 10).unwrap();
        assert!(!batch);
        assert!(matches!(&calls[0], Parsed::Call { id: None, .. }));
        let (_, calls) = parse_body(br#"{"jsonrpc":"1.0","id":"a","method":"x"}"#, 10).unwrap();
        assert!(matches!(&calls[0], Parsed::Invalid { id, .. } if id == "\"a\""));
    }

    #[test]
    fn responses_mirror_ids_and_mark_trust() {
        let ok: Answer = Ok(("\"0x1\"".into(), Trust::Verified));
        assert_eq!(
            response("\"x\"", &ok),
            r#"{"jsonrpc":"2.0","id":"x","result":"0x1"}"#
        );
        let relaxed: Answer = Ok(("1".into(), Trust::Unverified));
        assert!(response("1", &relaxed).ends_with(r#","trust":"unverified"}"#));
        let v: Value = serde_json::from_str(&error_response(
            "null",
            &RpcFailure::unverifiable("no".into()),
        ))
        .unwrap();
        assert_eq!(v["error"]["code"], -32004);
        assert_eq!(join(true, vec!["1".into(), "2".into()]).unwrap(), "[1,2]");
        assert_eq!(join(true, vec![]), None);
    }

    #[test]
    fn the_id_span_is_found_only_for_plain_ids_of_one_object() {
        fn span(b: &str) -> Option<&str> {
            id_span(b.as_bytes()).map(|r| &b[r])
        }
        assert_eq!(
            span(r#"{"jsonrpc":"2.0","id":42,"method":"m"}"#),
            Some("42")
        );
        assert_eq!(
            span(r#" { "id" : "a-1" , "params":[{"id":1},"}"]} "#),
            Some(r#""a-1""#)
        );
        assert_eq!(
            span(r#"{"params":{"x":[1,{"id":2}]},"method":"m","id":0}"#),
            Some("0")
        );
        assert_eq!(span(r#"{"p":"a\"b,\"id\":3","id":5}"#), Some("5"));
        for body in [
            r#"[{"id":1}]"#,
            r#"{"method":"m"}"#,
            r#"{"id":1,"id":2}"#,
            r#"{"\u0069d":1}"#,
            r#"{"id":1.5}"#,
            r#"{"id":-1}"#,
            r#"{"id":null}"#,
            r#"{"id":"a\"b"}"#,
            r#"{"id":}"#,
            r#"{"id":1"#,
            r#"{"id":1 2}"#,
            "",
            "{",
        ] {
            assert_eq!(span(body), None, "{body}");
        }
    }

    /// Every truncation and every one-byte change of a few bodies: the
    /// scanner never panics, and a span it finds in valid JSON is the id
    /// serde reads.
    #[test]
    fn the_id_span_agrees_with_serde_on_mutated_bodies() {
        let bodies = [
            r#"{"jsonrpc":"2.0","id":12,"method":"eth_getBlockByHash","params":["0xab",false]}"#,
            r#" {"params":[{"a":"}]"},[]],"id":"q-1" ,"method":"m"}"#,
        ];
        let bytes = b"{}[]\",:\\ 0a9-.";
        for body in bodies {
            let mut variants: Vec<Vec<u8>> = (0..body.len())
                .map(|n| body.as_bytes()[..n].to_vec())
                .collect();
            for i in 0..body.len() {
                for &b in bytes {
                    let mut v = body.as_bytes().to_vec();
                    v[i] = b;
                    variants.push(v);
                }
            }
            for v in variants {
                let Some(span) = id_span(&v) else { continue };
                if let Ok(Value::Object(map)) = serde_json::from_slice::<Value>(&v) {
                    let id: Value = serde_json::from_slice(&v[span]).unwrap();
                    assert_eq!(map.get("id"), Some(&id), "{}", String::from_utf8_lossy(&v));
                }
            }
        }
    }

    #[test]
    fn an_answer_starts_with_the_prefix_and_its_id() {
        let text = response("\"x\"", &Ok(("1".into(), Trust::Verified)));
        assert!(
            text.starts_with(&format!("{RESPONSE_PREFIX}\"x\",")),
            "{text}"
        );
    }
}
