//! Errors of an edge: [`EdgeError`] stops the process; [`FrameError`] is why one
//! connection is closed over what its peer sent at the WebSocket level, and
//! [`FrameError::close_code`] the one place that picks the close code for it. Failures
//! past the framing (`hello`, limits, Redis) name their [`CloseCode`] where they happen.

use relaydesk_shared::token::TokenError;
use relaydesk_shared::CloseCode;

/// Why [`crate::run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("invalid token public key: {0}")]
    TokenKey(#[from] TokenError),
    #[error("invalid Redis configuration: {0}")]
    RedisConfig(fred::error::Error),
    #[error("cannot connect to Redis: {0}")]
    RedisConnect(fred::error::Error),
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

/// A peer's frame that breaks RFC 6455 or the edge's limits; the connection is closed
/// with [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("reserved bits set without an extension")]
    ReservedBits,
    #[error("client frame not masked")]
    Unmasked,
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    #[error("control frame fragmented or over 125 bytes")]
    BadControl,
    #[error("64-bit payload length with the most significant bit set")]
    LengthTopBit,
    #[error("payload length not in its shortest encoding")]
    LengthNotMinimal,
    #[error("continuation frame outside a fragmented message")]
    StrayContinuation,
    #[error("new data frame inside a fragmented message")]
    Interleaved,
    #[error("close frame with a 1-byte payload")]
    CloseTooShort,
    #[error("close frame with the invalid code {0}")]
    InvalidCloseCode(u16),
    #[error("close reason is not valid UTF-8")]
    CloseReasonUtf8,
    #[error("binary message")]
    Binary,
    #[error("text message is not valid UTF-8")]
    TextUtf8,
    #[error("message over the inbound limit")]
    TooLarge,
    #[error("frame not completed within the frame timeout")]
    Stalled,
}

impl FrameError {
    /// The close code the edge answers this error with.
    pub fn close_code(self) -> CloseCode {
        match self {
            FrameError::ReservedBits
            | FrameError::Unmasked
            | FrameError::ReservedOpcode(_)
            | FrameError::BadControl
            | FrameError::LengthTopBit
            | FrameError::LengthNotMinimal
            | FrameError::StrayContinuation
            | FrameError::Interleaved
            | FrameError::CloseTooShort
            | FrameError::InvalidCloseCode(_) => CloseCode::ProtocolError,
            FrameError::CloseReasonUtf8 | FrameError::TextUtf8 => CloseCode::InvalidUtf8,
            FrameError::Binary => CloseCode::Unsupported,
            FrameError::TooLarge => CloseCode::TooLarge,
            FrameError::Stalled => CloseCode::PolicyViolation,
        }
    }
}

/// Checks the payload of a peer's close frame (RFC 6455 sections 5.5.1 and 7.4): the code
/// to echo (`None` when the frame carries none), or why the frame is invalid.
pub fn peer_close(payload: &[u8]) -> Result<Option<u16>, FrameError> {
    match payload {
        [] => Ok(None),
        [_] => Err(FrameError::CloseTooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !relaydesk_shared::close::valid_received(code) {
                return Err(FrameError::InvalidCloseCode(code));
            }
            if std::str::from_utf8(reason).is_err() {
                return Err(FrameError::CloseReasonUtf8);
            }
            Ok(Some(code))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_closes_are_checked() {
        assert_eq!(peer_close(&[]), Ok(None));
        assert_eq!(peer_close(&[3]), Err(FrameError::CloseTooShort));
        assert_eq!(peer_close(&4000u16.to_be_bytes()), Ok(Some(4000)));
        let mut with_reason = 1000u16.to_be_bytes().to_vec();
        with_reason.extend_from_slice("bye ✓".as_bytes());
        assert_eq!(peer_close(&with_reason), Ok(Some(1000)));
        with_reason.push(0xff);
        assert_eq!(peer_close(&with_reason), Err(FrameError::CloseReasonUtf8));
        for bad in [0u16, 1005, 1006, 1015, 5000] {
            assert_eq!(
                peer_close(&bad.to_be_bytes()),
                Err(FrameError::InvalidCloseCode(bad))
            );
        }
    }

    #[test]
    fn every_framing_error_has_its_code() {
        assert_eq!(
            FrameError::Interleaved.close_code(),
            CloseCode::ProtocolError
        );
        assert_eq!(
            FrameError::LengthTopBit.close_code(),
            CloseCode::ProtocolError
        );
        assert_eq!(FrameError::InvalidCloseCode(1005).close_code().code(), 1002);
        assert_eq!(FrameError::CloseReasonUtf8.close_code().code(), 1007);
        assert_eq!(FrameError::Binary.close_code().code(), 1003);
        assert_eq!(FrameError::TooLarge.close_code().code(), 1009);
        assert_eq!(FrameError::Stalled.close_code().code(), 1008);
    }
}
