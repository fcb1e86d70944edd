//! A fixed-size, preallocated, memory-mapped file: the building block of commit-log
//! segments, consume-queue files and index files.
//!
//! Files are fully allocated with `fallocate` when created, so a write through the
//! mapping can never hit `SIGBUS` on a full disk: running out of space surfaces as an
//! error at creation time, before anything is written.
//!
//! Concurrency contract: one writer mutates a region that no reader looks at yet;
//! readers only touch regions published to them through an atomic watermark
//! (release/acquire) kept by the owner. That is why the mapping is an [`MmapRaw`]
//! and reads and writes go through raw pointers.

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use memmap2::MmapRaw;

use super::error::{Result, StoreError};

/// A preallocated file mapped shared into memory.
#[derive(Debug)]
pub struct MappedFile {
    path: PathBuf,
    /// Logical position of the file's first byte (e.g. its commit-log offset).
    base: u64,
    len: u64,
    map: MmapRaw,
    file: File,
}

/// Width of a file name: a zero-padded 20-digit base offset.
pub const NAME_WIDTH: usize = 20;

/// The file name of a mapped file with this base.
pub fn file_name(base: u64) -> String {
    format!("{base:0width$}", width = NAME_WIDTH)
}

/// Parses a 20-digit file name back into its base; other names are not ours.
pub fn parse_file_name(name: &str) -> Option<u64> {
    (name.len() == NAME_WIDTH && name.bytes().all(|b| b.is_ascii_digit()))
        .then(|| name.parse().ok())
        .flatten()
}

/// Suffix of a file still being allocated; such leftovers of a crash are deleted.
const TMP_SUFFIX: &str = ".allocating";

/// Lists `(base, path)` of the mapped files in `dir`, sorted by base, deleting
/// leftovers of interrupted creations.
pub fn list_dir(dir: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(StoreError::io(format!("listing {}", dir.display()), e)),
    };
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        if entry.file_name().to_string_lossy().ends_with(TMP_SUFFIX) {
            std::fs::remove_file(entry.path())
                .map_err(|e| StoreError::io(format!("deleting {}", entry.path().display()), e))?;
            continue;
        }
        if let Some(base) = entry.file_name().to_str().and_then(parse_file_name) {
            out.push((base, entry.path()));
        }
    }
    out.sort_by_key(|(base, _)| *base);
    Ok(out)
}

impl MappedFile {
    /// Creates the file fully allocated (zeros) and maps it. The file is allocated
    /// under a temporary name and renamed into place, so a crash never leaves a
    /// short file behind. Fails with [`StoreError::DiskFull`] when the volume has
    /// no room, leaving nothing behind.
    pub fn create(dir: &Path, base: u64, len: u64) -> Result<MappedFile> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::io(format!("creating {}", dir.display()), e))?;
        let path = dir.join(file_name(base));
        if path.exists() {
            return Err(StoreError::io(
                format!("creating {}", path.display()),
                io::Error::from(io::ErrorKind::AlreadyExists),
            ));
        }
        let tmp = dir.join(format!("{}{TMP_SUFFIX}", file_name(base)));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .map_err(|e| StoreError::io(format!("creating {}", tmp.display()), e))?;
        let placed = allocate(&file, len).and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(e) = placed {
            drop(file);
            let _ = std::fs::remove_file(&tmp);
            return Err(StoreError::io(format!("allocating {}", path.display()), e));
        }
        sync_dir(dir)?;
        Self::map(path, file, base, len)
    }

    /// Opens an existing file, which must be exactly `len` bytes long.
    pub fn open(path: &Path, base: u64, len: u64) -> Result<MappedFile> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let actual = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
            .len();
        if actual != len {
            return Err(StoreError::Corrupt {
                offset: base,
                reason: format!("{} is {actual} bytes, expected {len}", path.display()),
            });
        }
        Self::map(path.to_path_buf(), file, base, len)
    }

    /// Extends a file that is shorter than `len` with zeros (allocated), so a
    /// truncated file can be mapped at its full size. Returns its old length.
    pub fn extend_to(path: &Path, len: u64) -> Result<u64> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| StoreError::io(format!("opening {}", path.display()), e))?;
        let old = file
            .metadata()
            .map_err(|e| StoreError::io(format!("stat {}", path.display()), e))?
            .len();
        if old < len {
            allocate(&file, len)
                .and_then(|()| file.sync_all())
                .map_err(|e| StoreError::io(format!("extending {}", path.display()), e))?;
        }
        Ok(old)
    }

    fn map(path: PathBuf, file: File, base: u64, len: u64) -> Result<MappedFile> {
        let map = MmapRaw::map_raw(&file)
            .map_err(|e| StoreError::io(format!("mapping {}", path.display()), e))?;
        Ok(MappedFile {
            path,
            base,
            len,
            map,
            file,
        })
    }

    pub fn base(&self) -> u64 {
        self.base
    }
    pub fn len(&self) -> u64 {
        self.len
    }
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// One past the last logical position in this file.
    pub fn end(&self) -> u64 {
        self.base + self.len
    }

    fn check(&self, pos: usize, len: usize) {
        assert!(
            pos.checked_add(len)
                .is_some_and(|end| end as u64 <= self.len),
            "access {pos}+{len} outside {} bytes of {}",
            self.len,
            self.path.display()
        );
    }

    /// Copies `data` to file position `pos`.
    ///
    /// # Safety
    /// No other thread may read or write `pos..pos + data.len()` concurrently:
    /// the region must not be published to readers yet, and there is one writer.
    pub unsafe fn write(&self, pos: usize, data: &[u8]) {
        self.check(pos, data.len());
        // SAFETY: in bounds (checked above); exclusivity is the caller's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.map.as_mut_ptr().add(pos), data.len())
        };
    }

    /// Writes `data` at file position `pos` through the file (pwrite), not the
    /// mapping. For bulk appends: a store into a mapped page of a preallocated
    /// (unwritten) extent first faults the page in zero-filled, which cost a
    /// quarter of the broker's CPU under load; a write of whole pages does not.
    /// Readers see the bytes through the mapping (one page cache).
    ///
    /// # Safety
    /// As for [`Self::write`].
    pub unsafe fn write_through(&self, pos: usize, data: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        self.check(pos, data.len());
        self.file
            .write_all_at(data, pos as u64)
            .map_err(|e| StoreError::io(format!("writing {} at {pos}", self.path.display()), e))
    }

    /// Borrows `pos..pos + len` of the file.
    ///
    /// # Safety
    /// The region must not be written while the slice lives: it must lie below a
    /// watermark the writer published, or the caller must be the writer itself.
    pub unsafe fn slice(&self, pos: usize, len: usize) -> &[u8] {
        self.check(pos, len);
        // SAFETY: in bounds (checked above); immutability is the caller's contract.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(pos), len) }
    }

    /// The next range at or after `pos` that may hold written data. Extents the
    /// file system knows were never written (`SEEK_DATA` / `SEEK_HOLE`) are
    /// skipped; where it cannot tell, the rest of the file is one range.
    pub fn next_data(&self, pos: u64) -> Option<std::ops::Range<u64>> {
        if pos >= self.len {
            return None;
        }
        let fd = self.file.as_raw_fd();
        // SAFETY: plain syscall on an fd we own; it moves only the fd's file
        // position, which nothing else uses (writes are positional).
        let start = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if start < 0 {
            return match io::Error::last_os_error().raw_os_error() {
                Some(libc::ENXIO) => None,
                _ => Some(pos..self.len),
            };
        }
        // SAFETY: as above.
        let end = unsafe { libc::lseek(fd, start, libc::SEEK_HOLE) };
        let end = if end < 0 {
            self.len
        } else {
            (end as u64).min(self.len)
        };
        ((start as u64) < self.len).then_some(start as u64..end)
    }

    /// Durably flushes `pos..pos + len` (msync, which on Linux is an fdatasync of
    /// the range).
    pub fn flush_range(&self, pos: usize, len: usize) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.check(pos, len);
        self.map
            .flush_range(pos, len)
            .map_err(|e| StoreError::io(format!("flushing {}", self.path.display()), e))
    }

    /// Deletes the file; the mapping stays valid until the last reference is dropped.
    pub fn remove(&self) -> Result<()> {
        std::fs::remove_file(&self.path)
            .map_err(|e| StoreError::io(format!("deleting {}", self.path.display()), e))
    }
}

/// Reserves real blocks for the whole file (not a sparse file), so later writes
/// through the mapping cannot fail for lack of space.
fn allocate(file: &File, len: u64) -> io::Result<()> {
    // SAFETY: plain syscall on an fd we own.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EOPNOTSUPP) {
        // File systems without fallocate: posix_fallocate writes zeros instead.
        // SAFETY: as above.
        let rc = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, len as libc::off_t) };
        return if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::from_raw_os_error(rc))
        };
    }
    Err(err)
}

/// Replaces `dir/name` with `bytes` atomically and durably: written to
/// `name.tmp`, fsynced, renamed over the file, and the directory fsynced, so a
/// crash leaves the old file or the new one, never a mix.
pub(crate) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<()> {
    let tmp = dir.join(format!("{name}.tmp"));
    let ctx = |e| StoreError::io(format!("writing {}", tmp.display()), e);
    let mut f = File::create(&tmp).map_err(ctx)?;
    let written = f.write_all(bytes).and_then(|()| f.sync_data());
    if let Err(e) = written {
        drop(f);
        let _ = std::fs::remove_file(&tmp);
        return Err(ctx(e));
    }
    std::fs::rename(&tmp, dir.join(name)).map_err(ctx)?;
    sync_dir(dir)
}

/// Makes a directory entry change (create, rename, delete) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StoreError::io(format!("syncing directory {}", dir.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        assert_eq!(file_name(1024), "00000000000000001024");
        assert_eq!(parse_file_name("00000000000000001024"), Some(1024));
        assert_eq!(parse_file_name("1024"), None);
        assert_eq!(parse_file_name("0000000000000000102x"), None);
    }

    #[test]
    fn create_write_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let f = MappedFile::create(dir.path(), 4096, 8192).unwrap();
        // SAFETY: single-threaded test.
        unsafe { f.write(100, b"abc") };
        f.flush_range(0, 8192).unwrap();
        drop(f);
        let f = MappedFile::open(&dir.path().join(file_name(4096)), 4096, 8192).unwrap();
        // SAFETY: single-threaded test.
        assert_eq!(unsafe { f.slice(99, 5) }, b"\0abc\0");
        assert_eq!(f.end(), 4096 + 8192);
        assert!(MappedFile::create(dir.path(), 4096, 8192).is_err());
    }
}
