//! Small files replaced atomically and durably: write a temporary file beside the target,
//! fsync it, rename it over the target, fsync the directory. A crash at any point leaves
//! either the old file or the new one, never a mix; a leftover temporary file is simply
//! overwritten by the next replacement. Used for rare control-path state (a shard's catalog,
//! the controller's state), never on the append path.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Where [`replace`] writes before renaming: `path` with the extension `tmp`.
fn temp_path(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Replaces the file at `path` by `bytes`, atomically and durably.
pub(crate) fn replace(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_with(path, |file| file.write_all(bytes))
}

/// [`replace`] with the temporary file's contents written by `write` (tests cut the write
/// short to play a crash before the rename).
pub(crate) fn replace_with(
    path: &Path,
    write: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let tmp = temp_path(path);
    let mut file = File::create(&tmp)?;
    write(&mut file)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&tmp, path)?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_whole_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        replace(&path, b"first version, longer").expect("first");
        replace(&path, b"second").expect("second");
        assert_eq!(fs::read(&path).expect("read"), b"second");
        assert!(!temp_path(&path).exists());
    }

    #[test]
    fn a_write_cut_short_leaves_the_old_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("f");
        replace(&path, b"old").expect("old");
        let err = replace_with(&path, |file| {
            file.write_all(b"ne")?;
            Err(io::Error::other("power lost"))
        })
        .expect_err("cut");
        assert_eq!(err.to_string(), "power lost");
        assert_eq!(fs::read(&path).expect("read"), b"old");
    }
}
