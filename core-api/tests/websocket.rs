//! RFC 6455 strictness of the edge, black-box, from a raw-socket peer that writes every
//! frame by hand: close frames and their codes, malformed and oversized frames (closed
//! with the close frame read by the peer, not lost to a reset). Each frame check runs
//! before `hello` and after it.

#![allow(clippy::unwrap_used)]

mod common;

use common::{client_frame, close_frame, op, Ending, RawWs, Stack};

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
