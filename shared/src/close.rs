//! WebSocket close codes of protocol v1 and what a client should do on each, and which
//! codes a peer may put in a close frame (RFC 6455 section 7.4).

/// Every close code the edge sends of its own accord (an answer to the peer's close
/// echoes the peer's code once [`valid_received`] accepts it). Codes an endpoint must
/// never send (1005, 1006, 1015) have no variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum CloseCode {
    /// Normal closure.
    Normal = 1000,
    /// The edge is going away.
    GoingAway = 1001,
    /// A frame broke RFC 6455 framing (reserved bits, unmasked, bad opcode or length,
    /// a data frame inside a fragmented message, an invalid close frame).
    ProtocolError = 1002,
    /// A binary frame was received.
    Unsupported = 1003,
    /// A text frame, or a close frame's reason, was not valid UTF-8.
    InvalidUtf8 = 1007,
    /// A frame, once begun, was not completed within the frame timeout.
    PolicyViolation = 1008,
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
                | CloseCode::PolicyViolation
                | CloseCode::Restart
                | CloseCode::SlowConsumer
                | CloseCode::Unavailable
                | CloseCode::RateLimited
        )
    }
}

/// Whether `code`, read from a peer's close frame, is one an endpoint may send (RFC 6455
/// section 7.4): the defined codes 1000–1003 and 1007–1011, the registered 1012–1014,
/// and the application range 3000–4999. Anything else (0–999, the reserved 1004, the
/// never-sent 1005, 1006 and 1015, unassigned 1016–2999, 5000 and above) is a protocol
/// error.
pub fn valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_classes_follow_the_ranges() {
        assert!(CloseCode::SlowConsumer.should_reconnect());
        assert!(!CloseCode::Unauthorized.should_reconnect());
        assert!(!CloseCode::ProtocolViolation.should_reconnect());
        assert!(!CloseCode::ProtocolError.should_reconnect());
        assert_eq!(CloseCode::TooLarge.code(), 1009);
    }

    #[test]
    fn received_codes_follow_rfc_6455() {
        for ok in [
            1000, 1001, 1002, 1003, 1007, 1010, 1011, 1012, 1014, 3000, 4999,
        ] {
            assert!(valid_received(ok), "{ok}");
        }
        for bad in [
            0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!valid_received(bad), "{bad}");
        }
    }

    #[test]
    fn the_edge_sends_only_valid_codes() {
        for c in [
            CloseCode::Normal,
            CloseCode::GoingAway,
            CloseCode::ProtocolError,
            CloseCode::Unsupported,
            CloseCode::InvalidUtf8,
            CloseCode::PolicyViolation,
            CloseCode::TooLarge,
            CloseCode::Restart,
            CloseCode::SlowConsumer,
            CloseCode::Unavailable,
            CloseCode::RateLimited,
            CloseCode::ProtocolViolation,
            CloseCode::Unauthorized,
            CloseCode::Forbidden,
        ] {
            assert!(valid_received(c.code()), "{c:?}");
        }
    }
}
