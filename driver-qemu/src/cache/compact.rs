//! The compact form of a [`Transcript`] in a cache file: the same content as its JSON,
//! length-prefixed and tagged, so that loading skips text scanning. Each reply is preceded
//! by its length: loading a transcript steps over the replies and leaves each to be decoded
//! when first read ([`Reply`]), or read in place without decoding ([`View`]).
//!
//! ```text
//! transcript := value(greeting) u32(count) exchange*
//! exchange   := str(execute) u8(0 | 1 value(arguments)) u32(reply length) reply
//! reply      := u8(0) value | u8(1) str(class) str(desc)
//! value      := 0 null | 1 false | 2 true | 3 i64 | 4 u64 | 5 f64 | 6 str
//!             | 7 u32(n) value*n | 8 u32(n) (str value)*n
//! str        := u32(len) UTF-8 bytes
//! ```
//!
//! Integers are little-endian. Decoding checks every length and tag and never panics: a
//! damaged segment is an error (the checksum normally catches it first); a damaged reply,
//! found only when it is read, reads as an error reply of class `CapsdDamagedCache`.

use std::ops::Range;
use std::sync::Arc;

use serde_json::{Map, Number, Value};

use crate::probe_data::{Exchange, QmpError, Reply, StoredReply, Transcript};

/// Deepest nesting accepted when decoding (QMP replies nest a handful of levels).
const MAX_DEPTH: usize = 128;

/// Why a compact segment could not be decoded.
#[derive(Debug, thiserror::Error)]
#[error("compact transcript, byte {at}: {what}")]
pub struct DecodeError {
    at: usize,
    what: &'static str,
}

/// The compact bytes of `t`.
pub fn encode(t: &Transcript) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    value(&t.greeting, &mut out);
    len(t.exchanges.len(), &mut out);
    for e in &t.exchanges {
        string(&e.execute, &mut out);
        match &e.arguments {
            None => out.push(0),
            Some(a) => {
                out.push(1);
                value(a, &mut out);
            }
        }
        // The reply's length first, so that loading can step over it.
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match e.reply.get() {
            Ok(v) => {
                out.push(0);
                value(v, &mut out);
            }
            Err(q) => {
                out.push(1);
                string(&q.class, &mut out);
                string(&q.desc, &mut out);
            }
        }
        let n = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    out
}

fn len(n: usize, out: &mut Vec<u8>) {
    // Nothing QEMU says comes near 4 GiB; saturate rather than wrap.
    out.extend_from_slice(&u32::try_from(n).unwrap_or(u32::MAX).to_le_bytes());
}

fn string(s: &str, out: &mut Vec<u8>) {
    len(s.len(), out);
    out.extend_from_slice(s.as_bytes());
}

fn value(v: &Value, out: &mut Vec<u8>) {
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
            string(s, out);
        }
        Value::Array(a) => {
            out.push(7);
            len(a.len(), out);
            for x in a {
                value(x, out);
            }
        }
        Value::Object(m) => {
            out.push(8);
            len(m.len(), out);
            for (k, x) in m {
                string(k, out);
                value(x, out);
            }
        }
    }
}

/// Decode the segment at `range` of `buf`; trailing bytes are an error. The replies are left
/// in their compact form, each decoded on first read ([`Reply`], sharing `buf`): a damaged
/// reply (which the segment checksum normally rules out) reads as an error reply then.
pub fn decode(buf: &Arc<Vec<u8>>, range: Range<usize>) -> Result<Transcript, DecodeError> {
    let base = range.start;
    let bytes = buf.get(range).ok_or(DecodeError { at: 0, what: "segment out of range" })?;
    let mut r = Reader { b: bytes, at: 0 };
    let greeting = r.value(0)?;
    let n = r.len()?;
    // Each exchange takes at least 7 bytes: do not trust `n` for the allocation.
    let mut exchanges = Vec::with_capacity(n.min(bytes.len() / 7));
    for _ in 0..n {
        let execute = r.string()?;
        let arguments = match r.u8()? {
            0 => None,
            1 => Some(r.value(0)?),
            _ => return Err(r.err("bad arguments tag")),
        };
        let n = r.len()?;
        let start = r.at;
        r.take(n)?;
        let reply = Reply::stored(StoredReply { buf: buf.clone(), range: base + start..base + r.at });
        exchanges.push(Exchange { execute, arguments, reply });
    }
    if r.at != bytes.len() {
        return Err(r.err("trailing bytes"));
    }
    Ok(Transcript { greeting, exchanges })
}

/// Decode one reply (its tag and content) as [`decode`] left it.
pub fn decode_reply(bytes: &[u8]) -> Result<Result<Value, QmpError>, DecodeError> {
    let mut r = Reader { b: bytes, at: 0 };
    let reply = r.reply()?;
    if r.at != bytes.len() {
        return Err(r.err("trailing bytes"));
    }
    Ok(reply)
}

/// The compact bytes of one value (`value` above), for [`View`].
pub fn encode_value(v: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    value(v, &mut out);
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

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn err(&self, what: &'static str) -> DecodeError {
        DecodeError { at: self.at, what }
    }

    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len()).ok_or_else(|| self.err("truncated"))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn eight(&mut self) -> Result<[u8; 8], DecodeError> {
        let s = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn len(&mut self) -> Result<usize, DecodeError> {
        let s = self.take(4)?;
        let n = u32::from_le_bytes([s[0], s[1], s[2], s[3]]);
        usize::try_from(n).map_err(|_| self.err("length"))
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        let n = self.len()?;
        let at = self.at;
        let s = self.take(n)?;
        std::str::from_utf8(s).map(str::to_owned).map_err(|_| DecodeError { at, what: "not UTF-8" })
    }

    fn reply(&mut self) -> Result<Result<Value, QmpError>, DecodeError> {
        match self.u8()? {
            0 => Ok(Ok(self.value(0)?)),
            1 => Ok(Err(QmpError { class: self.string()?, desc: self.string()? })),
            _ => Err(self.err("bad reply tag")),
        }
    }

    fn value(&mut self, depth: usize) -> Result<Value, DecodeError> {
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

    fn dec(b: &[u8]) -> Result<Transcript, DecodeError> {
        decode(&Arc::new(b.to_vec()), 0..b.len())
    }

    fn sample() -> Transcript {
        Transcript {
            greeting: json!({"QMP": {"version": {"qemu": {"major": 7, "minor": 2}}, "capabilities": ["oob"]}}),
            exchanges: vec![
                Exchange {
                    execute: "query-machines".into(),
                    arguments: None,
                    reply: Reply::ok(
                        json!([{"name": "pc-q35-7.2", "alias": "q35", "cpu-max": 288, "is-default": false}]),
                    ),
                },
                Exchange {
                    execute: "query-cpu-model-expansion".into(),
                    arguments: Some(json!({"type": "static", "model": {"name": "host"}})),
                    reply: Reply::ok(
                        json!({"model": {"name": "base", "props": {"vmx": true, "zz": false, "aa": null}},
                                     "neg": -5, "big": u64::MAX, "frac": 0.25, "s": "ünï\"code\n", "e": [], "o": {}}),
                    ),
                },
                Exchange {
                    execute: "query-sev-capabilities".into(),
                    arguments: None,
                    reply: Reply::err(QmpError {
                        class: "GenericError".into(),
                        desc: "SEV is not enabled in KVM".into(),
                    }),
                },
            ],
        }
    }

    #[test]
    fn round_trips_every_kind_of_value() {
        let t = sample();
        assert_eq!(dec(&encode(&t)).unwrap(), t);
        // A segment inside a larger buffer, replies read one by one.
        let mut buf = b"prefix".to_vec();
        buf.extend(encode(&t));
        let end = buf.len();
        buf.extend(b"suffix");
        let lazy = decode(&Arc::new(buf), 6..end).unwrap();
        for (a, b) in lazy.exchanges.iter().zip(&t.exchanges) {
            assert_eq!(a.reply.get(), b.reply.get());
        }
        assert_eq!(lazy.exchanges[2].reply.get().unwrap_err().class, "GenericError");
        let empty = Transcript::default();
        assert_eq!(dec(&encode(&empty)).unwrap(), empty);
    }

    #[test]
    fn damaged_bytes_are_errors_not_panics() {
        let bytes = encode(&sample());
        for cut in 0..bytes.len() {
            assert!(dec(&bytes[..cut]).is_err(), "truncated at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(dec(&longer).is_err());
        // Every single-byte change either fails or decodes to something (never panics).
        for i in 0..bytes.len() {
            let mut b = bytes.clone();
            b[i] = b[i].wrapping_add(0x55);
            if let Ok(t) = dec(&b) {
                for e in &t.exchanges {
                    let _ = e.reply.get();
                }
            }
        }
        // A huge length does not allocate it.
        let mut huge = encode(&Transcript::default());
        huge.truncate(1);
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        assert!(dec(&huge).is_err());
    }

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

    #[test]
    fn deep_nesting_is_refused() {
        let mut b = Vec::new();
        b.extend(std::iter::repeat_n([7u8, 1, 0, 0, 0], MAX_DEPTH + 5).flatten());
        b.push(0);
        assert!(dec(&b).unwrap_err().to_string().contains("too deep"));
    }
}
