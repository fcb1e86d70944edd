//! The data-format version of a data directory, so that a broker never reads
//! (or writes into) files laid out by a newer release, and an upgrade knows
//! what it opened.
//!
//! ```text
//!  FORMAT   one ASCII line, replaced atomically (write FORMAT.tmp, fsync,
//!           rename, fsync the directory):
//!           dduomq-data-format <version>\n        e.g. "dduomq-data-format 2\n"
//! ```
//! Version 1 is the layout of the releases before this file existed: a
//! directory holding data but no `FORMAT` file is version 1. Opening first
//! [`read`]s the version, refusing a newer one or a file that does not parse
//! with the file named and nothing written (the format is never guessed);
//! only once every read-only check of the open has passed does it [`stamp`]
//! [`DATA_FORMAT`] into a fresh or older directory, before anything else is
//! written, so a refused open leaves an older directory as it was.

use std::path::Path;

use super::error::{Result, StoreError};
use super::mapped_file::replace_file;

/// The data format this build reads and writes.
pub const DATA_FORMAT: u32 = 2;
/// The format of directories written before format versioning.
pub const UNVERSIONED_FORMAT: u32 = 1;

const FILE: &str = "FORMAT";
const PREFIX: &str = "dduomq-data-format ";
/// Entries that do not make a directory hold data: the lock, a stamp cut short
/// by a crash, and a file system's own directory on a volume's root.
const NOT_DATA: [&str; 3] = ["LOCK", "FORMAT.tmp", "lost+found"];

/// What a data directory held when it was opened (it is [`DATA_FORMAT`] after).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpenedFormat {
    /// Nothing yet: a new store.
    Fresh,
    /// Data without a `FORMAT` file: written before format versioning, i.e.
    /// [`UNVERSIONED_FORMAT`].
    Unversioned,
    /// A `FORMAT` file naming this version (at most [`DATA_FORMAT`]).
    Versioned(u32),
}

impl OpenedFormat {
    /// The version the directory was in.
    pub fn version(self) -> Option<u32> {
        match self {
            OpenedFormat::Fresh => None,
            OpenedFormat::Unversioned => Some(UNVERSIONED_FORMAT),
            OpenedFormat::Versioned(v) => Some(v),
        }
    }
}

/// Stamps [`DATA_FORMAT`] into a directory [`read`] found `opened`, unless it
/// is there already.
pub(crate) fn stamp(dir: &Path, opened: OpenedFormat) -> Result<()> {
    if opened != OpenedFormat::Versioned(DATA_FORMAT) {
        replace_file(dir, FILE, format!("{PREFIX}{DATA_FORMAT}\n").as_bytes())?;
        if let Some(from) = opened.version() {
            tracing::info!(
                dir = %dir.display(),
                from,
                to = DATA_FORMAT,
                "data directory stamped with the current data format"
            );
        }
    }
    Ok(())
}

/// The directory's format, read without writing; a newer or unreadable
/// `FORMAT` file is refused.
pub(crate) fn read(dir: &Path) -> Result<OpenedFormat> {
    let path = dir.join(FILE);
    let text = match std::fs::read(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return if holds_data(dir)? {
                Ok(OpenedFormat::Unversioned)
            } else {
                Ok(OpenedFormat::Fresh)
            };
        }
        Err(e) => return Err(StoreError::io(format!("reading {}", path.display()), e)),
    };
    let version = parse(&text).ok_or_else(|| StoreError::DataFormat {
        path: path.clone(),
        problem: format!(
            "unreadable data-format file {:?} (expected \"{PREFIX}<version>\"); refusing to \
             guess the format: restore the file or the directory from a backup",
            String::from_utf8_lossy(&text)
        ),
    })?;
    if version > DATA_FORMAT {
        return Err(StoreError::DataFormat {
            path,
            problem: format!(
                "the data directory is in data format {version}, written by a newer release; \
                 this broker reads data formats up to {DATA_FORMAT}"
            ),
        });
    }
    Ok(OpenedFormat::Versioned(version))
}

/// `dduomq-data-format <version>\n` with a version of at least 1, exactly.
fn parse(text: &[u8]) -> Option<u32> {
    let digits = std::str::from_utf8(text)
        .ok()?
        .strip_prefix(PREFIX)?
        .strip_suffix('\n')?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&v| v >= UNVERSIONED_FORMAT)
}

fn holds_data(dir: &Path) -> Result<bool> {
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StoreError::io(format!("listing {}", dir.display()), e))?;
        if !NOT_DATA.iter().any(|name| entry.file_name() == *name) {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_only_the_exact_line() {
        assert_eq!(parse(b"dduomq-data-format 2\n"), Some(2));
        assert_eq!(parse(b"dduomq-data-format 17\n"), Some(17));
        for bad in [
            &b"dduomq-data-format 2"[..],
            b"dduomq-data-format +2\n",
            b"dduomq-data-format 0\n",
            b"dduomq-data-format \n",
            b"dduomq-data-format 2\n\n",
            b"dduomq-data-format 99999999999\n",
            b"2\n",
            b"",
            b"\xff\xfe",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
