//! Segment files: naming, headers, and reading frames back through the I/O seam.
//!
//! A shard's directory holds segments `00000000000000000001.seg`, `...02.seg`, ..., each
//! preallocated and zero-filled to `segment_bytes`, starting with a [`SegmentHeader`] block and
//! then frames, the first of which is a snapshot frame. Only the oldest segments are deleted
//! (a prefix), so the ids of the segments present are contiguous.

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use crate::buf::AlignedBuf;
use crate::error::{Error, Result};
use crate::format::{
    block_align, check_frame, FrameFault, FrameHeader, SegmentHeader, BLOCK_SIZE, FORMAT_VERSION,
    FRAME_BYTES_MAX, FRAME_HEADER_BYTES, SEGMENT_MAGIC,
};
use crate::io::{Completion, FileId, Io};

/// The file name of segment `id`.
pub(crate) fn segment_name(id: u64) -> String {
    format!("{id:020}.seg")
}

/// The id of a segment file name, if it is one.
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(".seg")?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// A segment in use (written, or being written).
#[derive(Debug)]
pub(crate) struct Segment {
    pub(crate) id: u64,
    pub(crate) path: PathBuf,
    pub(crate) file: FileId,
    /// Seq of the first frame (its snapshot), 0 while none was written.
    pub(crate) first_seq: u64,
    /// Seq of the last frame written, 0 while none.
    pub(crate) last_seq: u64,
    /// For each log with records here: one past its last LSN here.
    pub(crate) log_ends: HashMap<u64, u64>,
    /// One past the last frame written (where a reader stops).
    pub(crate) end_offset: u64,
    /// The file's size (segments keep the size they were created with).
    pub(crate) bytes: u64,
}

impl Segment {
    pub(crate) fn new(id: u64, path: PathBuf, file: FileId, bytes: u64) -> Segment {
        Segment {
            id,
            path,
            file,
            first_seq: 0,
            last_seq: 0,
            log_ends: HashMap::new(),
            end_offset: BLOCK_SIZE as u64,
            bytes,
        }
    }
}

/// The token of a synchronous read; no other operation uses it.
pub(crate) const READ_TOKEN: u64 = u64::MAX;

/// Submits one read and waits for it; other operations that complete meanwhile are appended
/// to `stash` for the caller to handle.
pub(crate) fn read_sync<I: Io>(
    io: &mut I,
    file: FileId,
    offset: u64,
    buf: AlignedBuf,
    stash: &mut Vec<Completion>,
) -> io::Result<(AlignedBuf, usize)> {
    io.read(file, offset, buf, READ_TOKEN);
    loop {
        let before = stash.len();
        io.wait(1, stash)?;
        if let Some(i) = stash[before..].iter().position(|c| c.token == READ_TOKEN) {
            let completion = stash.remove(before + i);
            let buf = completion.buf.expect("a read returns its buffer");
            return completion.result.map(|n| (buf, n));
        }
    }
}

/// Makes the directory's entries (created or removed files) durable.
pub(crate) fn sync_dir<I: Io>(io: &mut I, dir: &Path) -> Result<()> {
    let d = io.open_dir(dir).map_err(|e| Error::io(dir, e))?;
    io.sync(d, READ_TOKEN);
    let mut out = Vec::new();
    let waited = io.wait(1, &mut out);
    io.close(d);
    waited.map_err(|e| Error::io(dir, e))?;
    match out.pop() {
        Some(c) if c.token == READ_TOKEN => c.result.map(drop).map_err(|e| Error::io(dir, e)),
        _ => unreachable!("sync_dir with other operations in flight"),
    }
}

/// Checks a segment's header block.
pub(crate) fn check_header(
    path: &Path,
    block: &[u8],
    id: u64,
    file_size: u64,
) -> Result<SegmentHeader> {
    let header: SegmentHeader =
        bytemuck::pod_read_unaligned(&block[..std::mem::size_of::<SegmentHeader>()]);
    if header.magic != SEGMENT_MAGIC {
        return Err(Error::corrupt(
            path,
            0,
            "not a chainlog segment (bad magic)",
        ));
    }
    if header.version > FORMAT_VERSION {
        return Err(Error::UnsupportedVersion {
            path: path.to_path_buf(),
            found: header.version,
            supported: FORMAT_VERSION,
        });
    }
    if header.compute_crc() != header.crc {
        return Err(Error::corrupt(path, 0, "segment header fails its checksum"));
    }
    if header.segment_id != id {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "header says segment {} but the file name says {id}",
                header.segment_id
            ),
        ));
    }
    if header.block_size as usize != BLOCK_SIZE {
        return Err(Error::corrupt(
            path,
            0,
            format!(
                "block size {} (this build uses {BLOCK_SIZE})",
                header.block_size
            ),
        ));
    }
    if header.segment_bytes != file_size {
        return Err(Error::corrupt(
            path,
            file_size.min(header.segment_bytes),
            format!(
                "file is {file_size} bytes but was created with {} (truncated or extended)",
                header.segment_bytes
            ),
        ));
    }
    Ok(header)
}

/// A frame found at an offset, borrowed from a [`Window`].
#[derive(Debug)]
pub(crate) struct FoundFrame<'a> {
    pub(crate) header: FrameHeader,
    pub(crate) body: &'a [u8],
    /// Bytes the frame takes on disk (padded).
    pub(crate) disk_bytes: u64,
}

/// Reads a file in large aligned windows, so that scanning small frames costs few reads.
#[derive(Debug)]
pub(crate) struct Window {
    buf: AlignedBuf,
    file: Option<FileId>,
    start: u64,
    valid: usize,
}

impl Window {
    pub(crate) fn new(bytes: usize) -> Window {
        Window {
            buf: AlignedBuf::new(bytes),
            file: None,
            start: 0,
            valid: 0,
        }
    }

    /// `len` bytes at `offset` (block-aligned) of `file`, which is `file_size` long; fewer if
    /// the file ends first.
    pub(crate) fn get<I: Io>(
        &mut self,
        io: &mut I,
        stash: &mut Vec<Completion>,
        file: FileId,
        file_size: u64,
        offset: u64,
        len: usize,
    ) -> io::Result<&[u8]> {
        debug_assert_eq!(offset % BLOCK_SIZE as u64, 0);
        let end = (offset + len as u64).min(file_size);
        let cached = self.file == Some(file)
            && offset >= self.start
            && end <= self.start + self.valid as u64;
        if !cached {
            let want = block_align(len)
                .max(self.buf.capacity())
                .min((file_size - offset.min(file_size)) as usize);
            let mut buf = std::mem::replace(&mut self.buf, AlignedBuf::new(BLOCK_SIZE));
            if buf.capacity() < block_align(want) {
                buf = AlignedBuf::new(block_align(want));
            }
            buf.set_len(block_align(want));
            let (buf, n) = read_sync(io, file, offset, buf, stash)?;
            self.buf = buf;
            self.file = Some(file);
            self.start = offset;
            self.valid = n;
        }
        let from = (offset - self.start) as usize;
        let to = ((end - self.start) as usize).min(self.valid).max(from);
        Ok(&self.buf.as_slice()[from..to])
    }

    /// The frame at `offset` of segment `segment_id`, or why there is none.
    pub(crate) fn frame_at<I: Io>(
        &mut self,
        io: &mut I,
        stash: &mut Vec<Completion>,
        file: FileId,
        file_size: u64,
        segment_id: u64,
        offset: u64,
    ) -> io::Result<std::result::Result<FoundFrame<'_>, FrameFault>> {
        if offset + BLOCK_SIZE as u64 > file_size {
            return Ok(Err(FrameFault::BadLength));
        }
        let head = self.get(io, stash, file, file_size, offset, BLOCK_SIZE)?;
        let header: FrameHeader = bytemuck::pod_read_unaligned(&head[..FRAME_HEADER_BYTES]);
        let total = FRAME_HEADER_BYTES as u64 + u64::from(header.body_len);
        if header.magic == crate::format::FRAME_MAGIC
            && (total > FRAME_BYTES_MAX as u64 || offset + total > file_size)
        {
            return Ok(Err(FrameFault::BadLength));
        }
        let bytes = if header.magic == crate::format::FRAME_MAGIC {
            self.get(io, stash, file, file_size, offset, total as usize)?
        } else {
            self.get(io, stash, file, file_size, offset, BLOCK_SIZE)?
        };
        Ok(check_frame(bytes, segment_id).map(|header| FoundFrame {
            header,
            body: &bytes[FRAME_HEADER_BYTES..FRAME_HEADER_BYTES + header.body_len as usize],
            disk_bytes: block_align(FRAME_HEADER_BYTES + header.body_len as usize) as u64,
        }))
    }
}
