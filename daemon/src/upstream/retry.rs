//! When and how a failed call is tried again: the retry policy, jittered backoff,
//! `Retry-After` and the idempotency key that makes a create safe to retry.

use std::time::{Duration, SystemTime};

use reqwest::{Method, StatusCode};

/// How many times a retryable call is tried in all.
pub const MAX_TRIES: u32 = 3;
/// The first retry's backoff ceiling; each further retry doubles it, up to [`MAX_BACKOFF`].
const BASE_BACKOFF: Duration = Duration::from_millis(100);
/// The largest backoff between two tries.
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// A `Retry-After` longer than this is not waited for: the error goes back to the caller with
/// the delay in its `RetryInfo`.
pub(super) const MAX_HONOURED_RETRY_AFTER: Duration = Duration::from_secs(2);
/// The header that makes a create safe to retry.
pub const IDEMPOTENCY_KEY: &str = "idempotency-key";

/// Whether a request may be sent again after a failure that may or may not have reached the
/// runner: reads and deletes always, a create only with an `Idempotency-Key`.
pub fn retry_policy(method: &Method, has_idempotency_key: bool) -> bool {
    match *method {
        Method::GET | Method::HEAD | Method::OPTIONS | Method::DELETE | Method::PUT => true,
        Method::POST => has_idempotency_key,
        _ => false,
    }
}

/// The statuses worth another try: the gateway or the runner is briefly unavailable.
pub fn retryable_status(status: StatusCode) -> bool {
    matches!(
        status,
        StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
    )
}

/// The pause after try number `tries` (1-based): "equal jitter" — half the exponential step
/// plus a random part of the other half (`random` in `[0, 1)`), the step capped at
/// `MAX_BACKOFF` (1 s).
pub fn backoff(tries: u32, random: f64) -> Duration {
    let step = BASE_BACKOFF
        .saturating_mul(1u32 << tries.saturating_sub(1).min(16))
        .min(MAX_BACKOFF);
    step / 2 + (step / 2).mul_f64(random.clamp(0.0, 1.0))
}

/// `Retry-After`: delay-seconds or an HTTP-date (RFC 9110 §10.2.3); a date in the past is 0.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if let Ok(seconds) = value.parse::<u64>() {
        return Some(Duration::from_secs(seconds));
    }
    let date =
        time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc2822).ok()?;
    let at = SystemTime::from(date);
    Some(at.duration_since(now).unwrap_or_default())
}

/// A fresh, random `Idempotency-Key` for one logical create (reused by its retries).
pub(super) fn new_idempotency_key() -> String {
    let mut bytes = [0u8; 16];
    if getrandom::fill(&mut bytes).is_err() {
        // No OS randomness: fall back to a seeded generator (still unique per process run).
        bytes = fastrand::u128(..).to_le_bytes();
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("busd-{hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_idempotent_calls_and_keyed_creates_are_retried() {
        assert!(retry_policy(&Method::GET, false));
        assert!(retry_policy(&Method::DELETE, false));
        assert!(retry_policy(&Method::POST, true));
        assert!(!retry_policy(&Method::POST, false));
        assert!(!retry_policy(&Method::PATCH, false));
        for code in [502, 503, 504] {
            assert!(
                retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
        for code in [400, 401, 402, 403, 404, 409, 429, 500, 501] {
            assert!(
                !retryable_status(StatusCode::from_u16(code).unwrap()),
                "{code}"
            );
        }
    }

    #[test]
    fn backoff_grows_with_jitter_within_bounds() {
        for tries in 1..=8 {
            let step = (BASE_BACKOFF * (1 << (tries - 1))).min(MAX_BACKOFF);
            let low = backoff(tries, 0.0);
            let high = backoff(tries, 0.999_999);
            assert_eq!(low, step / 2, "try {tries}");
            assert!(
                high <= step && high > step * 9 / 10,
                "try {tries}: {high:?}"
            );
        }
        assert_eq!(backoff(1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(u32::MAX, 1.0), MAX_BACKOFF);
        assert_eq!(backoff(1, 7.0), BASE_BACKOFF, "random is clamped");
    }

    #[test]
    fn retry_after_takes_seconds_or_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_767); // 1994-11-06T08:49:27Z
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("-5", now), None);
    }

    #[test]
    fn idempotency_keys_are_fresh_and_header_safe() {
        let (a, b) = (new_idempotency_key(), new_idempotency_key());
        assert_ne!(a, b);
        assert_eq!(a.len(), "busd-".len() + 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-'));
    }
}
