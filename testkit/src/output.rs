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

/// A command's exit code, stdout and stderr, for a failed assertion's message.
pub fn describe(out: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Asserts success; returns stdout.
pub fn expect_success(out: &Output) -> String {
    assert!(out.status.success(), "{}", describe(out));
    stdout(out)
}

/// Asserts a failure whose stderr ends with one `bus: error:` line (after plain `bus: `
/// progress lines, if any); returns that line.
pub fn last_error_line(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure: {}",
        describe(out)
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let lines: Vec<&str> = stderr.lines().collect();
    let last = lines.last().copied().unwrap_or_default();
    assert!(last.starts_with("bus: error: "), "{stderr}");
    assert!(
        lines.iter().all(|l| l.starts_with("bus: ")),
        "only progress lines before the error: {stderr}"
    );
    last.to_owned()
}
