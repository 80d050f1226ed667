//! Hostile and broken clients get the documented answer, and lose nothing.

#![allow(clippy::unwrap_used)]

mod common;

use common::{Stack, Ws};
use relaydesk_shared::token::{Claims, Role, TokenSigner, AUD_API, AUD_EDGE};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

fn signer(stack: &Stack) -> TokenSigner {
    TokenSigner::from_pem(&stack.env.signing_pem).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unauthenticated_connections_are_closed_4501() {
    let stack = Stack::start(1).await;
    let url = &stack.edge_urls[0];
    let t = stack.tenant().await;
    let visitor = stack.visitor(&t).await;

    // No hello at all: closed after the hello timeout.
    let mut ws = Ws::open(url).await;
    assert_eq!(ws.close_code().await, Some(4501));

    let s = signer(&stack);
    let mut expired = Claims::new(t.id, visitor.id, Role::Visitor, AUD_EDGE, 0);
    expired.exp -= 3600;
    expired.iat -= 7200;
    let wrong_aud = Claims::new(t.id, visitor.id, Role::Visitor, AUD_API, 600);
    let (other_key, _) = relaydesk_shared::token::generate_keypair().unwrap();
    let foreign = TokenSigner::from_pem(other_key.as_bytes())
        .unwrap()
        .sign(&Claims::new(t.id, visitor.id, Role::Visitor, AUD_EDGE, 600))
        .unwrap();
    for token in [
        s.sign(&expired).unwrap(),
        s.sign(&wrong_aud).unwrap(),
        foreign,
        "garbage".to_string(),
    ] {
        let mut ws = Ws::open(url).await;
        ws.send(json!({"t": "hello", "token": token})).await;
        assert_eq!(ws.close_code().await, Some(4501));
    }
    // The API session token is not a connection token.
    let mut ws = Ws::open(url).await;
    ws.send(json!({"t": "hello", "token": visitor.token})).await;
    assert_eq!(ws.close_code().await, Some(4501));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_token_are_refused() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let mut claims = Claims::new(t.id, v.id, Role::Visitor, AUD_EDGE, 600);
    claims.origins = Some(vec!["https://shop.acme.test".into()]);
    let token = signer(&stack).sign(&claims).unwrap();

    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let connect = |origin: &'static str| {
        let mut req = stack.edge_urls[0].as_str().into_client_request().unwrap();
        req.headers_mut().insert("origin", origin.parse().unwrap());
        req
    };
    let (stream, _) = tokio_tungstenite::connect_async(connect("https://evil.test"))
        .await
        .unwrap();
    let mut ws = Ws { stream };
    ws.send(json!({"t": "hello", "token": token})).await;
    assert_eq!(ws.close_code().await, Some(4501));

    let (stream, _) = tokio_tungstenite::connect_async(connect("https://shop.acme.test"))
        .await
        .unwrap();
    let mut ws = Ws { stream };
    ws.send(json!({"t": "hello", "token": token})).await;
    assert_eq!(ws.next_frame().await["t"], "welcome");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_frames_get_their_close_codes() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let url = &stack.edge_urls[0];

    // Over the inbound limit: 1009.
    let (mut ws, welcome) = Ws::connect(url, &v.connect).await;
    let max = welcome["max_message"].as_u64().unwrap() as usize;
    let big = json!({"t": "send", "id": "big", "conv": Uuid::new_v4(), "body": {"text": "x".repeat(max)}});
    ws.send(big).await;
    assert_eq!(ws.close_code().await, Some(1009));

    // Binary: 1003.
    let (mut ws, _) = Ws::connect(url, &v.connect).await;
    ws.send_raw(WsMessage::Binary(vec![1u8, 2, 3].into())).await;
    assert_eq!(ws.close_code().await, Some(1003));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_json_is_answered_and_the_connection_lives() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let _agent = stack.agent(&t, "agent").await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &v.connect).await;

    for garbage in [
        "{not json",
        r#"{"t":"nope"}"#,
        r#"{"t":"send","id":"x"}"#,
        "[]",
    ] {
        ws.send_raw(WsMessage::Text(garbage.into())).await;
        let e = ws.next_frame().await;
        assert_eq!(e["t"], "error", "{garbage}: {e}");
        assert_eq!(e["code"], "bad_request");
    }
    ws.send(json!({"t": "ping"})).await;
    assert_eq!(ws.next_frame().await["t"], "pong");
    let acc = ws.send_message(conv, "after-garbage", "still here").await;
    assert_eq!(acc["t"], "accepted", "{acc}");

    // An invalid client id or a kind a visitor may not use is refused, not stored.
    let e = ws.send_message(conv, "bad id!", "x").await;
    assert_eq!(e["t"], "error");
    ws.send(
        json!({"t": "send", "id": "note-1", "conv": conv, "kind": "note", "body": {"text": "x"}}),
    )
    .await;
    let e = ws.wait_for(|f| f["id"] == "note-1").await;
    assert_eq!(e["t"], "error");
    assert_eq!(e["code"], "forbidden");
}
