//! Records: the Ethernet frames (or pieces of them) inside a Data packet's payload
//! (docs/sleeve.md, "Records").
//!
//! ```text
//!  flags u8 | dst peer (6) | src peer (6) | len u16 | id u32 | offset u32 | total u32
//!  | [offload (10)] | data (len)
//! ```
//!
//! All integers are big-endian, including the offload block (the Linux `virtio_net_hdr`
//! fields of an [`Offload`], see [`crate::offload`]; the TAP device gives and takes them in
//! little-endian order: [`Offload::from_vnet`] and [`Offload::to_vnet`] convert).
//!
//! [`Records`] is the checked zero-copy view of a payload: it yields each record's parsed
//! header and a slice of its data, and stops at the first malformed record. A record is
//! malformed when a flag bit other than bit 0 is set, it is cut short, it is empty
//! (`len == 0` or `total == 0`), its piece lies outside the frame (`offset + len > total`)
//! or the frame is larger than [`MAX_FRAME`].

use thiserror::Error;

pub use crate::offload::Offload;

/// The destination peer name of a broadcast record.
pub const BROADCAST: u64 = 0xFFFF_FFFF_FFFF;
/// Largest peer name: names are 48 bits.
pub const MAX_PEER: u64 = 0xFFFF_FFFF_FFFF;
/// Record header length without the offload block.
pub const RECORD_HEADER_LEN: usize = 27;
/// Length of the offload block (a `virtio_net_hdr`, see [`crate::offload`]).
pub const OFFLOAD_LEN: usize = crate::offload::LEN;
/// Largest frame a record may belong to: a 64 KiB IP packet (the most a segmentation
/// offload frame carries) plus its Ethernet header and two VLAN tags, rounded up.
pub const MAX_FRAME: u32 = 65_600;

const FLAG_OFFLOAD: u8 = 0x01;

/// The parsed header of one record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RecordHeader {
    /// Destination node (48 bits), or [`BROADCAST`].
    pub dst: u64,
    /// Node whose pod sent the frame (48 bits).
    pub src: u64,
    /// Frame number, per source node.
    pub id: u32,
    /// Where this piece starts in the frame.
    pub offset: u32,
    /// Length of the whole frame.
    pub total: u32,
    /// Length of this piece.
    pub len: u16,
    /// The frame's offload header, if it has one.
    pub offload: Option<Offload>,
}

impl RecordHeader {
    /// A record carrying all of a `len`-byte frame.
    pub fn whole(dst: u64, src: u64, id: u32, len: u16, offload: Option<Offload>) -> Self {
        RecordHeader {
            dst,
            src,
            id,
            offset: 0,
            total: u32::from(len),
            len,
            offload,
        }
    }

    /// Length of the encoded record **header**: [`RECORD_HEADER_LEN`], plus
    /// [`OFFLOAD_LEN`] with an offload block. The record takes `encoded_len() + len` bytes.
    pub fn encoded_len(&self) -> usize {
        header_len(self.offload.is_some())
    }

    /// Length of the whole encoded record: header and data.
    pub fn record_len(&self) -> usize {
        self.encoded_len() + usize::from(self.len)
    }

    /// Whether the record carries the whole frame (nothing to reassemble).
    pub fn is_whole(&self) -> bool {
        self.offset == 0 && u32::from(self.len) == self.total
    }

    /// Whether the header is one [`Records`] would accept.
    pub fn is_valid(&self) -> bool {
        self.dst <= MAX_PEER
            && self.src <= MAX_PEER
            && self.len > 0
            && self.total > 0
            && self.total <= MAX_FRAME
            && u64::from(self.offset) + u64::from(self.len) <= u64::from(self.total)
    }
}

/// Record header length with or without the offload block.
pub fn header_len(with_offload: bool) -> usize {
    RECORD_HEADER_LEN + if with_offload { OFFLOAD_LEN } else { 0 }
}

/// Why a payload's records could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Error)]
pub enum RecordError {
    /// The payload ends inside a record's header or data.
    #[error("record cut short")]
    Truncated,
    /// A flag bit other than bit 0 is set.
    #[error("unknown record flag bits")]
    BadFlags,
    /// `len` or `total` is zero.
    #[error("empty record or frame")]
    Empty,
    /// `offset + len > total`.
    #[error("piece outside its frame")]
    BadRange,
    /// `total > MAX_FRAME`.
    #[error("frame too large")]
    TooLarge,
}

fn be48(b: &[u8]) -> u64 {
    b.iter()
        .take(6)
        .fold(0, |acc, &x| (acc << 8) | u64::from(x))
}

/// Writes one record (header, then `data`) at the start of `out`; returns the bytes
/// written. `None`, with nothing written, if `out` is too small, `data.len() != hdr.len`,
/// or the header is not valid (peer names beyond 48 bits, an empty piece, a piece outside
/// its frame, a frame over [`MAX_FRAME`]).
pub fn write_record(out: &mut [u8], hdr: &RecordHeader, data: &[u8]) -> Option<usize> {
    if data.len() != usize::from(hdr.len) || !hdr.is_valid() {
        return None;
    }
    let hl = hdr.encoded_len();
    let n = hl + data.len();
    let out = out.get_mut(..n)?;
    let (h, rest) = out.split_at_mut(RECORD_HEADER_LEN);
    h[0] = if hdr.offload.is_some() {
        FLAG_OFFLOAD
    } else {
        0
    };
    h[1..7].copy_from_slice(&hdr.dst.to_be_bytes()[2..]);
    h[7..13].copy_from_slice(&hdr.src.to_be_bytes()[2..]);
    h[13..15].copy_from_slice(&hdr.len.to_be_bytes());
    h[15..19].copy_from_slice(&hdr.id.to_be_bytes());
    h[19..23].copy_from_slice(&hdr.offset.to_be_bytes());
    h[23..27].copy_from_slice(&hdr.total.to_be_bytes());
    let body = match (&hdr.offload, rest.split_first_chunk_mut::<OFFLOAD_LEN>()) {
        (Some(off), Some((ob, body))) => {
            off.write_wire(ob);
            body
        }
        _ => rest,
    };
    body.copy_from_slice(data);
    Some(n)
}

/// Iterator over the records of a Data payload: `Ok((header, data))` per record; on
/// malformed input one `Err`, then the end.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    failed: bool,
}

impl<'a> Records<'a> {
    /// A view of `payload` (the decrypted payload of a Data packet).
    pub fn new(payload: &'a [u8]) -> Self {
        Records {
            rest: payload,
            failed: false,
        }
    }

    fn parse_one(&mut self) -> Result<(RecordHeader, &'a [u8]), RecordError> {
        let buf = self.rest;
        let (h, after) = buf
            .split_first_chunk::<RECORD_HEADER_LEN>()
            .ok_or(RecordError::Truncated)?;
        let flags = h[0];
        if flags & !FLAG_OFFLOAD != 0 {
            return Err(RecordError::BadFlags);
        }
        let len = u16::from_be_bytes([h[13], h[14]]);
        let total = u32::from_be_bytes([h[23], h[24], h[25], h[26]]);
        let offset = u32::from_be_bytes([h[19], h[20], h[21], h[22]]);
        let (offload, after) = if flags & FLAG_OFFLOAD != 0 {
            let (ob, after) = after
                .split_first_chunk::<OFFLOAD_LEN>()
                .ok_or(RecordError::Truncated)?;
            (Some(Offload::read_wire(ob)), after)
        } else {
            (None, after)
        };
        if len == 0 || total == 0 {
            return Err(RecordError::Empty);
        }
        if total > MAX_FRAME {
            return Err(RecordError::TooLarge);
        }
        if u64::from(offset) + u64::from(len) > u64::from(total) {
            return Err(RecordError::BadRange);
        }
        if after.len() < usize::from(len) {
            return Err(RecordError::Truncated);
        }
        let (data, rest) = after.split_at(usize::from(len));
        self.rest = rest;
        let hdr = RecordHeader {
            dst: be48(&h[1..7]),
            src: be48(&h[7..13]),
            id: u32::from_be_bytes([h[15], h[16], h[17], h[18]]),
            offset,
            total,
            len,
            offload,
        };
        Ok((hdr, data))
    }
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<(RecordHeader, &'a [u8]), RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.rest.is_empty() {
            return None;
        }
        let r = self.parse_one();
        if r.is_err() {
            self.failed = true;
            self.rest = &[];
        }
        Some(r)
    }
}

/// The largest piece of data one record can carry in `room` bytes (0 if not even one byte
/// fits after the header).
pub fn max_piece(room: usize, with_offload: bool) -> usize {
    room.saturating_sub(header_len(with_offload))
        .min(usize::from(u16::MAX))
}

/// Splits bytes `offset..offset + len` of a frame (a whole frame, or a record being split
/// again by a relay) into successive pieces such that each, with its record header, fits
/// in `room` bytes. Every piece but the last is full, so the datagrams come out the same
/// size (what UDP segmentation offload wants). Yields nothing if `room` cannot hold a
/// header and one byte of data ([`max_piece`] is 0).
pub fn pieces(offset: u32, len: u32, room: usize, with_offload: bool) -> Pieces {
    let max = u32::try_from(max_piece(room, with_offload)).unwrap_or(0);
    Pieces {
        next: offset,
        end: if max == 0 {
            offset
        } else {
            offset.saturating_add(len)
        },
        max,
    }
}

/// Iterator returned by [`pieces`]: `(offset, len)` per piece.
#[derive(Clone, Debug)]
pub struct Pieces {
    next: u32,
    end: u32,
    max: u32,
}

impl Iterator for Pieces {
    type Item = (u32, u16);

    fn next(&mut self) -> Option<(u32, u16)> {
        if self.next >= self.end {
            return None;
        }
        let len = (self.end - self.next).min(self.max);
        let at = self.next;
        self.next += len;
        // `max` is at most u16::MAX, so this cannot truncate.
        Some((at, u16::try_from(len).unwrap_or(u16::MAX)))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        if self.max == 0 || self.next >= self.end {
            return (0, Some(0));
        }
        let n = (self.end - self.next).div_ceil(self.max) as usize;
        (n, Some(n))
    }
}

impl ExactSizeIterator for Pieces {}

#[cfg(test)]
mod tests {
    use super::*;

    fn off() -> Offload {
        Offload {
            flags: 1,
            gso_type: 1,
            hdr_len: 66,
            gso_size: 1448,
            csum_start: 34,
            csum_offset: 16,
        }
    }

    #[test]
    fn record_layout() {
        let h = RecordHeader {
            dst: 0x0102_0304_0506,
            src: 0x0a0b_0c0d_0e0f,
            id: 0x1122_3344,
            offset: 5,
            total: 9,
            len: 3,
            offload: None,
        };
        let mut out = [0u8; 64];
        assert_eq!(write_record(&mut out, &h, b"abc"), Some(30));
        #[rustfmt::skip]
        let expect: [u8; 30] = [
            0, 1, 2, 3, 4, 5, 6, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0, 3,
            0x11, 0x22, 0x33, 0x44, 0, 0, 0, 5, 0, 0, 0, 9, b'a', b'b', b'c',
        ];
        assert_eq!(out[..30], expect);
        let mut r = Records::new(&out[..30]);
        assert_eq!(r.next(), Some(Ok((h, &b"abc"[..]))));
        assert_eq!(r.next(), None);
        assert!(!h.is_whole());
        assert_eq!(h.encoded_len(), RECORD_HEADER_LEN);
        assert_eq!(h.record_len(), 30);
    }

    #[test]
    fn offload_record_layout() {
        let h = RecordHeader::whole(BROADCAST, 7, 1, 4, Some(off()));
        assert!(h.is_whole());
        assert_eq!(h.encoded_len(), 37);
        let mut out = [0u8; 41];
        assert_eq!(write_record(&mut out, &h, b"wxyz"), Some(41));
        assert_eq!(out[0], 1);
        assert_eq!(out[1..7], [0xff; 6]);
        // Offload fields are big-endian on the wire.
        assert_eq!(out[27..37], [1, 1, 0, 66, 0x05, 0xa8, 0, 34, 0, 16]);
        assert_eq!(Records::new(&out).next(), Some(Ok((h, &b"wxyz"[..]))));
    }

    #[test]
    fn write_refuses_bad_headers() {
        let mut out = [0u8; 100];
        let good = RecordHeader::whole(1, 2, 3, 3, None);
        assert_eq!(write_record(&mut out[..29], &good, b"abc"), None);
        assert_eq!(write_record(&mut out, &good, b"ab"), None);
        let bad = [
            RecordHeader {
                dst: 1 << 48,
                ..good
            },
            RecordHeader {
                src: 1 << 48,
                ..good
            },
            RecordHeader { offset: 1, ..good },
            RecordHeader {
                total: MAX_FRAME + 1,
                ..good
            },
        ];
        for b in bad {
            assert_eq!(write_record(&mut out, &b, b"abc"), None, "{b:?}");
        }
        assert_eq!(
            write_record(&mut out, &RecordHeader { len: 0, ..good }, b""),
            None
        );
    }

    #[test]
    fn malformed_payloads() {
        let mut out = [0u8; 64];
        let h = RecordHeader::whole(1, 2, 3, 3, None);
        let n = write_record(&mut out, &h, b"abc").unwrap();
        let cases: [(usize, u8, RecordError); 5] = [
            (0, 2, RecordError::BadFlags),
            (0, 1, RecordError::Truncated), // claims an offload block that is not there
            (14, 0, RecordError::Empty),    // len = 0
            (22, 1, RecordError::BadRange), // offset = 1, total 3, len 3
            (24, 0xff, RecordError::TooLarge),
        ];
        for (at, val, err) in cases {
            let mut b = out;
            b[at] = val;
            let mut r = Records::new(&b[..n]);
            assert_eq!(r.next(), Some(Err(err)), "byte {at} = {val}");
            assert_eq!(r.next(), None);
        }
        // Cut anywhere inside: truncated; a trailing partial header too.
        for cut in 1..n {
            let mut r = Records::new(&out[..cut]);
            assert_eq!(r.next(), Some(Err(RecordError::Truncated)));
            assert_eq!(r.next(), None);
        }
        let mut r = Records::new(&out[..n + 5]);
        assert!(matches!(r.next(), Some(Ok(_))));
        assert_eq!(r.next(), Some(Err(RecordError::Truncated)));
        assert_eq!(r.next(), None);
        assert_eq!(Records::new(&[]).next(), None);
    }

    #[test]
    fn pieces_fill_room() {
        // 4000 bytes, 1400-byte room, no offload: 1373 per piece.
        let p: Vec<_> = pieces(0, 4000, 1400, false).collect();
        assert_eq!(p, vec![(0, 1373), (1373, 1373), (2746, 1254)]);
        assert_eq!(pieces(0, 4000, 1400, false).len(), 3);
        let p: Vec<_> = pieces(100, 50, 60, true).collect();
        assert_eq!(p, vec![(100, 23), (123, 23), (146, 4)]);
        assert_eq!(pieces(0, 10, 27, false).count(), 0);
        assert_eq!(pieces(0, 10, 28, false).count(), 10);
        assert_eq!(pieces(0, 0, 1000, false).count(), 0);
        // A piece never exceeds u16 even when the room does.
        let p: Vec<_> = pieces(0, 200_000, 1 << 20, false).collect();
        assert_eq!(p[0], (0, u16::MAX));
        assert_eq!(p.iter().map(|&(_, l)| u32::from(l)).sum::<u32>(), 200_000);
    }
}
