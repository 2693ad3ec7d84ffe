//! Wire primitives: a bounds-checked zero-copy reader and the matching writers (MQTT §1.5).

use crate::error::{malformed, Result};
use crate::types::ByteStr;
use bytes::{BufMut, Bytes, BytesMut};

/// Largest value a variable byte integer can hold (four bytes).
pub(crate) const VARINT_MAX: u32 = 268_435_455;

/// Reads MQTT data types from one packet's bytes. Every read is bounds-checked: running past
/// the end is a malformed packet. Strings and binary data are `Bytes` slices, never copies.
#[derive(Debug)]
pub(crate) struct Reader {
    buf: Bytes,
}

impl Reader {
    pub(crate) fn new(buf: Bytes) -> Reader {
        Reader { buf }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    pub(crate) fn u8(&mut self) -> Result<u8> {
        let Some(&b) = self.buf.first() else {
            return Err(malformed("field runs past the packet"));
        };
        bytes::Buf::advance(&mut self.buf, 1);
        Ok(b)
    }

    pub(crate) fn u16(&mut self) -> Result<u16> {
        let b = self.array::<2>()?;
        Ok(u16::from_be_bytes(b))
    }

    pub(crate) fn u32(&mut self) -> Result<u32> {
        let b = self.array::<4>()?;
        Ok(u32::from_be_bytes(b))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N]> {
        let head = self
            .buf
            .get(..N)
            .ok_or(malformed("field runs past the packet"))?;
        let mut out = [0u8; N];
        out.copy_from_slice(head);
        bytes::Buf::advance(&mut self.buf, N);
        Ok(out)
    }

    /// A variable byte integer of at most four bytes.
    pub(crate) fn varint(&mut self) -> Result<u32> {
        match parse_varint(&self.buf)? {
            Some((value, used)) => {
                bytes::Buf::advance(&mut self.buf, used);
                Ok(value)
            }
            None => Err(malformed("variable byte integer runs past the packet")),
        }
    }

    /// The next `n` bytes, zero-copy.
    pub(crate) fn take(&mut self, n: usize) -> Result<Bytes> {
        if n > self.buf.len() {
            return Err(malformed("length runs past the packet"));
        }
        Ok(self.buf.split_to(n))
    }

    /// Two-byte length followed by that many bytes (§1.5.6).
    pub(crate) fn binary(&mut self) -> Result<Bytes> {
        let n = self.u16()? as usize;
        self.take(n)
    }

    /// Two-byte length followed by an MQTT UTF-8 string (§1.5.4).
    pub(crate) fn string(&mut self) -> Result<ByteStr> {
        let raw = self.binary()?;
        ByteStr::try_from_bytes(raw).map_err(|_| malformed("invalid MQTT UTF-8 string"))
    }

    /// A UTF-8 string pair (§1.5.7).
    pub(crate) fn pair(&mut self) -> Result<(ByteStr, ByteStr)> {
        let k = self.string()?;
        let v = self.string()?;
        Ok((k, v))
    }

    /// Everything left, zero-copy.
    pub(crate) fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// A sub-reader over the next `n` bytes.
    pub(crate) fn sub(&mut self, n: usize) -> Result<Reader> {
        Ok(Reader::new(self.take(n)?))
    }

    /// The packet must end here: trailing bytes are malformed.
    pub(crate) fn finish(&self) -> Result<()> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(malformed("trailing bytes after the last field"))
        }
    }
}

/// Parses a variable byte integer from the front of `buf`: `Ok(None)` when more bytes are
/// needed, `Ok(Some((value, bytes_used)))` otherwise. A fourth byte with the continuation bit
/// is malformed (it announces a fifth).
pub(crate) fn parse_varint(buf: &[u8]) -> Result<Option<(u32, usize)>> {
    let mut value = 0u32;
    for i in 0..4 {
        let Some(&b) = buf.get(i) else {
            return Ok(None);
        };
        value |= u32::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some((value, i + 1)));
        }
    }
    // Four bytes, each with the continuation bit: a fifth would follow.
    Err(malformed("variable byte integer longer than 4 bytes"))
}

/// Bytes a variable byte integer takes. Panics above [`VARINT_MAX`] (a caller bug).
pub(crate) fn varint_len(v: usize) -> usize {
    assert!(
        v <= VARINT_MAX as usize,
        "variable byte integer {v} too large"
    );
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

pub(crate) fn put_varint(buf: &mut BytesMut, v: usize) {
    assert!(
        v <= VARINT_MAX as usize,
        "variable byte integer {v} too large"
    );
    let mut v = v;
    loop {
        let mut b = (v & 0x7F) as u8;
        v >>= 7;
        if v > 0 {
            b |= 0x80;
        }
        buf.put_u8(b);
        if v == 0 {
            break;
        }
    }
}

/// Length of a string on the wire, prefix included.
pub(crate) fn str_len(s: &ByteStr) -> usize {
    2 + s.len()
}

/// Length of binary data on the wire, prefix included.
pub(crate) fn bin_len(b: &[u8]) -> usize {
    2 + b.len()
}

pub(crate) fn put_str(buf: &mut BytesMut, s: &ByteStr) {
    put_bin(buf, s.as_bytes());
}

/// Writes binary data with its two-byte length. Panics above 65,535 bytes (a caller bug: the
/// spec cannot carry it, and everything decoded fits).
pub(crate) fn put_bin(buf: &mut BytesMut, b: &[u8]) {
    let n = u16::try_from(b.len()).expect("binary data longer than 65535 bytes");
    buf.put_u16(n);
    buf.put_slice(b);
}

/// Writes a fixed header: first byte and remaining length.
pub(crate) fn put_header(buf: &mut BytesMut, first: u8, remaining: usize) {
    buf.put_u8(first);
    put_varint(buf, remaining);
}

/// Total packet length for a remaining length.
pub(crate) fn total_len(remaining: usize) -> usize {
    1 + varint_len(remaining) + remaining
}
