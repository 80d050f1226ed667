//! RFC 6455 strictness of the edge, black-box, from a raw-socket peer that writes every
//! frame by hand: close frames and their codes, malformed and oversized frames (closed
//! with the close frame read by the peer, not lost to a reset), the upgrade request, and
//! the frame timeout. Each frame check runs before `hello` and after it.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::{Duration, Instant};

use common::{client_frame, close_frame, op, read_to_close, tcp_connect, Ending, RawWs, Stack};
use tokio::io::AsyncWriteExt;

/// A stack with one edge and core-api, and a visitor's connection token.
async fn stack_with_token(tune: impl Fn(&mut relaydesk_edge::Config)) -> (Stack, String) {
    let stack = Stack::start_custom(1, true, tune).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    (stack, v.connect)
}

/// Opens a connection (authenticated when `token` is given), writes `bytes`, and returns
/// how the edge ended it.
async fn answer(stack: &Stack, token: Option<&str>, bytes: &[u8]) -> Ending {
    let addr = stack.edge_addr(0);
    let mut ws = match token {
        Some(token) => RawWs::hello(&addr, token).await,
        None => RawWs::upgrade(&addr).await,
    };
    ws.send(bytes).await;
    ws.ending().await
}

/// Every case of `cases` (a name, what to send, the close code expected), before and
/// after `hello`: the close frame arrives with its code and the stream ends cleanly.
async fn expect_closes(stack: &Stack, token: &str, cases: &[(String, Vec<u8>, u16)]) {
    for authed in [None, Some(token)] {
        let phase = if authed.is_some() { "after" } else { "before" };
        for (name, bytes, code) in cases {
            let got = answer(stack, authed, bytes).await;
            assert_eq!(got, Ending::clean(*code), "{name}, {phase} hello");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_frames_are_checked_and_only_valid_codes_echoed() {
    let (stack, token) = stack_with_token(|_| {}).await;
    let mut cases = Vec::new();
    // Codes no endpoint may send, including those that must never be on the wire.
    for code in [
        0u16, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
    ] {
        cases.push((format!("close {code}"), close_frame(code, b""), 1002));
    }
    // Valid codes are echoed.
    for code in [
        1000u16, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 3000, 4000, 4999,
    ] {
        cases.push((format!("close {code}"), close_frame(code, b"bye"), code));
    }
    cases.push((
        "a 1-byte close payload".into(),
        client_frame(true, op::CLOSE, &[3]),
        1002,
    ));
    cases.push((
        "a reason that is not UTF-8".into(),
        close_frame(1000, &[b'o', 0xff, b'k']),
        1007,
    ));
    cases.push((
        "a reason cut inside a UTF-8 sequence".into(),
        close_frame(1000, "é".as_bytes().get(..1).unwrap()),
        1007,
    ));
    cases.push((
        "no code at all".into(),
        client_frame(true, op::CLOSE, &[]),
        1000,
    ));
    expect_closes(&stack, &token, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_frame_or_message_is_closed_1009_without_a_reset() {
    let (stack, token) = stack_with_token(|_| {}).await;
    let max = relaydesk_edge::config::DEFAULT_MAX_MESSAGE_BYTES;
    // The whole message counts: each fragment fits, the two together do not.
    let mut fragments = client_frame(false, op::TEXT, &vec![b' '; max / 2 + 1]);
    fragments.extend(client_frame(
        true,
        op::CONTINUATION,
        &vec![b' '; max / 2 + 1],
    ));
    let cases = vec![
        (
            "a frame one byte over the limit".into(),
            client_frame(true, op::TEXT, &vec![b' '; max + 1]),
            1009,
        ),
        (
            "a message over the limit in two fragments".into(),
            fragments,
            1009,
        ),
    ];
    expect_closes(&stack, &token, &cases).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_length_or_a_data_frame_inside_a_message_gets_1002() {
    let (stack, token) = stack_with_token(|_| {}).await;
    let mut top_bit = vec![0x81, 0x80 | 127];
    top_bit.extend_from_slice(&((1u64 << 63) | 5).to_be_bytes());
    top_bit.extend_from_slice(&[1, 2, 3, 4, 0, 0, 0, 0, 0]);
    let mut binary_inside = client_frame(false, op::TEXT, b"{\"t\":");
    binary_inside.extend(client_frame(true, op::BINARY, b"x"));
    let mut text_inside = client_frame(false, op::TEXT, b"{\"t\":");
    text_inside.extend(client_frame(true, op::TEXT, b"x"));
    let cases = vec![
        ("a 64-bit length with the top bit set".into(), top_bit, 1002),
        (
            "a binary frame inside a fragmented text message".into(),
            binary_inside,
            1002,
        ),
        (
            "a text frame inside a fragmented text message".into(),
            text_inside,
            1002,
        ),
        // Outside a fragmented message, a binary frame is merely unsupported.
        (
            "a binary message".into(),
            client_frame(true, op::BINARY, b"x"),
            1003,
        ),
    ];
    expect_closes(&stack, &token, &cases).await;
}

/// Sends `request` on a fresh connection; returns the edge's answer head, lower-cased.
async fn upgrade_answer(addr: &str, request: &str) -> String {
    let mut s = tcp_connect(addr, None, None).await.unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    // The edge closes after refusing; after a 101 it waits for `hello`: read what came.
    let (got, _) = read_to_close(&mut s, Duration::from_millis(500)).await;
    let text = String::from_utf8_lossy(&got).to_ascii_lowercase();
    text.split("\r\n\r\n").next().unwrap_or_default().to_owned()
}

fn request(http: &str, key: Option<&str>, version: Option<&str>) -> String {
    let mut r = format!(
        "GET /v1/ws {http}\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    );
    if let Some(k) = key {
        r.push_str(&format!("Sec-WebSocket-Key: {k}\r\n"));
    }
    if let Some(v) = version {
        r.push_str(&format!("Sec-WebSocket-Version: {v}\r\n"));
    }
    r.push_str("Connection: close\r\n\r\n");
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_requests_that_break_rfc_6455_are_refused() {
    let stack =
        Stack::start_custom(1, false, |c| c.hello_timeout = Duration::from_millis(200)).await;
    let addr = stack.edge_addr(0);
    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    // The valid request: 101 with the accept value of RFC 6455 section 1.3.
    let head = upgrade_answer(&addr, &request("HTTP/1.1", Some(KEY), Some("13"))).await;
    assert!(head.starts_with("http/1.1 101 "), "{head}");
    assert!(
        head.contains("sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo="),
        "{head}"
    );

    for key in [
        "",
        "abc",
        "dGhlIHNhbXBsZSBub25jZQ",
        "dGhlIHNhbXBsZSBub25jZSE=",
        "dGhlIHNhbXBsZSBub25jZSEh",
        "dGhlIHNhbXBsZSBub25j*Q==",
    ] {
        let head = upgrade_answer(&addr, &request("HTTP/1.1", Some(key), Some("13"))).await;
        assert!(head.starts_with("http/1.1 400 "), "key {key:?}: {head}");
    }
    let head = upgrade_answer(&addr, &request("HTTP/1.1", None, Some("13"))).await;
    assert!(head.starts_with("http/1.1 400 "), "no key: {head}");
    let head = upgrade_answer(&addr, &request("HTTP/1.0", Some(KEY), Some("13"))).await;
    assert!(head.starts_with("http/1.0 400 "), "HTTP/1.0: {head}");

    // A version other than 13 (or none): 426, naming the version served.
    for version in [Some("8"), Some("14"), None] {
        let head = upgrade_answer(&addr, &request("HTTP/1.1", Some(KEY), version)).await;
        assert!(head.starts_with("http/1.1 426 "), "{version:?}: {head}");
        assert!(
            head.contains("\r\nsec-websocket-version: 13"),
            "{version:?}: {head}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_trickled_after_hello_is_closed_1008_at_the_frame_timeout() {
    const FRAME_TIMEOUT: Duration = Duration::from_millis(600);
    let (stack, token) = stack_with_token(|c| c.frame_timeout = FRAME_TIMEOUT).await;
    let addr = stack.edge_addr(0);
    let ping = client_frame(true, op::TEXT, br#"{"t":"ping"}"#);
    let pong =
        |f: Option<(u8, Vec<u8>)>| f.is_some_and(|(o, p)| o == op::TEXT && p == br#"{"t":"pong"}"#);

    let mut ws = RawWs::hello(&addr, &token).await;
    // Idle longer than the frame timeout: no frame was begun, nothing is timed.
    tokio::time::sleep(FRAME_TIMEOUT * 2).await;
    // A frame sent in two parts, well within the timeout, is served.
    ws.send(&ping[..5]).await;
    tokio::time::sleep(FRAME_TIMEOUT / 4).await;
    ws.send(&ping[5..]).await;
    assert!(pong(ws.next_frame().await));

    // A frame announced at 60,000 bytes, then trickled a byte at a time.
    let big = client_frame(true, op::TEXT, &vec![b' '; 60_000]);
    ws.send(&big[..8]).await;
    let start = Instant::now();
    let (ending, trickled) = tokio::time::timeout(
        Duration::from_secs(5),
        ws.ending_while_trickling(&big[8..], Duration::from_millis(100)),
    )
    .await
    .expect("a trickled frame kept the connection open for 5 s");
    let elapsed = start.elapsed();
    assert_eq!(ending, Ending::clean(1008));
    assert!(
        elapsed >= FRAME_TIMEOUT.mul_f32(0.8),
        "closed after {elapsed:?}, before the frame timeout"
    );
    assert!(
        elapsed < Duration::from_secs(5),
        "closed only after {elapsed:?}"
    );
    assert!(trickled >= 3, "only {trickled} bytes trickled");
}
