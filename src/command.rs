//! What the server commands (`chainlog node`, `chainlog controller`) share: reading a TOML
//! settings file, and how a run ends (its message on stderr and its exit code).

use std::fmt::Display;
use std::path::Path;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

/// Reads the TOML settings file at `path`; errors name the file.
pub(crate) fn load_settings<T: DeserializeOwned>(path: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
}

/// Runs `run` with the resolved `config`. Errors go to stderr after `program` (e.g.
/// `chainlog node`); the exit code is 2 for bad settings, 1 for a run that failed, 0 for a
/// graceful stop.
pub(crate) fn run_resolved<C, E: Display>(
    program: &str,
    config: Result<C, String>,
    run: impl FnOnce(C) -> Result<(), E>,
) -> ExitCode {
    let config = match config {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{program}: {e}");
            return ExitCode::from(2);
        }
    };
    match run(config) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("{program}: {e}");
            ExitCode::FAILURE
        }
    }
}
