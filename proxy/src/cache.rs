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
//! body ([`Cache::get_exact`]): only for [`Scope::Immutable`] answers (final,
//! verified data that can never change), so that the server can answer a
//! repeated request for them without parsing it. It takes at most an eighth
//! of the entry and byte budgets, and its bytes count in [`Cache::bytes`].
//!
//! In-flight coalescing lives in the server (it needs futures); this module
//! only stores and counts.

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

    /// The whole response stored for exactly this request body. Nothing is
    /// counted: a hit is counted ([`Cache::hit`]) when it is served, and on
    /// a miss the body is answered the ordinary way, which counts.
    pub fn get_exact(&mut self, body: &[u8]) -> Option<Exact> {
        self.exact.get(body).cloned()
    }

    /// Counts a hit for `method` (a whole response served from [`Cache::get_exact`]).
    pub fn hit(&mut self, method: &'static str) {
        self.counts.entry(method).or_default().hits += 1;
    }

    /// Stores the response to exactly this body. Only for answers of
    /// [`Scope::Immutable`]: nothing ever removes an entry but eviction.
    /// Bodies longer than [`MAX_EXACT_BODY`] are not kept.
    pub fn put_exact(&mut self, body: &[u8], exact: Exact) {
        let size = body.len() + exact.response.len() + exact.id.len() + ENTRY_OVERHEAD;
        let budget = self.max_bytes / EXACT_SHARE;
        if body.len() > MAX_EXACT_BODY || size > budget {
            return;
        }
        self.bytes += size;
        self.exact_bytes += size;
        if let Some((old_body, old)) = self.exact.push(body.into(), exact) {
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

    fn exact(id: &str, response: &'static str) -> Exact {
        Exact {
            method: "eth_getBlockByNumber",
            id: id.into(),
            response: Bytes::from_static(response.as_bytes()),
        }
    }

    #[test]
    fn exact_bodies_are_matched_byte_for_byte_and_bounded() {
        let mut cache = Cache::new(80, 8 * 1024);
        let body =
            br#"{"jsonrpc":"2.0","id":1,"method":"eth_getBlockByNumber","params":["0x1",true]}"#;
        cache.put_exact(body, exact("1", "response"));
        let hit = cache.get_exact(body).unwrap();
        assert_eq!((&hit.response[..], &*hit.id), (&b"response"[..], "1"));
        cache.hit(hit.method);
        assert_eq!(
            cache.counts()["eth_getBlockByNumber"],
            Counts { hits: 1, misses: 0 }
        );
        // Another id, another spacing: another body.
        let other =
            br#"{"jsonrpc":"2.0","id":2,"method":"eth_getBlockByNumber","params":["0x1",true]}"#;
        assert!(cache.get_exact(other).is_none());
        assert!(cache.get_exact(&body[..body.len() - 1]).is_none());
        assert_eq!(cache.len(), 1);
        // At most an eighth of the entries (10), and of the bytes (1 KiB).
        for i in 0..20u32 {
            cache.put_exact(&i.to_be_bytes(), exact("1", "r"));
        }
        assert_eq!(cache.len(), 10);
        let big: &'static str = Box::leak("x".repeat(2000).into_boxed_str());
        cache.put_exact(b"big", exact("1", big));
        assert!(cache.get_exact(b"big").is_none(), "larger than its share");
        assert!(cache.get_exact(&vec![b' '; MAX_EXACT_BODY + 1]).is_none());
        cache.put_exact(&vec![b' '; MAX_EXACT_BODY + 1], exact("1", "r"));
        assert!(cache.get_exact(&vec![b' '; MAX_EXACT_BODY + 1]).is_none());
        assert!(cache.bytes() <= 1024);
        // Dropping what is held by scope leaves whole responses alone
        // (they are only ever stored for immutable answers).
        cache.new_head();
        cache.reorg(&[B256::ZERO]);
        assert_eq!(cache.len(), 10);
    }
}
