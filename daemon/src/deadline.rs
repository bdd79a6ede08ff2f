//! A call's gRPC deadline, from its `grpc-timeout` header, so the REST call it makes gives up
//! when the caller does.

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The header gRPC clients send their deadline in (gRPC over HTTP/2, "Timeout").
pub const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The time the caller allows this call, if it set a deadline.
pub fn from_metadata(metadata: &MetadataMap) -> Option<Duration> {
    metadata
        .get(GRPC_TIMEOUT)
        .and_then(|v| v.to_str().ok())
        .and_then(parse)
}

/// Parses a `grpc-timeout` value: at most 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
pub fn parse(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse("30S"), Some(Duration::from_secs(30)));
        assert_eq!(parse("29999m"), Some(Duration::from_millis(29_999)));
        assert_eq!(parse("5u"), Some(Duration::from_micros(5)));
        assert_eq!(parse("7n"), Some(Duration::from_nanos(7)));
        for bad in ["", "S", "10", "10s", "-1S", "123456789S", "1.5S"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn the_deadline_is_read_from_metadata() {
        let mut metadata = MetadataMap::new();
        assert_eq!(from_metadata(&metadata), None);
        metadata.insert(GRPC_TIMEOUT, "1500m".parse().unwrap());
        assert_eq!(from_metadata(&metadata), Some(Duration::from_millis(1500)));
    }
}
