//! The HTTP/1.1 upgrade to WebSocket (RFC 6455 section 4.2), on a request
//! served by hyper (directly or through axum): check it, answer `101`, and
//! take the connection's stream once hyper lets go of it.

use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode, header};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use sha1::{Digest, Sha1};

/// The upgraded connection: hyper's stream (with any bytes the client sent
/// after the request) as a tokio `AsyncRead + AsyncWrite`.
pub type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// Why a request is not a WebSocket upgrade this server accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// Only `GET` upgrades (HTTP/1.1).
    #[error("only GET upgrades to WebSocket")]
    NotGet,
    /// `Connection: upgrade` and `Upgrade: websocket` are required.
    #[error("`Connection: upgrade` and `Upgrade: websocket` are required")]
    NotAnUpgrade,
    /// Only `Sec-WebSocket-Version: 13` is spoken.
    #[error("only Sec-WebSocket-Version 13 is supported")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing.
    #[error("Sec-WebSocket-Key is missing")]
    MissingKey,
    /// `Sec-WebSocket-Key` is not the base64 of 16 bytes (RFC 6455 section 4.1).
    #[error("Sec-WebSocket-Key is not the base64 of 16 bytes")]
    BadKey,
    /// The server cannot hand over this connection (not HTTP/1.1).
    #[error("this connection cannot be upgraded (HTTP/1.1 only)")]
    NotUpgradable,
}

/// An accepted upgrade: once its `101` response is sent, await
/// [`Upgrading::stream`].
#[derive(Debug)]
pub struct Upgrading(OnUpgrade);

impl Upgrading {
    /// The connection's stream once the `101` has been sent; `None` if the
    /// client went away first.
    pub async fn stream(self) -> Option<Upgraded> {
        self.0.await.ok().map(TokioIo::new)
    }
}

/// Checks that `request` asks for a WebSocket and takes its connection
/// over from hyper: the `101 Switching Protocols` response to send, and
/// the stream to come.
pub fn upgrade<B>(request: &mut Request<B>) -> Result<(Response<()>, Upgrading), Refused> {
    let accept = accept(request.method(), request.headers())?;
    let on_upgrade = request
        .extensions_mut()
        .remove::<OnUpgrade>()
        .ok_or(Refused::NotUpgradable)?;
    let mut response = Response::new(());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).expect("base64 is a valid header value"),
    );
    Ok((response, Upgrading(on_upgrade)))
}

/// The `Sec-WebSocket-Accept` value for a valid upgrade request.
pub fn accept(method: &Method, headers: &HeaderMap) -> Result<String, Refused> {
    if method != Method::GET {
        return Err(Refused::NotGet);
    }
    if !has_token(headers, header::CONNECTION, "upgrade")
        || !has_token(headers, header::UPGRADE, "websocket")
    {
        return Err(Refused::NotAnUpgrade);
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err(Refused::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or(Refused::MissingKey)?
        .as_bytes()
        .trim_ascii();
    // 16 bytes are 24 base64 characters, padding included.
    let nonce = (key.len() == 24)
        .then(|| data_encoding::BASE64.decode(key).ok())
        .flatten();
    if nonce.is_none_or(|nonce| nonce.len() != 16) {
        return Err(Refused::BadKey);
    }
    Ok(accept_key(key))
}

/// `base64(sha1(key + GUID))` (RFC 6455 section 4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
    let mut sha1 = Sha1::new();
    sha1.update(key);
    sha1.update(GUID);
    data_encoding::BASE64.encode(&sha1.finalize())
}

/// Whether a comma-separated header holds `token` (case-insensitive).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .as_bytes()
            .split(|&b| b == b',')
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs
            .iter()
            .map(|(k, v)| {
                (
                    header::HeaderName::from_static(k),
                    HeaderValue::from_static(v),
                )
            })
            .collect()
    }

    #[test]
    fn the_accept_key_is_the_rfc_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn upgrades_are_checked_like_browsers_send_them() {
        let good = headers(&[
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ]);
        assert_eq!(
            accept(&Method::GET, &good).as_deref(),
            Ok("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        assert_eq!(accept(&Method::POST, &good), Err(Refused::NotGet));
        let mut old = good.clone();
        old.insert(header::SEC_WEBSOCKET_VERSION, HeaderValue::from_static("8"));
        assert_eq!(accept(&Method::GET, &old), Err(Refused::UnsupportedVersion));
        let mut plain = good.clone();
        plain.remove(header::UPGRADE);
        assert_eq!(accept(&Method::GET, &plain), Err(Refused::NotAnUpgrade));
        let mut bad_key = good.clone();
        for key in [
            "",
            "c2hvcnQ=",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZQ=*",
            "dGhlIHNhbXBsZSBub25jZSE=",
        ] {
            bad_key.insert(header::SEC_WEBSOCKET_KEY, HeaderValue::from_static(key));
            assert_eq!(
                accept(&Method::GET, &bad_key),
                Err(Refused::BadKey),
                "{key:?}"
            );
        }
        let mut keyless = good;
        keyless.remove(header::SEC_WEBSOCKET_KEY);
        assert_eq!(accept(&Method::GET, &keyless), Err(Refused::MissingKey));
    }
}
