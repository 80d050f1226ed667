//! The rules every ingress applies to what a client sends, whichever way it arrives (an
//! HTTP request body in core-api, a wire frame at the edge): the one rule for strings in
//! JSON, and the one size limit of a message.
//!
//! Strings: PostgreSQL stores neither NUL (`\u0000`) in `text` and `jsonb` nor a lone
//! UTF-16 surrogate, so JSON input carrying either escape is refused as `bad_request`
//! before it is deserialized ([`check_json_strings`]), rather than failing later inside
//! a transaction. Raw NUL bytes and raw surrogates cannot occur in valid JSON text (a
//! control character must be escaped, and UTF-8 has no surrogates), so the escapes are
//! all there is to look for.
//!
//! Size: a message's `body`, serialized as compact JSON, is at most
//! [`MAX_MESSAGE_BYTES`] (the wire's default inbound limit), whether it came as a wire
//! `send` or over the REST fallback ([`body_within_limit`]). A stored body over it (one
//! committed before the limit held everywhere) is delivered in its bounded form
//! ([`bounded_body`]) so that no reader is sent a frame it cannot take.

use serde_json::Value;

/// Largest message: the edges' default inbound frame limit, and the largest serialized
/// `body` a message may have on every ingress.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;

/// How much of an oversize stored message's `text` its bounded form keeps.
pub const TRUNCATED_TEXT_BYTES: usize = 4 * 1024;

/// Why a JSON text is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StringError {
    #[error("strings must not contain NUL (\\u0000)")]
    Nul,
    #[error("strings must not contain unpaired UTF-16 surrogates")]
    UnpairedSurrogate,
}

/// Checks every `\u` escape of a JSON text: no NUL, no unpaired surrogate.
///
/// Works on the raw bytes and does not validate the rest of the JSON (the parser that
/// follows does). Outside strings valid JSON has no backslash, and `\\` is consumed as a
/// pair, so scanning escapes from left to right needs no tracking of quotes.
pub fn check_json_strings(raw: &[u8]) -> Result<(), StringError> {
    let mut i = 0;
    // A leading surrogate waiting for its trailing half (which must come next).
    let mut pending_lead = false;
    while i < raw.len() {
        if raw[i] != b'\\' {
            if pending_lead {
                return Err(StringError::UnpairedSurrogate);
            }
            i += 1;
            continue;
        }
        let Some(&kind) = raw.get(i + 1) else {
            break;
        };
        if kind != b'u' {
            if pending_lead {
                return Err(StringError::UnpairedSurrogate);
            }
            i += 2;
            continue;
        }
        // Malformed escapes are left to the parser.
        let Some(unit) = raw.get(i + 2..i + 6).and_then(hex4) else {
            i += 2;
            continue;
        };
        match unit {
            0 => return Err(StringError::Nul),
            0xD800..=0xDBFF if pending_lead => return Err(StringError::UnpairedSurrogate),
            0xD800..=0xDBFF => pending_lead = true,
            0xDC00..=0xDFFF if pending_lead => pending_lead = false,
            0xDC00..=0xDFFF => return Err(StringError::UnpairedSurrogate),
            _ if pending_lead => return Err(StringError::UnpairedSurrogate),
            _ => {}
        }
        i += 6;
    }
    if pending_lead {
        return Err(StringError::UnpairedSurrogate);
    }
    Ok(())
}

fn hex4(b: &[u8]) -> Option<u16> {
    let s = std::str::from_utf8(b).ok()?;
    u16::from_str_radix(s, 16).ok()
}

/// Whether a decoded string holds a character PostgreSQL refuses (NUL): the check for
/// strings that reach a handler other than through JSON (path segments, query values).
pub fn has_nul(s: &str) -> bool {
    s.contains('\0')
}

/// The size of `v` serialized as compact JSON, counted without building it.
pub fn json_len(v: &Value) -> usize {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    // Writing a `Value` into a counter cannot fail: its map keys are strings.
    let _ = serde_json::to_writer(&mut c, v);
    c.0
}

/// Whether a message body is within [`MAX_MESSAGE_BYTES`].
pub fn body_within_limit(body: &Value) -> bool {
    json_len(body) <= MAX_MESSAGE_BYTES
}

/// The body a reader is given for a stored message: the body itself when within
/// [`MAX_MESSAGE_BYTES`]; otherwise the marker
/// `{"truncated": true, "bytes": <serialized size>, "text": <the first
/// TRUNCATED_TEXT_BYTES of its text, when it had one>}`.
pub fn bounded_body(body: Value) -> Value {
    let bytes = json_len(&body);
    if bytes <= MAX_MESSAGE_BYTES {
        return body;
    }
    let mut marker = serde_json::Map::new();
    if let Some(text) = body.get("text").and_then(Value::as_str) {
        let mut end = text.len().min(TRUNCATED_TEXT_BYTES);
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        marker.insert("text".into(), Value::String(text[..end].to_owned()));
    }
    marker.insert("truncated".into(), Value::Bool(true));
    marker.insert("bytes".into(), Value::from(bytes));
    Value::Object(marker)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_rule() {
        for ok in [
            r#"{"a":"plain"}"#,
            r#"{"a":"\u0001 \u00e9 \n \\u0000 \\\\"}"#,
            r#"{"a":"\ud83d\ude00"}"#,
            r#"{"a":"\uD83D\uDE00x"}"#,
            r#"{"a":"\u12"}"#,
            r#"["\\ud800"]"#,
        ] {
            assert_eq!(check_json_strings(ok.as_bytes()), Ok(()), "{ok}");
        }
        for (bad, why) in [
            (r#"{"a":"x\u0000"}"#, StringError::Nul),
            (r#"{"\u0000":1}"#, StringError::Nul),
            (r#"{"a":"\ud800"}"#, StringError::UnpairedSurrogate),
            (r#"{"a":"\uDBFFx"}"#, StringError::UnpairedSurrogate),
            (r#"{"a":"\udc00"}"#, StringError::UnpairedSurrogate),
            (
                r#"{"a":"\ud800\ud800\udc00"}"#,
                StringError::UnpairedSurrogate,
            ),
            (r#"{"a":"\ud800\n"}"#, StringError::UnpairedSurrogate),
            (r#"{"a":"\ud800\u0041"}"#, StringError::UnpairedSurrogate),
            (r#"{"a":"\\\u0000"}"#, StringError::Nul),
        ] {
            assert_eq!(check_json_strings(bad.as_bytes()), Err(why), "{bad}");
        }
    }

    #[test]
    fn serde_json_alone_would_not_refuse_nul() {
        // The reason for the rule: NUL decodes fine, and fails only in PostgreSQL; a lone
        // surrogate fails to decode into a string, but may sit in an ignored field or a
        // byte string, so the rule does not rely on that.
        let v: Value = serde_json::from_str(r#"{"a":"\u0000"}"#).unwrap_or(Value::Null);
        assert_eq!(v["a"], "\0");
        assert!(serde_json::from_str::<Value>(r#"{"a":"\ud800"}"#).is_err());
    }

    #[test]
    fn counts_like_serializing() {
        let v = serde_json::json!({"text": "é\"\n", "n": [1, 2.5, null]});
        assert_eq!(
            json_len(&v),
            serde_json::to_string(&v).map_or(0, |s| s.len())
        );
    }

    #[test]
    fn bounds_oversize_bodies() {
        let small = serde_json::json!({"text": "hi"});
        assert_eq!(bounded_body(small.clone()), small);
        let text = "é".repeat(MAX_MESSAGE_BYTES);
        let big = serde_json::json!({"text": text});
        assert!(!body_within_limit(&big));
        let b = bounded_body(big);
        assert_eq!(b["truncated"], true);
        assert_eq!(b["bytes"], 2 * MAX_MESSAGE_BYTES + 11);
        assert_eq!(b["text"].as_str().map(str::len), Some(TRUNCATED_TEXT_BYTES));
        assert!(json_len(&b) <= MAX_MESSAGE_BYTES);
        let other = bounded_body(serde_json::json!({"blob": "x".repeat(MAX_MESSAGE_BYTES)}));
        assert_eq!(other.get("text"), None);
        assert_eq!(other["truncated"], true);
    }
}
