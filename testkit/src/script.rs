//! Shell scripts the tests run in containers, and what they print.

/// A script writing, `lines` times with `pause` seconds between: `line I out` to stdout in two
/// writes (the first without its newline, a partial line in the engine's log) and `err I` to
/// stderr; then a last line without a newline on each stream; it exits with 7.
pub fn two_streams(lines: u32, pause: &str) -> String {
    format!(
        "i=0; while [ $i -lt {lines} ]; do printf \"line $i\"; sleep 0.01; echo ' out'; \
         echo \"err $i\" >&2; i=$((i+1)); sleep {pause}; done; \
         printf 'last words'; printf 'no newline' >&2; exit 7"
    )
}

/// What [`two_streams`] writes to stdout and to stderr.
pub fn two_streams_output(lines: u32) -> (String, String) {
    let mut stdout: String = (0..lines).map(|i| format!("line {i} out\n")).collect();
    stdout.push_str("last words");
    let mut stderr: String = (0..lines).map(|i| format!("err {i}\n")).collect();
    stderr.push_str("no newline");
    (stdout, stderr)
}
