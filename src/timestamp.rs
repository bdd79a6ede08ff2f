//! Times between the REST API (`time::OffsetDateTime`, RFC 3339 on the wire) and the gRPC
//! contract (`google.protobuf.Timestamp`): the one conversion busd and the CLI share.

use prost_types::Timestamp;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A time as a protobuf timestamp, to the nanosecond.
pub fn from_time(t: OffsetDateTime) -> Timestamp {
    Timestamp {
        seconds: t.unix_timestamp(),
        nanos: i32::try_from(t.nanosecond()).unwrap_or(0),
    }
}

/// A Unix time in whole seconds as a protobuf timestamp.
pub fn from_unix(seconds: i64) -> Timestamp {
    Timestamp { seconds, nanos: 0 }
}

/// A protobuf timestamp as a time, to the nanosecond; `None` out of range.
pub fn to_time(t: &Timestamp) -> Option<OffsetDateTime> {
    let at = OffsetDateTime::from_unix_timestamp(t.seconds).ok()?;
    at.checked_add(time::Duration::nanoseconds(i64::from(t.nanos)))
}

/// A time in RFC 3339, e.g. `2023-11-14T22:13:20.5Z`.
pub fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.format(&Rfc3339).ok()
}

/// A Unix time in whole seconds in RFC 3339; `None` out of range.
pub fn unix_rfc3339(seconds: i64) -> Option<String> {
    rfc3339(OffsetDateTime::from_unix_timestamp(seconds).ok()?)
}

/// A protobuf timestamp in RFC 3339, to the nanosecond; `None` when absent or out of range.
pub fn timestamp_rfc3339(t: Option<&Timestamp>) -> Option<String> {
    rfc3339(to_time(t?)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_nanosecond() {
        let at = OffsetDateTime::from_unix_timestamp_nanos(1_700_000_000_500_000_001).unwrap();
        let ts = from_time(at);
        assert_eq!((ts.seconds, ts.nanos), (1_700_000_000, 500_000_001));
        assert_eq!(to_time(&ts), Some(at));
        assert_eq!(
            timestamp_rfc3339(Some(&ts)).as_deref(),
            Some("2023-11-14T22:13:20.500000001Z")
        );
        assert_eq!(
            unix_rfc3339(1_700_000_000).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(
            from_unix(7),
            Timestamp {
                seconds: 7,
                nanos: 0
            }
        );
        assert_eq!(timestamp_rfc3339(None), None);
        assert_eq!(unix_rfc3339(i64::MAX), None);
    }
}
