//! Wire protocol v1: every frame a client and an edge exchange over `GET /v1/ws`.
//!
//! This module is the only definition of the client-facing wire types. Each frame is one
//! JSON object tagged by `t`. Inbound frames ([`ClientFrame`]) are parsed at the edge;
//! outbound frames ([`ServerFrame`]) are serialized once (by the edge or by core-api) and
//! the resulting bytes are shared by every recipient.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ErrorCode;
use crate::token::Role;

/// A frame sent by a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ClientFrame {
    /// Authenticates the connection; must be the first frame.
    Hello { token: String },
    /// Posts a message; answered by `accepted` once committed, or `error`.
    Send {
        id: String,
        conv: Uuid,
        #[serde(default = "default_kind")]
        kind: String,
        body: serde_json::Value,
    },
    /// Subscribes to a conversation, replaying every message with `seq > after`.
    Sub {
        conv: Uuid,
        #[serde(default)]
        after: Option<u64>,
    },
    /// Stops live delivery of a conversation.
    Unsub { conv: Uuid },
    /// Cumulative delivery acknowledgement.
    Ack { conv: Uuid, seq: u64 },
    /// Read receipt.
    Read { conv: Uuid, seq: u64 },
    /// Ephemeral typing indicator.
    Typing { conv: Uuid, on: bool },
    /// Application-level ping, answered with `pong`.
    Ping,
}

fn default_kind() -> String {
    "text".to_owned()
}

/// Why a client frame was refused; answered with an `error` frame of [`Self::code`].
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error(transparent)]
    Strings(#[from] crate::input::StringError),
    #[error("{0}")]
    Json(#[from] serde_json::Error),
    #[error("message body over {max} bytes", max = crate::input::MAX_MESSAGE_BYTES)]
    TooLarge,
}

impl FrameError {
    pub fn code(&self) -> ErrorCode {
        match self {
            FrameError::TooLarge => ErrorCode::TooLarge,
            FrameError::Strings(_) | FrameError::Json(_) => ErrorCode::BadRequest,
        }
    }
}

impl ClientFrame {
    /// The one decoder of client frames: the string rule of [`crate::input`], then the
    /// JSON, then the message size limit of a `send` (whose body is measured only when
    /// the frame itself is over the limit, as a smaller frame cannot hold a larger body).
    pub fn decode(bytes: &[u8]) -> Result<ClientFrame, FrameError> {
        crate::input::check_json_strings(bytes)?;
        let frame: ClientFrame = serde_json::from_slice(bytes)?;
        if let ClientFrame::Send { body, .. } = &frame {
            if bytes.len() > crate::input::MAX_MESSAGE_BYTES
                && !crate::input::body_within_limit(body)
            {
                return Err(FrameError::TooLarge);
            }
        }
        Ok(frame)
    }
}

/// Who did something, as shown to other participants.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Actor {
    pub id: Uuid,
    pub role: Role,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// A stored message as every reader sees it: the wire `msg` frame without `t`, and the
/// element of `GET /v1/conversations/{id}/messages`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    pub conv: Uuid,
    pub seq: u64,
    pub msg: Uuid,
    pub from: Actor,
    pub kind: String,
    pub body: serde_json::Value,
    pub ts: i64,
}

/// The answer to a committed `send` (wire `accepted`, and the REST fallback's body).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    pub id: String,
    pub conv: Uuid,
    pub seq: u64,
    pub msg: Uuid,
    pub ts: i64,
}

/// A frame sent by the edge to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum ServerFrame {
    Welcome {
        conn: String,
        tenant: Uuid,
        principal: Uuid,
        role: Role,
        heartbeat_ms: u64,
        max_message: usize,
    },
    Accepted(Accepted),
    Error {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        conv: Option<Uuid>,
        code: ErrorCode,
        message: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
    Msg(Message),
    Subbed {
        conv: Uuid,
        head: u64,
    },
    Read {
        conv: Uuid,
        by: Actor,
        seq: u64,
    },
    Typing {
        conv: Uuid,
        by: Actor,
        on: bool,
    },
    Conv {
        conv: Uuid,
        event: ConvEvent,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        status: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        assignee: Option<Uuid>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        support_type: Option<String>,
        /// Why (a resolution or escalation reason, `handoff`, …).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// An agent's availability changed (to supervisors and the agent's own consoles).
    Presence {
        agent: Uuid,
        status: String,
    },
    Pong,
}

/// Conversation lifecycle events carried by `conv` frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConvEvent {
    Created,
    Queued,
    Assigned,
    Transferred,
    Escalated,
    Resolved,
    Reopened,
    /// Set aside until the visitor writes again (or `snoozed_until`).
    Snoozed,
    /// Another agent (a supervisor) joined as a participant.
    Joined,
    /// Tags or priority changed.
    Updated,
}

impl ConvEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            ConvEvent::Created => "created",
            ConvEvent::Queued => "queued",
            ConvEvent::Assigned => "assigned",
            ConvEvent::Transferred => "transferred",
            ConvEvent::Escalated => "escalated",
            ConvEvent::Resolved => "resolved",
            ConvEvent::Reopened => "reopened",
            ConvEvent::Snoozed => "snoozed",
            ConvEvent::Joined => "joined",
            ConvEvent::Updated => "updated",
        }
    }
}

impl ServerFrame {
    /// Serializes the frame once; the bytes are then shared by every recipient.
    pub fn to_json(&self) -> String {
        // Serializing these plain data types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_else(|_| {
            String::from(r#"{"t":"error","code":"internal","message":"serialization"}"#)
        })
    }

    /// An `error` frame answering a client frame.
    pub fn error(id: Option<String>, code: ErrorCode, message: impl Into<String>) -> Self {
        ServerFrame::Error {
            id,
            conv: None,
            code,
            message: message.into(),
            retry_after_ms: None,
        }
    }
}

/// A client message id: 1–64 characters of `[A-Za-z0-9_-]`.
pub fn valid_client_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Message kinds a client may send. `event` is reserved for the server.
pub fn client_kind_allowed(kind: &str, role: Role) -> bool {
    match kind {
        "text" => true,
        "note" | "suggestion" => role.is_staff(),
        _ => false,
    }
}

/// Whether a message of this kind is hidden from visitors.
pub fn agents_only(kind: &str) -> bool {
    matches!(kind, "note" | "suggestion")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_send_with_default_kind() {
        let conv = Uuid::new_v4();
        let f: ClientFrame = serde_json::from_str(&format!(
            r#"{{"t":"send","id":"a1","conv":"{conv}","body":{{"text":"hi"}}}}"#
        ))
        .unwrap();
        assert_eq!(
            f,
            ClientFrame::Send {
                id: "a1".into(),
                conv,
                kind: "text".into(),
                body: serde_json::json!({"text":"hi"})
            }
        );
    }

    #[test]
    fn decode_refuses_nul_surrogates_and_oversize_bodies() {
        let conv = Uuid::nil();
        let send = |text: &str| {
            format!(r#"{{"t":"send","id":"a","conv":"{conv}","body":{{"text":"{text}"}}}}"#)
        };
        assert!(ClientFrame::decode(send(r"ok \\u0000").as_bytes()).is_ok());
        for bad in [
            send(r"\u0000"),
            send(r"\ud800"),
            r#"{"t":"hello","token":"\u0000"}"#.into(),
        ] {
            let e = ClientFrame::decode(bad.as_bytes()).err();
            assert_eq!(e.map(|e| e.code()), Some(ErrorCode::BadRequest), "{bad}");
        }
        let big = send(&"x".repeat(crate::input::MAX_MESSAGE_BYTES));
        let e = ClientFrame::decode(big.as_bytes()).err();
        assert_eq!(e.map(|e| e.code()), Some(ErrorCode::TooLarge));
        let fits = send(&"x".repeat(crate::input::MAX_MESSAGE_BYTES - 11));
        assert!(ClientFrame::decode(fits.as_bytes()).is_ok());
    }

    #[test]
    fn rejects_unknown_type() {
        assert!(serde_json::from_str::<ClientFrame>(r#"{"t":"nope"}"#).is_err());
    }

    #[test]
    fn serializes_accepted_flat() {
        let conv = Uuid::nil();
        let f = ServerFrame::Accepted(Accepted {
            id: "x".into(),
            conv,
            seq: 3,
            msg: conv,
            ts: 5,
        });
        let v: serde_json::Value = serde_json::from_str(&f.to_json()).unwrap();
        assert_eq!(v["t"], "accepted");
        assert_eq!(v["seq"], 3);
    }

    #[test]
    fn client_ids() {
        assert!(valid_client_id("abc_DEF-123"));
        assert!(!valid_client_id(""));
        assert!(!valid_client_id("a b"));
        assert!(!valid_client_id(&"a".repeat(65)));
    }
}
