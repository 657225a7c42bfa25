//! The balancer's errors. A failed attempt says whether sending the request again is safe
//! (pingora's `RetryType`); the answer the client gets is JSON `{"error": ...}`.

use http::StatusCode;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serving: {0}")]
    Io(#[from] std::io::Error),
}

/// Whether a failed attempt may be sent again, to another instance.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The request never reached a backend: any method may be sent again.
    Safe,
    /// The backend may have processed it: only idempotent requests (idempotent methods, or
    /// an `Idempotency-Key`) may be sent again.
    IfIdempotent,
    /// Not again (the time is up, or the body cannot be replayed).
    Never,
}

/// Why one attempt failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// Connection refused, connect timeout: the backend never saw the request.
    Connect,
    /// The connection broke after the request was (perhaps partly) written.
    Lost,
    /// The backend answered 502, 503 or 504.
    Unavailable,
    /// `REQUEST_TIMEOUT_MS` passed before the response head.
    Timeout,
    /// The request body was larger than the limit (found while streaming it).
    TooLarge,
    /// The connection broke after the request was written, for the second time in this
    /// request: a request that takes instances down with it is not sent to more of them
    /// (a suspected poison request).
    Poison,
}

impl Failure {
    pub fn retry(self) -> Retry {
        match self {
            Self::Connect => Retry::Safe,
            Self::Lost | Self::Unavailable => Retry::IfIdempotent,
            Self::Timeout | Self::TooLarge | Self::Poison => Retry::Never,
        }
    }

    /// Counts against the instance's health (passive ejection).
    pub fn ejects(self) -> bool {
        matches!(self, Self::Connect | Self::Timeout)
    }

    /// What the client gets when this was the last attempt (for `Unavailable`, the
    /// backend's own answer is passed on instead).
    pub fn answer(self) -> (StatusCode, &'static str) {
        match self {
            Self::Connect => (StatusCode::BAD_GATEWAY, "no instance could be reached"),
            Self::Lost | Self::Unavailable => (StatusCode::BAD_GATEWAY, "the instance failed before answering"),
            Self::Timeout => (StatusCode::GATEWAY_TIMEOUT, "the instance did not answer in time"),
            Self::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "request body is too large"),
            Self::Poison => (
                StatusCode::BAD_GATEWAY,
                "suspected poison request: two instances lost the connection while handling it",
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_unsent_requests_are_always_safe_to_retry() {
        let check = |failure: Failure, retry: Retry, ejects: bool, status: u16| {
            assert_eq!((failure.retry(), failure.ejects(), failure.answer().0.as_u16()), (retry, ejects, status));
        };
        check(Failure::Connect, Retry::Safe, true, 502);
        check(Failure::Lost, Retry::IfIdempotent, false, 502);
        check(Failure::Unavailable, Retry::IfIdempotent, false, 502);
        check(Failure::Timeout, Retry::Never, true, 504);
        check(Failure::TooLarge, Retry::Never, false, 413);
        check(Failure::Poison, Retry::Never, false, 502);
    }
}
