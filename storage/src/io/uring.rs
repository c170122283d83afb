//! The io_uring backend: O_DIRECT files, `RWF_DSYNC` writes or writes linked to `fdatasync`
//! in the ring. Buffers are not registered with the ring: registering pins every page of
//! them, and a write buffer is sized for the largest frame (4 MiB) while most frames are a
//! few KiB (ARCHITECTURE.md, "Memory per shard").

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use io_uring::{opcode, squeue, types, IoUring};

use super::{Completion, Durability, FileId, Io, EXTERNAL_TOKEN};
use crate::buf::AlignedBuf;

/// An operation between submission and completion.
#[derive(Debug)]
struct Slot {
    token: u64,
    buf: Option<AlignedBuf>,
    /// Bytes a write must transfer (a short write is an error); 0 for reads and syncs.
    expected: usize,
    /// Completions still to come (2 for a write linked to fdatasync).
    parts_left: u8,
    result: Option<io::Result<usize>>,
}

/// [`Io`] over one io_uring instance; one per shard thread.
pub struct UringIo {
    ring: IoUring,
    files: Vec<Option<i32>>,
    slots: Vec<Option<Slot>>,
    free_slots: Vec<usize>,
    in_flight: usize,
}

const PART_BITS: u64 = 1;

impl std::fmt::Debug for UringIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringIo")
            .field("in_flight", &self.in_flight)
            .finish_non_exhaustive()
    }
}

fn cstring(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

impl UringIo {
    /// A ring with room for `entries` submissions.
    pub fn new(entries: u32) -> io::Result<UringIo> {
        let ring = IoUring::builder().build(entries)?;
        Ok(UringIo {
            ring,
            files: Vec::new(),
            slots: Vec::new(),
            free_slots: Vec::new(),
            in_flight: 0,
        })
    }

    fn fd(&self, file: FileId) -> i32 {
        self.files
            .get(file.0 as usize)
            .copied()
            .flatten()
            .unwrap_or_else(|| panic!("file {file:?} is not open"))
    }

    fn add_file(&mut self, fd: i32) -> FileId {
        if let Some(i) = self.files.iter().position(Option::is_none) {
            self.files[i] = Some(fd);
            FileId(i as u32)
        } else {
            self.files.push(Some(fd));
            FileId((self.files.len() - 1) as u32)
        }
    }

    fn add_slot(&mut self, slot: Slot) -> u64 {
        self.in_flight += 1;
        match self.free_slots.pop() {
            Some(i) => {
                self.slots[i] = Some(slot);
                i as u64
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u64
            }
        }
    }

    /// Submits an operation built by the ring's owner (its sockets), tagged with `token`,
    /// which must have [`EXTERNAL_TOKEN`] set. Its completion comes back from `wait` with that
    /// token, no buffer, and the raw result (bytes transferred, or an accepted descriptor).
    /// Only single-shot operations: each submission must produce exactly one completion.
    ///
    /// # Safety
    ///
    /// Every buffer and descriptor the entry refers to must stay valid, and buffers must not
    /// be touched, until the completion has been returned by `wait`.
    pub unsafe fn submit_external(&mut self, entry: squeue::Entry, token: u64) {
        assert_ne!(
            token & EXTERNAL_TOKEN,
            0,
            "external tokens carry EXTERNAL_TOKEN"
        );
        self.in_flight += 1;
        self.push(&entry.user_data(token));
    }

    fn push(&mut self, entry: &squeue::Entry) {
        loop {
            // SAFETY: every buffer an entry points to is owned by its slot until completion,
            // and every fd stays open until its operations complete (close's contract).
            if unsafe { self.ring.submission().push(entry) }.is_ok() {
                return;
            }
            // The submission queue is full: hand it to the kernel and try again.
            if let Err(e) = self.ring.submit() {
                crate::fatal::fatal(crate::fatal::FatalReason::Submit {
                    error: e.to_string(),
                });
            }
        }
    }

    fn drain(&mut self, out: &mut Vec<Completion>) {
        let mut done: Vec<(u64, i32)> = Vec::new();
        for cqe in self.ring.completion() {
            done.push((cqe.user_data(), cqe.result()));
        }
        for (user_data, res) in done {
            if user_data & EXTERNAL_TOKEN != 0 {
                self.in_flight -= 1;
                let result = if res < 0 {
                    Err(io::Error::from_raw_os_error(-res))
                } else {
                    Ok(res as usize)
                };
                out.push(Completion {
                    token: user_data,
                    buf: None,
                    result,
                });
                continue;
            }
            let index = (user_data >> PART_BITS) as usize;
            let slot = self.slots[index]
                .as_mut()
                .expect("completion for a free slot");
            let part_result = if res < 0 {
                Err(io::Error::from_raw_os_error(-res))
            } else if user_data & 1 == 0 && slot.expected != 0 && (res as usize) < slot.expected {
                Err(io::Error::new(
                    io::ErrorKind::WriteZero,
                    format!("short write: {res} of {} bytes", slot.expected),
                ))
            } else {
                Ok(res as usize)
            };
            // The first error wins (a failed write cancels its linked flush with ECANCELED);
            // the data part's byte count wins over its flush's 0.
            let is_data_part = user_data & 1 == 0;
            match (&slot.result, part_result) {
                (Some(Err(_)), _) => {}
                (_, Err(e)) => slot.result = Some(Err(e)),
                (_, Ok(n)) if is_data_part => slot.result = Some(Ok(n)),
                (Some(Ok(_)), Ok(_)) => {}
                (None, Ok(n)) => slot.result = Some(Ok(n)),
            }
            slot.parts_left -= 1;
            if slot.parts_left == 0 {
                let slot = self.slots[index].take().expect("slot");
                self.free_slots.push(index);
                self.in_flight -= 1;
                out.push(Completion {
                    token: slot.token,
                    buf: slot.buf,
                    result: slot.result.expect("a completed slot has a result"),
                });
            }
        }
    }
}

impl Drop for UringIo {
    fn drop(&mut self) {
        // Buffers owned by slots must outlive the kernel's use of them: wait for everything.
        let mut out = Vec::new();
        while self.in_flight > 0 {
            if self.wait(1, &mut out).is_err() {
                // The ring is broken; leaking the buffers is the only safe choice.
                for slot in self.slots.iter_mut().flatten() {
                    std::mem::forget(slot.buf.take());
                }
                break;
            }
            out.clear();
        }
        for fd in self.files.iter().flatten() {
            // SAFETY: fd was opened by this backend and is closed once.
            unsafe { libc::close(*fd) };
        }
    }
}

impl Io for UringIo {
    fn create_dir_all(&mut self, dir: &Path) -> io::Result<()> {
        std::fs::create_dir_all(dir)
    }

    fn list_dir(&mut self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            names.push(entry?.file_name().to_string_lossy().into_owned());
        }
        names.sort();
        Ok(names)
    }

    fn open(&mut self, path: &Path, create: bool) -> io::Result<FileId> {
        let c = cstring(path)?;
        let mut flags = libc::O_RDWR | libc::O_DIRECT | libc::O_CLOEXEC;
        if create {
            flags |= libc::O_CREAT | libc::O_EXCL;
        }
        // SAFETY: c is a valid NUL-terminated path.
        let fd = cvt(unsafe { libc::open(c.as_ptr(), flags, 0o644) })?;
        Ok(self.add_file(fd))
    }

    fn open_dir(&mut self, path: &Path) -> io::Result<FileId> {
        let c = cstring(path)?;
        // SAFETY: c is a valid NUL-terminated path.
        let fd = cvt(unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        })?;
        Ok(self.add_file(fd))
    }

    fn file_size(&mut self, file: FileId) -> io::Result<u64> {
        // SAFETY: zeroed stat is a valid out-parameter.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: the fd is open and st is writable.
        cvt(unsafe { libc::fstat(self.fd(file), &mut st) })?;
        Ok(st.st_size as u64)
    }

    fn allocate(&mut self, file: FileId, len: u64) -> io::Result<()> {
        // SAFETY: the fd is open.
        cvt(unsafe { libc::fallocate(self.fd(file), 0, 0, len as libc::off_t) }).map(drop)
    }

    fn close(&mut self, file: FileId) {
        if let Some(fd) = self.files.get_mut(file.0 as usize).and_then(Option::take) {
            // SAFETY: fd was opened here and is closed once.
            unsafe { libc::close(fd) };
        }
    }

    fn remove(&mut self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn write(
        &mut self,
        file: FileId,
        offset: u64,
        buf: AlignedBuf,
        durability: Durability,
        token: u64,
    ) {
        let fd = types::Fd(self.fd(file));
        let (ptr, len) = (buf.as_ptr(), buf.len() as u32);
        let parts = if durability == Durability::Fdatasync {
            2
        } else {
            1
        };
        let slot = self.add_slot(Slot {
            token,
            buf: Some(buf),
            expected: len as usize,
            parts_left: parts,
            result: None,
        });
        let rw_flags = if durability == Durability::Dsync {
            libc::RWF_DSYNC
        } else {
            0
        };
        let write = opcode::Write::new(fd, ptr, len)
            .offset(offset)
            .rw_flags(rw_flags)
            .build();
        if durability == Durability::Fdatasync {
            self.push(
                &write
                    .flags(squeue::Flags::IO_LINK)
                    .user_data(slot << PART_BITS),
            );
            let sync = opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build();
            self.push(&sync.user_data((slot << PART_BITS) | 1));
        } else {
            self.push(&write.user_data(slot << PART_BITS));
        }
    }

    fn read(&mut self, file: FileId, offset: u64, mut buf: AlignedBuf, token: u64) {
        let fd = types::Fd(self.fd(file));
        let (ptr, len) = (buf.as_mut_ptr(), buf.len() as u32);
        let slot = self.add_slot(Slot {
            token,
            buf: Some(buf),
            expected: 0,
            parts_left: 1,
            result: None,
        });
        self.push(
            &opcode::Read::new(fd, ptr, len)
                .offset(offset)
                .build()
                .user_data(slot << PART_BITS),
        );
    }

    fn sync(&mut self, file: FileId, token: u64) {
        let fd = types::Fd(self.fd(file));
        let slot = self.add_slot(Slot {
            token,
            buf: None,
            expected: 0,
            parts_left: 1,
            result: None,
        });
        self.push(
            &opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build()
                .user_data(slot << PART_BITS),
        );
    }

    fn wait(&mut self, min_complete: usize, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        let min = min_complete.min(self.in_flight);
        loop {
            let got = out.len() - before;
            let want = min.saturating_sub(got + self.ring.completion().len());
            match self.ring.submit_and_wait(want) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.drain(out);
            if out.len() - before >= min {
                return Ok(());
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}
