//! Owned, block-aligned buffers for O_DIRECT I/O.
//!
//! A buffer is moved into the I/O seam for the lifetime of an operation and handed back in its
//! completion, so the kernel never sees memory that Rust code could touch meanwhile. The store
//! allocates its write buffers once at startup (nothing on the append path allocates); a large
//! buffer is a mapping of its own whose pages become memory only once written, so a buffer
//! sized for the largest frame costs what the frames it held took (ARCHITECTURE.md, "Memory
//! per shard").
//!
//! An [`AlignedBuf`] holds a raw pointer to its allocation, not a `Box`: moving the buffer (into
//! a write, back out of its completion, between the store's queues) moves neither its bytes nor
//! its address, and asserts no exclusive access to them. That is what lets the store read a
//! frame while its write is in flight, and hand out pinned bytes for a zero-copy send
//! (through the buffer's address, kept aside: ARCHITECTURE.md 9b).

use std::alloc::{self, Layout};
use std::fmt;
use std::ops::Range;
use std::ptr::NonNull;

use crate::format::BLOCK_SIZE;

/// A heap buffer aligned to [`BLOCK_SIZE`], with a fixed capacity and a length.
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    capacity: usize,
    len: usize,
}

// SAFETY: the buffer owns its allocation exclusively; moving it across threads moves ownership.
unsafe impl Send for AlignedBuf {}

/// Buffers of at least this many bytes are mapped on their own (`mmap`), the rest come from
/// the heap.
const MAPPED_BYTES_MIN: usize = 64 << 10;

impl AlignedBuf {
    /// A zeroed buffer of `capacity` bytes (rounded up to the block size), length 0.
    ///
    /// A buffer of [`MAPPED_BYTES_MIN`] or more is an anonymous mapping of its own: the kernel
    /// zeroes its pages as they are first touched, so the bytes it never holds cost no memory
    /// (a write buffer sized for the largest frame mostly holds small ones). The heap's
    /// zeroed allocation at this alignment writes every byte, making all of it resident.
    pub fn new(capacity: usize) -> AlignedBuf {
        let capacity = crate::format::block_align(capacity.max(1));
        let layout = Layout::from_size_align(capacity, BLOCK_SIZE).expect("buffer layout");
        let raw = if capacity >= MAPPED_BYTES_MIN {
            // SAFETY: a new private anonymous mapping; nothing else refers to it.
            let mapped = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    capacity,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if mapped == libc::MAP_FAILED {
                std::ptr::null_mut()
            } else {
                mapped.cast::<u8>()
            }
        } else {
            // SAFETY: the layout has a non-zero size.
            unsafe { alloc::alloc_zeroed(layout) }
        };
        let Some(ptr) = NonNull::new(raw) else {
            alloc::handle_alloc_error(layout)
        };
        assert!(
            ptr.as_ptr().addr().is_multiple_of(BLOCK_SIZE),
            "buffer misaligned"
        );
        AlignedBuf {
            ptr,
            capacity,
            len: 0,
        }
    }

    /// The capacity in bytes (a multiple of the block size).
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Sets the bytes in use. The bytes up to `len` keep whatever they held.
    pub fn set_len(&mut self, len: usize) {
        assert!(
            len <= self.capacity,
            "len {len} beyond capacity {}",
            self.capacity
        );
        self.len = len;
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is valid for `capacity` initialised bytes (zeroed at allocation) and
        // len <= capacity.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// The bytes in use, mutably.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the access exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }

    /// Bytes `range` of those in use, mutably, and only those: the rest of the buffer is not
    /// borrowed, so bytes that someone reads through the buffer's address meanwhile (pinned
    /// records, sent from the buffer) are not disturbed by writes around them.
    pub fn range_mut(&mut self, range: Range<usize>) -> &mut [u8] {
        assert!(
            range.start <= range.end && range.end <= self.len,
            "range {range:?} beyond len {}",
            self.len
        );
        // SAFETY: the range is within the initialised bytes in use, and `&mut self` makes the
        // access exclusive (readers through a `BufAddr` never read bytes being written: the
        // store's invariant, see `BufAddr::slice`).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr().add(range.start), range.len()) }
    }

    /// Where the bytes are; stays true however the buffer is moved, for as long as it lives.
    pub(crate) fn addr(&self) -> BufAddr {
        BufAddr {
            ptr: self.ptr,
            capacity: self.capacity,
        }
    }

    /// The whole capacity, mutably.
    pub fn spare_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_mut_slice`, over the whole (initialised) capacity.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.capacity) }
    }

    /// The start of the buffer, for handing to the kernel.
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr.as_ptr()
    }

    /// The start of the buffer, mutably, for handing to the kernel.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr.as_ptr()
    }
}

/// The address of an [`AlignedBuf`]'s bytes, kept while the buffer itself is elsewhere (moved
/// into an in-flight write): the store reads in-flight frames and pinned records through it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct BufAddr {
    ptr: NonNull<u8>,
    capacity: usize,
}

// SAFETY: only an address; reading through it is `unsafe` (`slice`), and its callers keep the
// buffer alive and unwritten on whatever thread owns the buffer's store.
unsafe impl Send for BufAddr {}

impl BufAddr {
    /// The address of byte `offset`.
    pub(crate) fn at(&self, offset: usize) -> NonNull<u8> {
        assert!(offset <= self.capacity, "offset {offset} beyond the buffer");
        // SAFETY: within the allocation (or one past its end).
        unsafe { self.ptr.add(offset) }
    }

    /// Bytes `range` of the buffer, for a lifetime `'a` the caller picks.
    ///
    /// # Safety
    ///
    /// For all of `'a`, the buffer is alive (wherever it is: in the store or moved into an I/O
    /// operation) and nothing writes the bytes in `range` (an in-flight write's backend only
    /// reads its buffer: the [`Io`](crate::io::Io) contract).
    pub(crate) unsafe fn slice<'a>(self, range: Range<usize>) -> &'a [u8] {
        assert!(
            range.start <= range.end && range.end <= self.capacity,
            "range {range:?} beyond the buffer"
        );
        // SAFETY: in bounds (checked), initialised (zeroed at allocation), alive and not
        // written meanwhile (the caller's contract).
        unsafe { std::slice::from_raw_parts(self.at(range.start).as_ptr(), range.len()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        if self.capacity >= MAPPED_BYTES_MIN {
            // SAFETY: mapped in `new` with this very length, and unmapped once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.capacity) };
        } else {
            let layout = Layout::from_size_align(self.capacity, BLOCK_SIZE).expect("buffer layout");
            // SAFETY: allocated in `new` with this very layout.
            unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
        }
    }
}

impl fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("capacity", &self.capacity)
            .field("len", &self.len)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::block_align;

    #[test]
    fn buffers_are_aligned_and_zeroed() {
        let buf = AlignedBuf::new(10);
        assert_eq!(buf.capacity(), BLOCK_SIZE);
        // From the heap and mapped on their own, written and written again after a drop.
        for capacity in [10, MAPPED_BYTES_MIN - 1, MAPPED_BYTES_MIN, 4 << 20] {
            for _ in 0..2 {
                let mut buf = AlignedBuf::new(capacity);
                assert_eq!(buf.capacity(), block_align(capacity));
                assert_eq!(buf.as_ptr() as usize % BLOCK_SIZE, 0);
                assert!(buf.spare_mut().iter().all(|&b| b == 0));
                buf.spare_mut().fill(0xAB);
            }
        }
    }

    #[test]
    fn moving_a_buffer_keeps_its_bytes_where_they_are() {
        let mut buf = AlignedBuf::new(2 * BLOCK_SIZE);
        buf.set_len(BLOCK_SIZE);
        buf.range_mut(10..13).copy_from_slice(b"abc");
        let addr = buf.addr();
        let mut holder = vec![Some(buf)];
        let buf = holder
            .pop()
            .flatten()
            .expect("moved through a Vec and an Option");
        let buf = Box::new(buf);
        assert_eq!(buf.addr(), addr);
        assert_eq!(buf.as_ptr(), addr.at(0).as_ptr().cast_const());
        // SAFETY: `buf` is alive and nothing writes it.
        assert_eq!(unsafe { addr.slice(10..13) }, b"abc");
    }

    #[test]
    #[should_panic(expected = "beyond len")]
    fn range_mut_stays_within_the_bytes_in_use() {
        let mut buf = AlignedBuf::new(BLOCK_SIZE);
        buf.set_len(8);
        buf.range_mut(4..9);
    }
}
