//! Build script of chainlog-bench: records the git revision of the build for the machine
//! fingerprint (`CHAINLOG_GIT_REVISION`: short hash, `-dirty` when tracked files differed from
//! it, `unknown` when git or the checkout is missing). It reruns when HEAD, the branch it points
//! to or the index change; an edit that is neither committed nor staged does not rerun it, so
//! `-dirty` is as of the last commit, checkout or `git add`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// `git ARGS` run in `dir`, its trimmed stdout if it succeeded.
fn git(dir: &Path, args: &[&str]) -> Option<String> {
    let output = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .ok()?;
    if !output.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

fn main() {
    let manifest_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let revision = match git(&manifest_dir, &["rev-parse", "--short", "HEAD"]) {
        Some(hash) => {
            let dirty = git(
                &manifest_dir,
                &["status", "--porcelain", "--untracked-files=no"],
            )
            .is_some_and(|s| !s.is_empty());
            if dirty {
                format!("{hash}-dirty")
            } else {
                hash
            }
        }
        None => "unknown".to_string(),
    };
    println!("cargo:rustc-env=CHAINLOG_GIT_REVISION={revision}");
    let mut watched = vec!["HEAD".to_string(), "index".to_string()];
    if let Some(branch) = git(&manifest_dir, &["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for path in watched {
        if let Some(file) = git(
            &manifest_dir,
            &["rev-parse", "--path-format=absolute", "--git-path", &path],
        ) {
            println!("cargo:rerun-if-changed={file}");
        }
    }
    // Outside a checkout there is nothing to watch: rerun only when the script changes.
    println!("cargo:rerun-if-changed=build.rs");
}
