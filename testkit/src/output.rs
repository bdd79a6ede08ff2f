//! Reading a finished command's output.

use std::process::Output;

/// Asserts the command failed with exactly one line on stderr, and returns that line.
pub fn one_line_error(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure; stdout: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        stderr.lines().count(),
        1,
        "expected one line on stderr, got: {stderr}"
    );
    assert!(stderr.starts_with("bus: error: "), "{stderr}");
    stderr.trim_end().to_owned()
}

/// stdout as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}
