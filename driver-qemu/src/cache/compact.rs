//! The compact form of a [`Transcript`] in a cache file: the same content as its JSON,
//! length-prefixed and tagged, so that loading skips text scanning. Each reply is preceded
//! by its length: loading a transcript steps over the replies and leaves each to be decoded
//! when first read ([`Reply`]), or read in place without decoding ([`View`]).
//!
//! ```text
//! transcript := value(greeting) u32(count) exchange*
//! exchange   := str(execute) u8(0 | 1 value(arguments)) u32(reply length) reply
//! ```
//!
//! (`reply`, `value` and `str` as [`crate::reply`] writes them.)
//!
//! Integers are little-endian. Decoding checks every length and tag and never panics: a
//! damaged segment is an error (the checksum normally catches it first); a damaged reply,
//! found only when it is read, reads as an error reply of class `CapsdDamagedCache`.

use std::ops::Range;
use std::sync::Arc;

use crate::probe_data::{Exchange, Transcript};
pub use crate::reply::DecodeError;
use crate::reply::{write_len, write_str, write_value, Reader, Reply, StoredReply};

/// The compact bytes of `t`.
pub fn encode(t: &Transcript) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 * 1024);
    write_value(&t.greeting, &mut out);
    write_len(t.exchanges.len(), &mut out);
    for e in &t.exchanges {
        write_str(&e.execute, &mut out);
        match &e.arguments {
            None => out.push(0),
            Some(a) => {
                out.push(1);
                write_value(a, &mut out);
            }
        }
        // The reply's length first, so that loading can step over it.
        let at = out.len();
        out.extend_from_slice(&[0; 4]);
        match e.reply.get() {
            Ok(v) => {
                out.push(0);
                write_value(v, &mut out);
            }
            Err(q) => {
                out.push(1);
                write_str(&q.class, &mut out);
                write_str(&q.desc, &mut out);
            }
        }
        let n = u32::try_from(out.len() - at - 4).unwrap_or(u32::MAX);
        out[at..at + 4].copy_from_slice(&n.to_le_bytes());
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe_data::{Exchange, Reply};
    use crate::reply::QmpError;
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
    fn deep_nesting_is_refused() {
        let mut b = Vec::new();
        b.extend(std::iter::repeat_n([7u8, 1, 0, 0, 0], crate::reply::MAX_DEPTH + 5).flatten());
        b.push(0);
        assert!(dec(&b).unwrap_err().to_string().contains("too deep"));
    }
}
