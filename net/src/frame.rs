//! Framing: the 24-byte [`FrameHeader`], its [`Flags`], finding a whole frame at the start of
//! a buffer ([`parse_frame`]) and writing one (header, body, length and CRC).
//!
//! ```text
//! offset  size  field
//!      0     4  length      bytes after this field: 20 + body length
//!      4     2  opcode
//!      6     2  flags       bit0 RESPONSE, bit1 ERROR, bit2 PUSH, bit3 END; others 0
//!      8     8  request_id  chosen by the client, echoed in responses and pushes
//!     16     4  crc         CRC32C of bytes 4..16, then of the body
//!     20     4  reserved    0
//!     24     .  body
//! ```
//!
//! Framing knows nothing about opcodes: an unknown opcode is the message decoder's business.

use crate::{Error, Limits};
use bytemuck::{Pod, Zeroable};

/// The header of every frame. Little-endian on the wire (this crate only builds for
/// little-endian targets, so the in-memory layout is the wire layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Pod, Zeroable)]
#[repr(C)]
pub struct FrameHeader {
    /// Bytes after this field: 20 + the body's length.
    pub length: u32,
    /// An [`Opcode`](crate::Opcode) (0 only on a connection-level ERROR).
    pub opcode: u16,
    /// [`Flags`] bits.
    pub flags: u16,
    /// Chosen by the client; echoed in responses and pushes.
    pub request_id: u64,
    /// CRC32C of header bytes 4..16 (opcode, flags, request_id) followed by the body.
    pub crc: u32,
    /// Zero.
    pub reserved: u32,
}

/// Size of [`FrameHeader`].
pub const FRAME_HEADER_BYTES: usize = std::mem::size_of::<FrameHeader>();
/// The smallest `length`: a frame with an empty body.
pub const FRAME_LENGTH_MIN: u32 = (FRAME_HEADER_BYTES - LENGTH_BYTES) as u32;

const LENGTH_BYTES: usize = 4;
/// The header bytes the CRC covers, before the body.
const CRC_COVERED: std::ops::Range<usize> = 4..16;
const CRC_OFFSET: usize = 16;

const _: () = assert!(FRAME_HEADER_BYTES == 24);
const _: () = assert!(FRAME_HEADER_BYTES.is_multiple_of(8));
const _: () = assert!(std::mem::align_of::<FrameHeader>() == 8);
const _: () = assert!(std::mem::offset_of!(FrameHeader, opcode) == 4);
const _: () = assert!(std::mem::offset_of!(FrameHeader, flags) == 6);
const _: () = assert!(std::mem::offset_of!(FrameHeader, request_id) == 8);
const _: () = assert!(std::mem::offset_of!(FrameHeader, crc) == CRC_OFFSET);
const _: () = assert!(std::mem::offset_of!(FrameHeader, reserved) == 20);

/// The `flags` field of a frame header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Flags(u16);

impl Flags {
    /// No flags: a request.
    pub const NONE: Flags = Flags(0);
    /// bit0: a response (or push) to the request with this frame's request id.
    pub const RESPONSE: Flags = Flags(1);
    /// bit1: the body is an ERROR body.
    pub const ERROR: Flags = Flags(1 << 1);
    /// bit2: a server-initiated stream item (subscriptions).
    pub const PUSH: Flags = Flags(1 << 2);
    /// bit3: the last item of a stream.
    pub const END: Flags = Flags(1 << 3);
    /// Every bit version 1 defines.
    pub const KNOWN: Flags = Flags(0b1111);

    /// Flags from their bits, or `None` if an undefined bit is set.
    pub const fn from_bits(bits: u16) -> Option<Flags> {
        if bits & !Flags::KNOWN.0 == 0 {
            Some(Flags(bits))
        } else {
            None
        }
    }

    /// The bits.
    pub const fn bits(self) -> u16 {
        self.0
    }

    /// True if every bit of `other` is set in `self`.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;

    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

/// A whole, CRC-checked frame, borrowing its body from the buffer it was parsed from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The opcode, not yet checked against the defined ones.
    pub opcode: u16,
    /// The flags (only defined bits are set).
    pub flags: Flags,
    /// The request id.
    pub request_id: u64,
    /// The body.
    pub body: &'a [u8],
}

impl Frame<'_> {
    /// The frame's total size, header included: how far to advance past it in the buffer.
    pub fn frame_bytes(&self) -> usize {
        FRAME_HEADER_BYTES + self.body.len()
    }
}

/// Finds the frame at the start of `buf`. `Ok(None)`: `buf` does not hold a whole frame yet
/// (read more and call again; a frame never needs more than `limits.frame_bytes_max` bytes).
/// `Ok(Some(frame))`: the frame occupies `buf[..frame.frame_bytes()]`. An error means the
/// stream is not a valid frame stream: the server answers MALFORMED and closes.
///
/// The length is checked as soon as its 4 bytes are there, so an oversized frame is refused
/// before it is buffered; everything else once the whole frame is: first the CRC (so a
/// corrupted frame is reported as such), then the reserved field and the flag bits.
pub fn parse_frame<'a>(buf: &'a [u8], limits: &Limits) -> Result<Option<Frame<'a>>, Error> {
    let Some(length) = buf.first_chunk::<LENGTH_BYTES>() else {
        return Ok(None);
    };
    let length = u32::from_le_bytes(*length);
    if length < FRAME_LENGTH_MIN {
        return Err(Error::FrameTooShort { length });
    }
    let frame_bytes = LENGTH_BYTES as u64 + u64::from(length);
    if frame_bytes > u64::from(limits.frame_bytes_max) {
        return Err(Error::FrameTooLarge {
            frame_bytes,
            max: limits.frame_bytes_max,
        });
    }
    // frame_bytes <= frame_bytes_max, a u32, so it fits a usize.
    let frame_bytes = frame_bytes as usize;
    let Some(frame) = buf.get(..frame_bytes) else {
        return Ok(None);
    };
    let (head, body) = frame.split_at(FRAME_HEADER_BYTES);
    let header: FrameHeader = bytemuck::pod_read_unaligned(head);
    let computed = frame_crc(head, body);
    if header.crc != computed {
        return Err(Error::BadFrameCrc {
            stored: header.crc,
            computed,
        });
    }
    if header.reserved != 0 {
        return Err(Error::FrameReservedNonzero {
            value: header.reserved,
        });
    }
    let Some(flags) = Flags::from_bits(header.flags) else {
        return Err(Error::UnknownFlags {
            flags: header.flags,
        });
    };
    Ok(Some(Frame {
        opcode: header.opcode,
        flags,
        request_id: header.request_id,
        body,
    }))
}

/// The CRC of a frame whose header bytes are `head` (at least 16) and body `body`.
fn frame_crc(head: &[u8], body: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&head[CRC_COVERED]), body)
}

/// Starts a frame at the end of `out`: a header with `length` and `crc` still 0. Returns the
/// frame's start offset, for [`finish_frame`].
pub(crate) fn begin_frame(out: &mut Vec<u8>, opcode: u16, flags: Flags, request_id: u64) -> usize {
    let start = out.len();
    let header = FrameHeader {
        length: 0,
        opcode,
        flags: flags.bits(),
        request_id,
        crc: 0,
        reserved: 0,
    };
    out.extend_from_slice(bytemuck::bytes_of(&header));
    start
}

/// Completes the frame that starts at `start`, runs to the end of `out` and goes on with
/// `tail`, which the caller sends right after it (it is not copied into `out`): fills `length`
/// and `crc`, both covering `tail`.
pub(crate) fn finish_frame_before(out: &mut [u8], start: usize, tail: &[u8]) {
    let frame = &mut out[start..];
    assert!(
        frame.len() >= FRAME_HEADER_BYTES,
        "finish_frame_before without begin_frame"
    );
    let length = u32::try_from(frame.len() + tail.len() - LENGTH_BYTES)
        .expect("a frame's length fits a u32");
    frame[..LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
    let (head, body) = frame.split_at_mut(FRAME_HEADER_BYTES);
    let crc = crc32c::crc32c_append(frame_crc(head, body), tail);
    head[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

/// Completes the frame that starts at `start` and runs to the end of `out`: fills `length`
/// and `crc`.
pub(crate) fn finish_frame(out: &mut [u8], start: usize) {
    let frame = &mut out[start..];
    assert!(
        frame.len() >= FRAME_HEADER_BYTES,
        "finish_frame without begin_frame"
    );
    let length = u32::try_from(frame.len() - LENGTH_BYTES).expect("a frame's length fits a u32");
    frame[..LENGTH_BYTES].copy_from_slice(&length.to_le_bytes());
    let (head, body) = frame.split_at_mut(FRAME_HEADER_BYTES);
    let crc = frame_crc(head, body);
    head[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let start = begin_frame(&mut out, 7, Flags::RESPONSE | Flags::END, 0x0102_0304);
        out.extend_from_slice(body);
        finish_frame(&mut out, start);
        out
    }

    #[test]
    fn a_written_frame_parses_back() {
        let bytes = frame(b"abc");
        let parsed = parse_frame(&bytes, &Limits::DEFAULT).unwrap().unwrap();
        assert_eq!(parsed.opcode, 7);
        assert_eq!(parsed.flags, Flags::RESPONSE | Flags::END);
        assert_eq!(parsed.request_id, 0x0102_0304);
        assert_eq!(parsed.body, b"abc");
        assert_eq!(parsed.frame_bytes(), bytes.len());
        assert_eq!(&bytes[..4], &23u32.to_le_bytes());
    }

    #[test]
    fn every_bit_flip_outside_the_length_is_detected() {
        let bytes = frame(b"some body");
        for bit in 32..bytes.len() * 8 {
            let mut bad = bytes.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            assert!(parse_frame(&bad, &Limits::DEFAULT).is_err(), "bit {bit}");
        }
    }

    #[test]
    fn trailing_bytes_belong_to_the_next_frame() {
        let mut bytes = frame(b"x");
        let len = bytes.len();
        bytes.extend_from_slice(&frame(b"yz"));
        let first = parse_frame(&bytes, &Limits::DEFAULT).unwrap().unwrap();
        assert_eq!(first.frame_bytes(), len);
        let second = parse_frame(&bytes[len..], &Limits::DEFAULT)
            .unwrap()
            .unwrap();
        assert_eq!(second.body, b"yz");
    }

    #[test]
    fn flags_accept_only_defined_bits() {
        assert_eq!(Flags::from_bits(0b1111), Some(Flags::KNOWN));
        assert_eq!(Flags::from_bits(0b1_0000), None);
        assert!(Flags::KNOWN.contains(Flags::PUSH | Flags::END));
        assert!(!Flags::RESPONSE.contains(Flags::ERROR));
    }
}
