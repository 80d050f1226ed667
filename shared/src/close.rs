//! WebSocket close codes of protocol v1 and what a client should do on each.

/// Every close code the edge sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure.
    Normal = 1000,
    /// The edge is going away.
    GoingAway = 1001,
    /// A binary frame was received.
    Unsupported = 1003,
    /// A text frame was not valid UTF-8.
    InvalidUtf8 = 1007,
    /// A message exceeded the inbound limit.
    TooLarge = 1009,
    /// The edge is restarting (draining).
    Restart = 1012,
    /// The outbound queue exceeded its bound.
    SlowConsumer = 4008,
    /// Redis or core-api unreachable.
    Unavailable = 4011,
    /// Rate limited repeatedly.
    RateLimited = 4029,
    /// Protocol violation.
    ProtocolViolation = 4500,
    /// Token missing, invalid or expired; or `Origin` not allowed.
    Unauthorized = 4501,
    /// Forbidden.
    Forbidden = 4503,
}

impl CloseCode {
    pub fn code(self) -> u16 {
        self as u16
    }

    /// Whether a client should reconnect (and resume) after this close.
    pub fn should_reconnect(self) -> bool {
        matches!(
            self,
            CloseCode::GoingAway
                | CloseCode::Restart
                | CloseCode::SlowConsumer
                | CloseCode::Unavailable
                | CloseCode::RateLimited
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_classes_follow_the_ranges() {
        assert!(CloseCode::SlowConsumer.should_reconnect());
        assert!(!CloseCode::Unauthorized.should_reconnect());
        assert!(!CloseCode::ProtocolViolation.should_reconnect());
        assert_eq!(CloseCode::TooLarge.code(), 1009);
    }
}
