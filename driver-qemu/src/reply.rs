//! One QMP reply, and the compact binary form replies are kept in: the representation that
//! both the probe data ([`crate::probe_data`]: transcripts of exchanges) and the probe
//! cache ([`crate::cache::compact`]: transcripts in a file) are built on. It depends on
//! neither of them.
//!
//! ```text
//! reply      := u8(0) value | u8(1) str(class) str(desc)
//! value      := 0 null | 1 false | 2 true | 3 i64 | 4 u64 | 5 f64 | 6 str
//!             | 7 u32(n) value*n | 8 u32(n) (str value)*n
//! str        := u32(len) UTF-8 bytes
//! ```
//!
//! Integers are little-endian. Decoding checks every length and tag and never panics; a
//! [`View`] reads a value in place without decoding it.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Number, Value};

/// Deepest nesting accepted when decoding (QMP replies nest a handful of levels).
pub(crate) const MAX_DEPTH: usize = 128;

/// Why a compact segment could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("compact form, byte {at}: {what}")]
pub struct DecodeError {
    pub(crate) at: usize,
    pub(crate) what: &'static str,
}

/// A QMP error reply (`{"error": {"class": ..., "desc": ...}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QmpError {
    pub class: String,
    pub desc: String,
}

/// A QMP reply: `Ok(return value)` or `Err(the error reply)`, serialized as that `Result`.
///
/// A reply read from the probe cache stays in its stored (compact, already verified) form
/// until something reads it, and is decoded once then: a derivation reads a few of a run's
/// replies (most of the bytes are per-model CPU expansions that only some queries need), so
/// a warm lookup no longer builds and frees the JSON trees of the others.
#[derive(Clone)]
pub struct Reply {
    value: OnceLock<Result<Value, QmpError>>,
    /// The compact bytes of a reply not decoded yet (read from a cache file).
    stored: Option<StoredReply>,
    /// The compact bytes of a reply that was not stored, made for [`Reply::view`].
    encoded: OnceLock<Vec<u8>>,
}

/// Where a stored reply's bytes are: a range of a cache file read into memory.
#[derive(Clone)]
pub(crate) struct StoredReply {
    pub(crate) buf: Arc<Vec<u8>>,
    pub(crate) range: Range<usize>,
}

impl Reply {
    /// A successful reply.
    pub fn ok(value: Value) -> Self {
        Reply::from(Ok(value))
    }

    /// An error reply.
    pub fn err(error: QmpError) -> Self {
        Reply::from(Err(error))
    }

    /// A reply decoded from `stored` on first read. The bytes must have been checked by
    /// the cache (a decoding failure is still no panic: it reads as an error
    /// reply of class `CapsdDamagedCache`).
    pub(crate) fn stored(stored: StoredReply) -> Self {
        Reply { value: OnceLock::new(), stored: Some(stored), encoded: OnceLock::new() }
    }

    fn resolved(&self) -> &Result<Value, QmpError> {
        self.value.get_or_init(|| {
            let damaged = |desc: String| QmpError { class: "CapsdDamagedCache".into(), desc };
            match &self.stored {
                Some(s) => match s.buf.get(s.range.clone()) {
                    Some(bytes) => decode_reply(bytes).unwrap_or_else(|e| {
                        tracing::warn!(error = %e, "a cached QMP reply cannot be decoded; treated as not answered");
                        Err(damaged(e.to_string()))
                    }),
                    None => Err(damaged("stored reply out of range".into())),
                },
                None => Err(damaged("no reply".into())),
            }
        })
    }

    /// The reply, decoding it first when it is still in its stored form.
    pub fn get(&self) -> Result<&Value, &QmpError> {
        self.resolved().as_ref()
    }

    /// A successful reply read in place, without decoding it into a `Value` tree (for
    /// lookups in large replies). `None` for an error reply.
    pub fn view(&self) -> Option<View<'_>> {
        if let Some(s) = &self.stored {
            let bytes = s.buf.get(s.range.clone())?;
            return match bytes.split_first() {
                Some((0, value)) => Some(View::new(value)),
                _ => None,
            };
        }
        let v = self.get().ok()?;
        Some(View::new(self.encoded.get_or_init(|| encode_value(v))))
    }

    /// Whether QEMU answered without an error.
    pub fn is_ok(&self) -> bool {
        self.get().is_ok()
    }

    /// The reply as an owned `Result`.
    pub fn into_result(self) -> Result<Value, QmpError> {
        self.resolved();
        let Reply { value, .. } = self;
        value.into_inner().unwrap_or_else(|| Err(QmpError { class: "CapsdDamagedCache".into(), desc: String::new() }))
    }
}

impl From<Result<Value, QmpError>> for Reply {
    fn from(r: Result<Value, QmpError>) -> Self {
        Reply { value: OnceLock::from(r), stored: None, encoded: OnceLock::new() }
    }
}

impl std::fmt::Debug for Reply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.resolved().fmt(f)
    }
}

impl PartialEq for Reply {
    fn eq(&self, other: &Self) -> bool {
        self.resolved() == other.resolved()
    }
}

impl Serialize for Reply {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.resolved().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Reply {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Result::<Value, QmpError>::deserialize(d).map(Reply::from)
    }
}

pub(crate) fn write_len(n: usize, out: &mut Vec<u8>) {
    // Nothing QEMU says comes near 4 GiB; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

pub(crate) fn write_str(s: &str, out: &mut Vec<u8>) {
    write_len(s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

pub(crate) fn write_value(v: &Value, out: &mut Vec<u8>) {
    match v {
        Value::Null => out.push(0),
        Value::Bool(false) => out.push(1),
        Value::Bool(true) => out.push(2),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                out.push(3);
                out.extend_from_slice(&i.to_le_bytes());
            } else if let Some(u) = n.as_u64() {
                out.push(4);
                out.extend_from_slice(&u.to_le_bytes());
            } else {
                out.push(5);
                out.extend_from_slice(&n.as_f64().unwrap_or(0.0).to_le_bytes());
            }
        }
        Value::String(s) => {
            out.push(6);
            write_str(s, out);
        }
        Value::Array(a) => {
            out.push(7);
            write_len(a.len(), out);
            for x in a {
                write_value(x, out);
            }
        }
        Value::Object(m) => {
            out.push(8);
            write_len(m.len(), out);
            for (k, x) in m {
                write_str(k, out);
                write_value(x, out);
            }
        }
    }
}

/// Decode one reply (its tag and content), as a cache segment stores it.
pub fn decode_reply(bytes: &[u8]) -> Result<Result<Value, QmpError>, DecodeError> {
    let mut r = Reader { b: bytes, at: 0 };
    let reply = r.reply()?;
    if r.at != bytes.len() {
        return Err(r.err("trailing bytes"));
    }
    Ok(reply)
}

/// The compact bytes of one value, for [`View`].
pub fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(v, &mut out);
    out
}

/// A value in compact form, read in place: no tree is built and nothing is copied, so a
/// caller that looks a few things up in a large reply (the QMP schema, the QOM type list)
/// pays for what it reads. Malformed bytes read as "not there" (`None`, an empty
/// iteration), never as a panic.
#[derive(Debug, Clone, Copy)]
pub struct View<'a> {
    /// Starts at the value's tag; may run past the value's end.
    b: &'a [u8],
}

impl<'a> View<'a> {
    /// The value that starts at `bytes[0]`.
    pub fn new(bytes: &'a [u8]) -> Self {
        View { b: bytes }
    }

    fn tag(&self) -> Option<u8> {
        self.b.first().copied()
    }

    fn u32_at(&self, at: usize) -> Option<usize> {
        let s = self.b.get(at..at.checked_add(4)?)?;
        usize::try_from(u32::from_le_bytes([s[0], s[1], s[2], s[3]])).ok()
    }

    /// The string at byte `at` (length-prefixed) and the offset after it.
    fn str_at(&self, at: usize) -> Option<(&'a str, usize)> {
        let n = self.u32_at(at)?;
        let start = at + 4;
        let end = start.checked_add(n)?;
        let s = std::str::from_utf8(self.b.get(start..end)?).ok()?;
        Some((s, end))
    }

    /// The number of bytes this value takes.
    fn size(&self, depth: usize) -> Option<usize> {
        if depth > MAX_DEPTH {
            return None;
        }
        let size = match self.tag()? {
            0..=2 => 1,
            3..=5 => 9,
            6 => 5usize.checked_add(self.u32_at(1)?)?,
            t @ (7 | 8) => {
                let n = self.u32_at(1)?;
                let mut at: usize = 5;
                for _ in 0..n {
                    if t == 8 {
                        // Skipping a key needs its length only: no UTF-8 check.
                        at = at.checked_add(4)?.checked_add(self.u32_at(at)?)?;
                    }
                    at = at.checked_add(View { b: self.b.get(at..)? }.size(depth + 1)?)?;
                }
                at
            }
            _ => return None,
        };
        (size <= self.b.len()).then_some(size)
    }

    /// The string, when this is one.
    pub fn as_str(&self) -> Option<&'a str> {
        (self.tag()? == 6).then(|| self.str_at(1).map(|(s, _)| s)).flatten()
    }

    /// The elements, when this is an array (else nothing).
    pub fn array(&self) -> impl Iterator<Item = View<'a>> {
        self.items(7).map(|(_, v)| v)
    }

    /// The members, when this is an object (else nothing).
    pub fn entries(&self) -> Items<'a> {
        self.items(8)
    }

    fn items(&self, tag: u8) -> Items<'a> {
        match (self.tag(), self.u32_at(1)) {
            (Some(t), Some(left)) if t == tag => Items { b: self.b, at: 5, left, object: tag == 8 },
            _ => Items { b: &[], at: 0, left: 0, object: false },
        }
    }

    /// Member `key` of an object.
    pub fn get(&self, key: &str) -> Option<View<'a>> {
        self.entries().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

/// The elements of an array [`View`] (keys empty) or the members of an object view.
#[derive(Debug, Clone)]
pub struct Items<'a> {
    b: &'a [u8],
    at: usize,
    left: usize,
    object: bool,
}

impl<'a> Iterator for Items<'a> {
    type Item = (&'a str, View<'a>);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let whole = View { b: self.b };
        let step = || -> Option<(&'a str, View<'a>, usize)> {
            let (key, at) = if self.object { whole.str_at(self.at)? } else { ("", self.at) };
            let v = View { b: self.b.get(at..)? };
            let end = at.checked_add(v.size(1)?)?;
            Some((key, v, end))
        };
        match step() {
            Some((key, v, end)) => {
                self.at = end;
                Some((key, v))
            }
            None => {
                // Malformed: stop here.
                self.left = 0;
                None
            }
        }
    }
}

pub(crate) struct Reader<'a> {
    pub(crate) b: &'a [u8],
    pub(crate) at: usize,
}

impl Reader<'_> {
    pub(crate) fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.at, what }
    }

    pub(crate) fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| self.err("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    pub(crate) fn eight(&mut self) -> Result<[u8; 8], DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(a)
    }

    pub(crate) fn len(&mut self) -> Result<usize, DecodeError> {
        let s = self.take(4)?;
        let n = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        usize::try_from(n).map_err(|_| self.err("length"))
    }

    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len()?;
        let at = self.at;
        let s = self.take(n)?;
        std::str::from_utf8(s).map(str::to_owned).map_err(|_| DecodeError { at, what: "not UTF-8" })
    }

    pub(crate) fn reply(&mut self) -> Result<Result<Value, QmpError>, DecodeError> {
        match self.u8()? {
            0 => Ok(Ok(self.value(0)?)),
            1 => Ok(Err(QmpError { class: self.string()?, desc: self.string()? })),
            _ => Err(self.err("bad reply tag")),
        }
    }

    pub(crate) fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
        if depth > MAX_DEPTH {
            return Err(self.err("nested too deep"));
        }
        Ok(match self.u8()? {
            0 => Value::Null,
            1 => Value::Bool(false),
            2 => Value::Bool(true),
            3 => Value::from(i64::from_le_bytes(self.eight()?)),
            4 => Value::from(u64::from_le_bytes(self.eight()?)),
            5 => {
                let f = f64::from_le_bytes(self.eight()?);
                Value::Number(Number::from_f64(f).ok_or_else(|| self.err("not a finite number"))?)
            }
            6 => Value::String(self.string()?),
            7 => {
                let n = self.len()?;
                let mut a = Vec::with_capacity(n.min(self.b.len() - self.at));
                for _ in 0..n {
                    a.push(self.value(depth + 1)?);
                }
                Value::Array(a)
            }
            8 => {
                let n = self.len()?;
                // Keys come in the order they were written (the map's, which keeps QEMU's
                // order); collecting builds the map in one pass.
                let mut pairs = Vec::with_capacity(n.min(self.b.len() - self.at));
                for _ in 0..n {
                    let k = self.string()?;
                    pairs.push((k, self.value(depth + 1)?));
                }
                Value::Object(pairs.into_iter().collect::<Map<String, Value>>())
            }
            _ => return Err(self.err("bad value tag")),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn views_read_in_place_what_decoding_reads() {
        let v = json!([{"name": "a", "members": [{"name": "x", "type": "int"}], "n": 5},
                       {"name": "ünï", "flag": true}, "loose", null]);
        let b = encode_value(&v);
        let view = View::new(&b);
        let items: Vec<View<'_>> = view.array().collect();
        assert_eq!(items.len(), 4);
        assert_eq!(items[0].get("name").and_then(|n| n.as_str()), Some("a"));
        let member = items[0].get("members").and_then(|m| m.array().next()).unwrap();
        assert_eq!(member.get("type").and_then(|t| t.as_str()), Some("int"));
        assert!(items[0].get("n").is_some_and(|n| n.as_str().is_none()));
        assert_eq!(items[1].get("name").and_then(|n| n.as_str()), Some("ünï"));
        assert_eq!(items[2].as_str(), Some("loose"));
        assert!(items[3].get("name").is_none() && items[3].array().next().is_none());
        assert_eq!(items[1].entries().map(|(k, _)| k).collect::<Vec<_>>(), ["name", "flag"], "the order QEMU wrote");
        // Cut anywhere: fewer items or none, never a panic.
        for cut in 0..b.len() {
            let v = View::new(&b[..cut]);
            assert!(v.array().count() < 4);
            let _ = v.array().filter_map(|e| e.get("name").and_then(|n| n.as_str())).count();
        }
    }
}
