//! Helpers shared by the storage test suites (each suite uses some of them).
#![allow(dead_code, unused_macros, unused_imports)]

/// `assert_eq!` for store results (`Error` has no `PartialEq`: compared by message).
macro_rules! assert_res {
    ($left:expr, $right:expr $(, $msg:expr)?) => {
        assert_eq!(
            ($left).map_err(|e| e.to_string()),
            ($right).map_err(|e: chainlog_storage::Error| e.to_string())
            $(, $msg)?
        )
    };
}
pub(crate) use assert_res;

/// A directory on the real file system, removed when dropped: under the target dir, because
/// O_DIRECT needs a real file system, which /tmp may not be.
pub(crate) fn real_dir(prefix: &str) -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("tempdir")
}
