//! core-api's error type and its one mapping to HTTP responses.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use relaydesk_shared::ErrorCode;

/// Every failure of a core-api operation, classified by [`ErrorCode`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The caller's fault or a refusal; safe to show.
    #[error("{message}")]
    Client { code: ErrorCode, message: String },
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    #[error("redis: {0}")]
    Redis(#[from] fred::error::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] refinery::Error),
    #[error("token: {0}")]
    Token(#[from] relaydesk_shared::token::TokenError),
    /// Too many failed attempts: refused until `retry_after` has passed (429 with
    /// `Retry-After`).
    #[error("too many failed attempts, retry later")]
    Throttled { retry_after: std::time::Duration },
    #[error("{0}")]
    Internal(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn client(code: ErrorCode, message: impl Into<String>) -> Self {
        Error::Client {
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::client(ErrorCode::BadRequest, message)
    }
    pub fn not_found(what: &str) -> Self {
        Self::client(ErrorCode::NotFound, format!("{what} not found"))
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::client(ErrorCode::Forbidden, message)
    }
    pub fn unauthorized() -> Self {
        Self::client(ErrorCode::Unauthorized, "missing or invalid credentials")
    }

    /// The taxonomy code: client errors keep theirs; infrastructure failures are
    /// `unavailable` (retry can help) and everything else `internal`.
    pub fn code(&self) -> ErrorCode {
        match self {
            Error::Client { code, .. } => *code,
            Error::Throttled { .. } => ErrorCode::RateLimited,
            Error::Db(e) if e.code().is_some() => ErrorCode::Internal,
            Error::Db(_) | Error::Pool(_) | Error::Redis(_) => ErrorCode::Unavailable,
            Error::Migrate(_) | Error::Token(_) | Error::Internal(_) => ErrorCode::Internal,
        }
    }

    /// The message shown to clients: internal details stay in the logs.
    pub fn public_message(&self) -> String {
        match self {
            Error::Client { message, .. } => message.clone(),
            Error::Throttled { .. } => self.to_string(),
            _ if self.code() == ErrorCode::Unavailable => "temporarily unavailable, retry".into(),
            _ => "internal error".into(),
        }
    }
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let code = self.code();
        if !matches!(self, Error::Client { .. } | Error::Throttled { .. }) {
            tracing::error!(error = %self, "request failed");
        }
        let status =
            StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::json!({"error": {"code": code, "message": self.public_message()}});
        let mut response = (status, axum::Json(body)).into_response();
        if let Error::Throttled { retry_after } = self {
            // Whole seconds, rounded up: a client that waits this long is let in.
            let secs = retry_after.as_millis().div_ceil(1000).max(1);
            if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                response.headers_mut().insert("retry-after", v);
            }
        } else if code.retryable() && code != ErrorCode::Internal {
            response
                .headers_mut()
                .insert("retry-after", HeaderValue::from_static("1"));
        }
        response
    }
}
