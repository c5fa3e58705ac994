//! The response cache (sans-IO): verified results keyed by method and
//! canonicalised params, bounded by entries and by bytes.
//!
//! Each entry has a [`Scope`] that says when it stops being true:
//!
//! | scope | example | dropped when |
//! |---|---|---|
//! | [`Scope::Immutable`] | a block by hash, a receipt | only by LRU eviction |
//! | [`Scope::Block`] | a block by number below the head | the block is reorged out |
//! | [`Scope::Head`] | `eth_blockNumber`, a balance at `latest` | any new verified head |
//!
//! Beside it, a smaller table of whole responses keyed by the exact request
//! body with its id cut out ([`Cache::get_exact`]): only for
//! [`Scope::Immutable`] answers (final, verified data that can never
//! change), so that the server can answer a repeated request for them
//! without parsing it, the new request's id spliced in. Only bodies whose id
//! is plain ([`rpc::id_span`]) are kept. It takes at most an eighth of the
//! entry and byte budgets, and its bytes count in [`Cache::bytes`].
//!
//! In-flight coalescing lives in the server (it needs futures); this module
//! only stores and counts.

use crate::rpc::{self, RESPONSE_PREFIX};
use alloy_primitives::B256;
use hyper::body::Bytes;
use lru::LruCache;
use serde_json::Value;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::Arc;

/// When a cached answer stops being true.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// True forever: data of a block at or below the verified final head.
    Immutable,
    /// True while this block stays canonical.
    Block(B256),
    /// True until the next verified head.
    Head,
}

#[derive(Debug)]
struct Entry {
    value: Arc<str>,
    scope: Scope,
}

/// A whole response to one exact request body (see [`Cache::get_exact`]).
#[derive(Debug, Clone)]
pub struct Exact {
    /// The method (its hits are counted with the method's).
    pub method: &'static str,
    /// The request's id as JSON text (an error answer to the same body needs it).
    pub id: Arc<str>,
    /// The response, byte for byte.
    pub response: Bytes,
}

impl Exact {
    /// The same response to a request with another id (its JSON text).
    fn for_id(&self, id: &[u8]) -> Exact {
        if id == self.id.as_bytes() {
            return self.clone();
        }
        let rest = &self.response[RESPONSE_PREFIX.len() + self.id.len()..];
        let mut response = Vec::with_capacity(RESPONSE_PREFIX.len() + id.len() + rest.len());
        response.extend_from_slice(RESPONSE_PREFIX.as_bytes());
        response.extend_from_slice(id);
        response.extend_from_slice(rest);
        Exact {
            method: self.method,
            id: String::from_utf8_lossy(id).into(),
            response: response.into(),
        }
    }
}

/// The key of a body in the exact-body table: the body without its id's
/// value, and where the id was (two bodies share a key only when they are
/// the same but for the id). `None`: not kept (see [`rpc::id_span`]).
fn exact_key(body: &[u8]) -> Option<(Box<[u8]>, &[u8])> {
    if body.len() > MAX_EXACT_BODY {
        return None;
    }
    let span = rpc::id_span(body)?;
    let mut key = Vec::with_capacity(body.len() - span.len() + 4);
    key.extend_from_slice(&(span.start as u32).to_le_bytes());
    key.extend_from_slice(&body[..span.start]);
    key.extend_from_slice(&body[span.end..]);
    Some((key.into(), &body[span]))
}

/// Hits and misses of one method.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Answers served from the cache.
    pub hits: u64,
    /// Answers that had to be fetched.
    pub misses: u64,
}

/// The bounded cache.
#[derive(Debug)]
pub struct Cache {
    entries: LruCache<String, Entry>,
    bytes: usize,
    max_bytes: usize,
    head_keys: HashSet<String>,
    block_keys: HashMap<B256, Vec<String>>,
    counts: BTreeMap<&'static str, Counts>,
    evictions: u64,
    exact: LruCache<Box<[u8]>, Exact>,
    exact_bytes: usize,
}

/// Extra bytes counted per entry (key, bookkeeping).
const ENTRY_OVERHEAD: usize = 96;

/// The exact-body table's share of the budgets (one part in this many).
const EXACT_SHARE: usize = 8;

/// Longest request body kept as an exact key.
pub const MAX_EXACT_BODY: usize = 1024;

impl Cache {
    /// A cache of at most `max_entries` entries and `max_bytes` bytes.
    pub fn new(max_entries: usize, max_bytes: usize) -> Self {
        Self {
            entries: LruCache::new(NonZeroUsize::new(max_entries.max(1)).expect("non-zero")),
            bytes: 0,
            max_bytes: max_bytes.max(1),
            head_keys: HashSet::new(),
            block_keys: HashMap::new(),
            counts: BTreeMap::new(),
            evictions: 0,
            exact: LruCache::new(
                NonZeroUsize::new((max_entries / EXACT_SHARE).max(1)).expect("non-zero"),
            ),
            exact_bytes: 0,
        }
    }

    /// The cache key of a call: the method and its params with hex strings
    /// lower-cased (addresses and hashes compare case-insensitively).
    pub fn key(method: &str, params: &Value) -> String {
        let mut canonical = params.clone();
        lowercase_hex(&mut canonical);
        if canonical.is_null() {
            canonical = Value::Array(vec![]);
        }
        format!("{method}:{canonical}")
    }

    /// The cached answer and its scope, counting a hit or a miss for `method`.
    pub fn get(&mut self, method: &'static str, key: &str) -> Option<(Arc<str>, Scope)> {
        let found = self.entries.get(key).map(|e| (e.value.clone(), e.scope));
        let counts = self.counts.entry(method).or_default();
        match found {
            Some(_) => counts.hits += 1,
            None => counts.misses += 1,
        }
        found
    }

    /// The whole response stored for this request body but for its id,
    /// with this body's id. Nothing is counted: a hit is counted
    /// ([`Cache::hit`]) when it is served, and on a miss the body is
    /// answered the ordinary way, which counts.
    pub fn get_exact(&mut self, body: &[u8]) -> Option<Exact> {
        let (key, id) = exact_key(body)?;
        Some(self.exact.get(&key)?.for_id(id))
    }

    /// Counts a hit for `method` (a whole response served from [`Cache::get_exact`]).
    pub fn hit(&mut self, method: &'static str) {
        self.counts.entry(method).or_default().hits += 1;
    }

    /// Stores the response to this body. Only for answers of
    /// [`Scope::Immutable`]: nothing ever removes an entry but eviction.
    /// Not kept: bodies longer than [`MAX_EXACT_BODY`], bodies without a
    /// plain id, and responses that do not start with
    /// [`RESPONSE_PREFIX`] and the body's id as written (so that splicing
    /// another id in gives what the ordinary path would).
    pub fn put_exact(&mut self, body: &[u8], exact: Exact) {
        let Some((key, id)) = exact_key(body) else {
            return;
        };
        let starts_right = exact.id.as_bytes() == id
            && exact.response.starts_with(RESPONSE_PREFIX.as_bytes())
            && exact.response[RESPONSE_PREFIX.len()..].starts_with(id);
        let size = key.len() + exact.response.len() + exact.id.len() + ENTRY_OVERHEAD;
        let budget = self.max_bytes / EXACT_SHARE;
        if !starts_right || size > budget {
            return;
        }
        self.bytes += size;
        self.exact_bytes += size;
        if let Some((old_body, old)) = self.exact.push(key, exact) {
            self.forget_exact(&old_body, &old);
        }
        while self.exact_bytes > budget || self.bytes > self.max_bytes {
            match self.exact.pop_lru() {
                Some((b, e)) => self.forget_exact(&b, &e),
                None => break,
            }
        }
    }

    fn forget_exact(&mut self, body: &[u8], exact: &Exact) {
        let size = body.len() + exact.response.len() + exact.id.len() + ENTRY_OVERHEAD;
        self.bytes -= size;
        self.exact_bytes -= size;
    }

    /// Stores an answer.
    pub fn put(&mut self, key: String, value: Arc<str>, scope: Scope) {
        let size = key.len() + value.len() + ENTRY_OVERHEAD;
        if size > self.max_bytes {
            return;
        }
        self.remove(&key);
        match scope {
            Scope::Head => {
                self.head_keys.insert(key.clone());
            }
            Scope::Block(hash) => self.block_keys.entry(hash).or_default().push(key.clone()),
            Scope::Immutable => {}
        }
        self.bytes += size;
        if let Some((old_key, old)) = self.entries.push(key.clone(), Entry { value, scope })
            && old_key != key
        {
            self.evictions += 1;
            self.forget(&old_key, &old);
        }
        while self.bytes > self.max_bytes {
            match self.entries.pop_lru() {
                Some((k, e)) => {
                    self.evictions += 1;
                    self.forget(&k, &e);
                }
                None => break,
            }
        }
    }

    /// Drops every head-dependent entry (a new verified head arrived).
    pub fn new_head(&mut self) {
        for key in std::mem::take(&mut self.head_keys) {
            if let Some(e) = self.entries.pop(&key) {
                self.bytes -= key.len() + e.value.len() + ENTRY_OVERHEAD;
            }
        }
    }

    /// Drops the entries that depended on blocks a reorg replaced.
    pub fn reorg(&mut self, dropped: &[B256]) {
        for hash in dropped {
            for key in self.block_keys.remove(hash).unwrap_or_default() {
                self.remove(&key);
            }
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(e) = self.entries.pop(key) {
            self.forget(key, &e);
        }
    }

    fn forget(&mut self, key: &str, entry: &Entry) {
        self.bytes -= key.len() + entry.value.len() + ENTRY_OVERHEAD;
        match entry.scope {
            Scope::Head => {
                self.head_keys.remove(key);
            }
            Scope::Block(hash) => {
                if let Some(keys) = self.block_keys.get_mut(&hash) {
                    keys.retain(|k| k != key);
                    if keys.is_empty() {
                        self.block_keys.remove(&hash);
                    }
                }
            }
            Scope::Immutable => {}
        }
    }

    /// Entries held (answers by key and whole responses by exact body).
    pub fn len(&self) -> usize {
        self.entries.len() + self.exact.len()
    }

    /// Whether the cache is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes held (answers, keys, whole responses and their bodies, and a
    /// fixed overhead per entry).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Entries evicted for room so far.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    /// Hit and miss counts by method.
    pub fn counts(&self) -> &BTreeMap<&'static str, Counts> {
        &self.counts
    }
}

fn lowercase_hex(value: &mut Value) {
    match value {
        Value::String(s) if s.starts_with("0x") || s.starts_with("0X") => {
            *s = s.to_ascii_lowercase();
        }
        Value::Array(items) => items.iter_mut().for_each(lowercase_hex),
        Value::Object(map) => map.values_mut().for_each(lowercase_hex),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn v(s: &str) -> Arc<str> {
        s.into()
    }

    #[test]
    fn keys_ignore_hex_case_and_object_order() {
        let a = Cache::key("eth_getBalance", &json!(["0xABcd", "latest"]));
        let b = Cache::key("eth_getBalance", &json!(["0xabcd", "latest"]));
        assert_eq!(a, b);
        let c = Cache::key(
            "eth_getLogs",
            &json!([{"toBlock": "0x2", "fromBlock": "0x1"}]),
        );
        let d = Cache::key(
            "eth_getLogs",
            &json!([{"fromBlock": "0x1", "toBlock": "0x2"}]),
        );
        assert_eq!(c, d);
        assert_eq!(
            Cache::key("eth_blockNumber", &Value::Null),
            Cache::key("eth_blockNumber", &json!([]))
        );
    }

    #[test]
    fn head_entries_go_on_a_new_head_and_block_entries_on_a_reorg() {
        let mut cache = Cache::new(100, 1 << 20);
        let block = B256::repeat_byte(1);
        cache.put("a".into(), v("1"), Scope::Head);
        cache.put("b".into(), v("2"), Scope::Block(block));
        cache.put("c".into(), v("3"), Scope::Immutable);
        assert_eq!(cache.len(), 3);
        cache.new_head();
        assert!(cache.get("m", "a").is_none());
        assert!(cache.get("m", "b").is_some());
        cache.reorg(&[B256::repeat_byte(2)]);
        assert!(cache.get("m", "b").is_some());
        cache.reorg(&[block]);
        assert!(cache.get("m", "b").is_none());
        let (value, scope) = cache.get("m", "c").unwrap();
        assert_eq!((&*value, scope), ("3", Scope::Immutable));
        assert_eq!(cache.counts()["m"], Counts { hits: 3, misses: 2 });
        assert_eq!(cache.bytes(), 1 + 1 + ENTRY_OVERHEAD);
    }

    #[test]
    fn bounded_by_entries_and_by_bytes() {
        let mut cache = Cache::new(2, 1 << 20);
        for k in ["a", "b", "c"] {
            cache.put(k.into(), v("x"), Scope::Immutable);
        }
        assert_eq!(cache.len(), 2);
        assert!(cache.get("m", "a").is_none(), "least recently used went");
        let mut cache = Cache::new(1000, 3 * (ENTRY_OVERHEAD + 12));
        for i in 0..10 {
            cache.put(format!("k{i}"), v("0123456789"), Scope::Head);
        }
        assert_eq!(cache.len(), 3);
        assert!(cache.bytes() <= 3 * (ENTRY_OVERHEAD + 12));
        assert_eq!(cache.evictions(), 7);
        cache.new_head();
        assert_eq!((cache.len(), cache.bytes()), (0, 0));
        // Too large for the whole cache: not stored.
        cache.put("big".into(), "x".repeat(10_000).into(), Scope::Immutable);
        assert!(cache.is_empty());
    }

    #[test]
    fn replacing_a_key_keeps_the_byte_count_exact() {
        let mut cache = Cache::new(10, 1 << 20);
        cache.put("a".into(), v("1"), Scope::Head);
        cache.put("a".into(), v("22"), Scope::Block(B256::ZERO));
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.bytes(), 1 + 2 + ENTRY_OVERHEAD);
        cache.new_head();
        assert_eq!(cache.len(), 1, "no longer head-scoped");
    }

    fn exact(id: &str, result: &str) -> Exact {
        Exact {
            method: "eth_getBlockByNumber",
            id: id.into(),
            response: rpc::response(id, &Ok((result.into(), rpc::Trust::Verified))).into(),
        }
    }

    fn body(id: &str, block: &str) -> Vec<u8> {
        format!(
            r#"{{"jsonrpc":"2.0","id":{id},"method":"eth_getBlockByNumber","params":["{block}",true]}}"#
        )
        .into_bytes()
    }

    #[test]
    fn exact_bodies_are_matched_but_for_their_id_and_bounded() {
        let mut cache = Cache::new(80, 32 * 1024);
        let one = body("1", "0x1");
        cache.put_exact(&one, exact("1", "\"r1\""));
        let hit = cache.get_exact(&one).unwrap();
        assert_eq!(hit.response, exact("1", "\"r1\"").response);
        assert_eq!(&*hit.id, "1");
        cache.hit(hit.method);
        assert_eq!(
            cache.counts()["eth_getBlockByNumber"],
            Counts { hits: 1, misses: 0 }
        );
        // Another id: the same response with that id, as the ordinary path gives it.
        for id in ["2", "\"abc\"", "0", "123456789012345678"] {
            let hit = cache.get_exact(&body(id, "0x1")).unwrap();
            assert_eq!(hit.response, exact(id, "\"r1\"").response, "{id}");
            assert_eq!(&*hit.id, id);
        }
        // Another block, another spacing, a cut body, an id that is not plain: no hit.
        assert!(cache.get_exact(&body("1", "0x2")).is_none());
        let spaced =
            br#"{"jsonrpc":"2.0", "id":1,"method":"eth_getBlockByNumber","params":["0x1",true]}"#;
        assert!(cache.get_exact(spaced).is_none());
        assert!(cache.get_exact(&one[..one.len() - 1]).is_none());
        for id in [
            "1.0",
            "-1",
            "01",
            "null",
            "\"a\\\"b\"",
            "[1]",
            "1234567890123456789",
        ] {
            assert!(cache.get_exact(&body(id, "0x1")).is_none(), "{id}");
        }
        // A response that does not start with the id as written is not kept.
        cache.put_exact(&body("7", "0x3"), exact("8", "\"r3\""));
        assert!(cache.get_exact(&body("7", "0x3")).is_none());
        assert_eq!(cache.len(), 1);
        // At most an eighth of the entries (10), and of the bytes (4 KiB).
        for i in 0..20 {
            cache.put_exact(&body("1", &format!("{i:#x}")), exact("1", "\"r\""));
        }
        assert_eq!(cache.len(), 10);
        let big = format!("\"{}\"", "x".repeat(5000));
        cache.put_exact(&body("1", "0xbig"), exact("1", &big));
        assert!(
            cache.get_exact(&body("1", "0xbig")).is_none(),
            "larger than its share"
        );
        let long = body("1", &"0".repeat(MAX_EXACT_BODY));
        cache.put_exact(&long, exact("1", "\"r\""));
        assert!(cache.get_exact(&long).is_none());
        assert!(cache.bytes() <= 4096);
        // Dropping what is held by scope leaves whole responses alone
        // (they are only ever stored for immutable answers).
        cache.new_head();
        cache.reorg(&[B256::ZERO]);
        assert_eq!(cache.len(), 10);
    }
}
