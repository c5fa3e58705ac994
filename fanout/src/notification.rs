//! An `eth_subscription` notification in the two pieces a frame is made
//! of: the subscription's prefix (built once, when the client subscribes)
//! and the event's tail (rendered once, for every subscriber).
//!
//! `prefix(id)` + `tail(result)` is
//! `{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"<id>","result":<result>}}`.

use bytes::Bytes;

/// The part of a subscription's notifications before the result.
pub fn prefix(id: &str) -> Bytes {
    Bytes::from(format!(
        r#"{{"jsonrpc":"2.0","method":"eth_subscription","params":{{"subscription":"{id}","result":"#
    ))
}

/// A result's JSON as the end of a notification: `<json>}}`.
pub fn tail(mut json: String) -> Bytes {
    json.push_str("}}");
    Bytes::from(json)
}

#[cfg(test)]
mod tests {
    #[test]
    fn prefix_and_tail_make_a_notification() {
        let mut text = super::prefix("0xab").to_vec();
        text.extend_from_slice(&super::tail(r#"{"number":"0x1"}"#.into()));
        assert_eq!(
            String::from_utf8(text).unwrap(),
            r#"{"jsonrpc":"2.0","method":"eth_subscription","params":{"subscription":"0xab","result":{"number":"0x1"}}}"#
        );
    }
}
