//! Recovery after a crash reads what was written, not the whole preallocated
//! segment: its search for records past the end must not walk the zeros that
//! its own read-ahead brought into the page cache (which took a restarted
//! broker seconds per gigabyte segment).

mod common;

use std::os::fd::AsRawFd;
use std::path::Path;

use common::{config, message};
use dduomq_broker::store::{Store, StoreConfig};

/// Segments large enough that walking one is unmistakable.
const SEGMENT: u64 = 256 << 20;

/// Where the first hole at or after `from` starts in `path` (the file's size
/// when the file system reports none).
fn hole_after(path: &Path, from: u64) -> u64 {
    let file = std::fs::File::open(path).unwrap();
    // SAFETY: plain syscall on an fd we own.
    let at = unsafe { libc::lseek(file.as_raw_fd(), from as libc::off_t, libc::SEEK_HOLE) };
    assert!(at >= 0, "SEEK_HOLE: {}", std::io::Error::last_os_error());
    at as u64
}

#[test]
fn crash_recovery_does_not_read_the_preallocated_rest_of_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = StoreConfig {
        segment_size_bytes: SEGMENT,
        ..config(dir.path())
    };
    let store = Store::open(cfg.clone()).unwrap();
    for i in 0..20 {
        store
            .append_blocking(vec![message("t", 0, format!("m{i}").as_bytes(), &[], "")])
            .unwrap();
    }
    let end = store.stats().commit_log_max;
    store.close().unwrap();
    drop(store);
    let segment = dir.path().join("commitlog").join(format!("{:020}", 0));
    if hole_after(&segment, end) == SEGMENT {
        eprintln!("this file system reports no holes in preallocated files; nothing to check");
        return;
    }
    // As after a crash past the last checkpoint: recovery scans to the end and
    // searches past it for further records. With a cold page cache (after a
    // machine restart) that scan's first read reads ahead past the end.
    std::fs::remove_file(dir.path().join("checkpoint")).unwrap();
    let file = std::fs::File::open(&segment).unwrap();
    // SAFETY: plain syscall on an fd we own; the pages are clean (closed store).
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");

    let store = Store::open(cfg).unwrap();
    assert_eq!(store.recovery_report().end, end);
    assert_eq!(store.recovery_report().records_replayed, 20);
    assert!(
        hole_after(&segment, end) < SEGMENT,
        "recovery read the whole preallocated segment"
    );
    store.close().unwrap();
}
