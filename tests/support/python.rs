//! The official Python MCP SDK as a real client: the interpreter of the venv that
//! `scripts/test-all.sh` makes in `tests/.venv`, and running one of its scripts to the
//! end with a deadline and the `OK` line every script prints last.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one Python client run may take (it only bounds a hang).
const RUN_TIMEOUT: Duration = Duration::from_secs(120);

/// The `tests/` folder of this crate.
pub fn tests_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The venv's interpreter; panics with the fix when the venv is missing.
pub fn interpreter() -> PathBuf {
    let python = tests_dir().join(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run scripts/test-all.sh, which installs the Python MCP SDK there",
        python.display()
    );
    python
}

/// A command running `tests/python/<script>` on the venv's interpreter, killed when
/// dropped.
pub fn script(script: &str) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(interpreter());
    command.arg(tests_dir().join("python").join(script));
    command.kill_on_drop(true);
    command
}

/// Runs `command` (named `what` in failures) to its end and asserts that it succeeded
/// with `OK` as its last line of output; returns its stdout.
pub async fn expect_ok(what: &str, command: &mut tokio::process::Command) -> String {
    command.kill_on_drop(true);
    let output = tokio::time::timeout(RUN_TIMEOUT, command.output())
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within {RUN_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.lines().last() == Some("OK"),
        "{what} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        output.status
    );
    stdout
}
