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

/// A request with a raw (possibly not serde-expressible) JSON body: status, content type
/// and the parsed answer.
async fn raw(
    stack: &Stack,
    method: reqwest::Method,
    path: &str,
    bearer: &str,
    body: &str,
) -> (u16, String, serde_json::Value) {
    let r = stack
        .http
        .request(method, format!("{}{path}", stack.core_url))
        .bearer_auth(bearer)
        .header("content-type", "application/json")
        .header("idempotency-key", format!("k{}", Uuid::new_v4().simple()))
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let ct = r
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    (
        status,
        ct,
        r.json().await.unwrap_or(serde_json::Value::Null),
    )
}

/// Asserts the JSON error envelope with `status` and `code`.
fn refused(got: (u16, String, serde_json::Value), status: u16, code: &str, what: &str) {
    let (s, ct, body) = got;
    assert_eq!(s, status, "{what}: {body}");
    assert!(ct.starts_with("application/json"), "{what}: {ct}");
    assert_eq!(body["error"]["code"], code, "{what}: {body}");
    assert!(body["error"]["message"].is_string(), "{what}: {body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_unpaired_surrogates_are_refused_on_every_json_route() {
    use reqwest::Method;
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "admin").await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;
    let (vid, tid) = (v.id, t.id);
    let site = &t.site_key;

    // The fields that used to reach PostgreSQL and fail there (500).
    let nul = r"a\u0000b";
    let sur = r"\ud800";
    for bad in [nul, sur] {
        let cases: Vec<(Method, String, &str, String)> = vec![
            (
                Method::POST,
                "/v1/conversations".into(),
                &v.token,
                format!(r#"{{"subject":"{bad}"}}"#),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{conv}/messages"),
                &v.token,
                format!(r#"{{"kind":"text","body":{{"text":"{bad}"}}}}"#),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{conv}/notes"),
                &agent.token,
                format!(r#"{{"text":"{bad}"}}"#),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{conv}/tags"),
                &agent.token,
                format!(r#"{{"add":["{bad}"]}}"#),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{conv}/escalate"),
                &agent.token,
                format!(r#"{{"support_type":"general","reason":"{bad}"}}"#),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{conv}/csat"),
                &v.token,
                format!(r#"{{"score":5,"comment":"{bad}"}}"#),
            ),
            (
                Method::POST,
                "/v1/agents".into(),
                &t.api_key,
                format!(r#"{{"name":"{bad}","email":"x@acme.test","password":"correct horse"}}"#),
            ),
            (
                Method::PATCH,
                format!("/v1/agents/{}", agent.id),
                &t.api_key,
                format!(r#"{{"name":"{bad}"}}"#),
            ),
            (
                Method::PUT,
                format!("/v1/visitors/{vid}/attributes"),
                &t.api_key,
                format!(r#"{{"plan":"{bad}"}}"#),
            ),
            (
                Method::PUT,
                format!("/v1/visitors/{vid}/attributes"),
                &t.api_key,
                format!(r#"{{"{bad}":1}}"#),
            ),
            (
                Method::POST,
                "/v1/widget/pageviews".into(),
                &v.token,
                format!(r#"{{"url":"https://shop.test/{bad}"}}"#),
            ),
            (
                Method::POST,
                "/v1/widget/sessions".into(),
                "",
                format!(r#"{{"site_key":"{site}","visitor":{{"name":"{bad}"}}}}"#),
            ),
            (
                Method::POST,
                "/v1/auth/login".into(),
                "",
                format!(r#"{{"tenant":"{tid}","email":"{bad}@acme.test","password":"x"}}"#),
            ),
            (
                Method::PUT,
                "/v1/support-types/general".into(),
                &t.api_key,
                format!(r#"{{"key":"general","name":"{bad}"}}"#),
            ),
            (
                Method::POST,
                "/v1/blasts".into(),
                &t.api_key,
                format!(r#"{{"text":"{bad}","segment":{{"attributes":{{"plan":"pro"}}}}}}"#),
            ),
            (
                Method::POST,
                format!("/v1/conversations/{conv}/handoff"),
                &agent.token,
                format!(r#"{{"reason":"{bad}"}}"#),
            ),
        ];
        for (method, path, bearer, body) in cases {
            let what = format!("{method} {path} {body}");
            let got = raw(&stack, method, &path, bearer, &body).await;
            let message = got.2["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            refused(got, 400, "bad_request", &what);
            assert!(
                message.contains("NUL") || message.contains("surrogate"),
                "{what}: {message}"
            );
        }
    }

    // Every operation with a request body in the OpenAPI document, whatever its fields.
    let (status, doc) = stack.get("/v1/openapi.json", "").await;
    assert_eq!(status, 200);
    let mut walked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        let path = path
            .replace("{id}", &Uuid::new_v4().to_string())
            .replace("{key}", "general");
        for (method, op) in item.as_object().unwrap() {
            if op.get("requestBody").is_none() {
                continue;
            }
            let method = Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            for body in [
                format!(r#"{{"name":"{nul}"}}"#),
                format!(r#"{{"name":"{sur}"}}"#),
                "[]".to_owned(),
            ] {
                let what = format!("{method} {path} {body}");
                let got = raw(&stack, method.clone(), &path, &t.api_key, &body).await;
                refused(got, 400, "bad_request", &what);
            }
            walked += 1;
        }
    }
    assert!(walked >= 25, "only {walked} operations with a body");

    // Nothing of it was stored: the conversation has no message, the visitor no attribute.
    let (_, msgs) = stack
        .get(&format!("/v1/conversations/{conv}/messages"), &t.api_key)
        .await;
    assert_eq!(msgs["messages"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_and_unpaired_surrogates_are_refused_on_the_wire() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let _agent = stack.agent(&t, "agent").await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &v.connect).await;
    for (id, text) in [
        ("nul-1", r"a\u0000b"),
        ("sur-1", r"x\ud800"),
        ("sur-2", r"\udc00"),
    ] {
        let frame = format!(
            r#"{{"t":"send","id":"{id}","conv":"{conv}","kind":"text","body":{{"text":"{text}"}}}}"#
        );
        ws.send_raw(WsMessage::Text(frame.into())).await;
        let e = ws.wait_for(|f| f["id"] == id).await;
        assert_eq!(e["t"], "error", "{e}");
        assert_eq!(e["code"], "bad_request", "{e}");
    }
    // The connection lives and nothing was stored: the next message is seq 1.
    ws.send(json!({"t": "ping"})).await;
    assert_eq!(ws.next_frame().await["t"], "pong");
    let acc = ws.send_message(conv, "fine-1", "fine").await;
    assert_eq!(acc["t"], "accepted", "{acc}");
    assert_eq!(acc["seq"], 1, "{acc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn integers_past_what_the_database_holds_are_refused() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let v = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&v).await;
    assert_eq!(assignee, Some(agent.id));

    for until in [i64::MAX, relaydesk_core::http::MAX_UNIX_MS + 1] {
        let got = raw(
            &stack,
            reqwest::Method::POST,
            &format!("/v1/conversations/{conv}/snooze"),
            &agent.token,
            &format!(r#"{{"until":{until}}}"#),
        )
        .await;
        refused(got, 400, "bad_request", &format!("snooze until {until}"));
    }
    let id = Uuid::new_v4();
    for list in ["/v1/conversations", "/v1/visitors"] {
        for us in [i64::MAX, i64::MIN, -1] {
            let path = format!("{list}?cursor={us}_{id}");
            let got = raw(&stack, reqwest::Method::GET, &path, &t.api_key, "").await;
            refused(got, 400, "bad_request", &path);
        }
    }
    // Cursors the API hands out still work.
    stack.conversation(&v).await;
    let (status, page) = stack.get("/v1/conversations?limit=1", &t.api_key).await;
    assert_eq!(status, 200, "{page}");
    let next = page["next_cursor"].as_str().unwrap();
    let (status, page) = stack
        .get(
            &format!("/v1/conversations?limit=1&cursor={next}"),
            &t.api_key,
        )
        .await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["conversations"].as_array().map(Vec::len), Some(1));
    // The conversation can still be snoozed with a sane time.
    let (status, body) = stack
        .post(
            &format!("/v1/conversations/{conv}/snooze"),
            &agent.token,
            json!({"until": 4_102_444_800_000i64}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_size_limit_holds_on_every_ingress() {
    use relaydesk_shared::input::MAX_MESSAGE_BYTES;
    // An edge configured to take larger frames still holds messages to the limit.
    let stack = Stack::start_custom(1, true, |c| c.max_message_bytes = 4 * MAX_MESSAGE_BYTES).await;
    let t = stack.tenant().await;
    let _agent = stack.agent(&t, "agent").await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;

    // REST: `{"text":"…"}` is 11 bytes around the text.
    // (Bodies over the 1 MiB request limit are refused before they are read: see
    // a_body_over_the_limit_with_expect_continue_gets_413.)
    for len in [MAX_MESSAGE_BYTES - 10, 300_000, 1_000_000] {
        let (status, body) = stack
            .post_text(conv, &v.token, &format!("big-{len}"), &"x".repeat(len))
            .await;
        assert_eq!(status, 413, "{len}: {body}");
        assert_eq!(body["error"]["code"], "too_large", "{len}: {body}");
    }
    let (status, body) = stack
        .post_text(conv, &v.token, "fits", &"x".repeat(MAX_MESSAGE_BYTES - 11))
        .await;
    assert_eq!(status, 201, "{body}");

    // Wire.
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &v.connect).await;
    let e = ws
        .send_message(conv, "wire-big", &"x".repeat(MAX_MESSAGE_BYTES))
        .await;
    assert_eq!(e["t"], "error", "{e}");
    assert_eq!(e["code"], "too_large", "{e}");
    let acc = ws
        .send_message(conv, "wire-fits", &"y".repeat(MAX_MESSAGE_BYTES - 11))
        .await;
    assert_eq!(acc["t"], "accepted", "{acc}");
    assert_eq!(acc["seq"], 2, "{acc}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversize_stored_message_does_not_break_replay() {
    let stack = Stack::start(1).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let v = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&v).await;
    assert_eq!(assignee, Some(agent.id));
    let (status, _) = stack.post_text(conv, &v.token, "before", "before").await;
    assert_eq!(status, 201);
    // A row from before the limit held on every ingress: 1.5 MB, over the edge's whole
    // outbound queue.
    let text = "é".repeat(750_000);
    let db = stack.admin_db().await;
    db.execute(
        "INSERT INTO messages (tenant_id, conversation_id, seq, id, sender_id, sender_role,
                               client_msg_id, kind, body)
         VALUES ($1, $2, 2, gen_random_uuid(), $3, 'visitor', 'old-big', 'text', $4)",
        &[&t.id, &conv, &v.id, &json!({ "text": text })],
    )
    .await
    .unwrap();
    db.execute(
        "UPDATE conversations SET last_seq = 2 WHERE tenant_id = $1 AND id = $2",
        &[&t.id, &conv],
    )
    .await
    .unwrap();
    let (status, _) = stack.post_text(conv, &v.token, "after", "after").await;
    assert_eq!(status, 201);

    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &agent.connect).await;
    let (head, frames) = ws.sub(conv, 0).await;
    assert_eq!(head, 3);
    let texts: Vec<_> = frames.iter().map(|f| f["body"]["text"].clone()).collect();
    assert_eq!(texts[0], "before");
    assert_eq!(texts[2], "after");
    let big = &frames[1]["body"];
    assert_eq!(big["truncated"], true, "{}", frames[1]["seq"]);
    assert_eq!(big["bytes"], 1_500_011);
    assert!(big["text"].as_str().unwrap().starts_with("éé"));
    assert!(big["text"].as_str().unwrap().len() <= relaydesk_shared::input::TRUNCATED_TEXT_BYTES);
    // The connection lives on.
    ws.send(json!({"t": "ping"})).await;
    assert_eq!(ws.wait_for(|f| f["t"] == "pong").await["t"], "pong");
    // And the history reads the same.
    let (status, page) = stack
        .get(&format!("/v1/conversations/{conv}/messages"), &agent.token)
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["messages"][1]["body"]["truncated"], true);
    assert_eq!(page["messages"][2]["body"]["text"], "after");
}

/// Writes `head` (and nothing more) to core-api and reads the answer until its body is
/// complete or the connection ends: the status and the parsed body.
async fn raw_tcp(stack: &Stack, head: &[u8]) -> (u16, String, serde_json::Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = stack.core_url.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(head).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = tcp.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
            let text = String::from_utf8_lossy(&got).to_string();
            if let Some((headers, body)) = text.split_once("\r\n\r\n") {
                let len = headers.lines().find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse::<usize>().unwrap())
                });
                if len.is_some_and(|len| body.len() >= len) {
                    break;
                }
            }
        }
    };
    tokio::time::timeout(common::WAIT, read)
        .await
        .expect("no answer in time");
    let text = String::from_utf8_lossy(&got).to_string();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let ct = headers
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_owned())
        })
        .unwrap_or_default();
    (status, ct, serde_json::from_str(body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_over_the_limit_with_expect_continue_gets_413() {
    let stack = Stack::start(0).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;
    let head = format!(
        "POST /v1/conversations/{conv}/messages HTTP/1.1\r\nhost: core\r\n\
         authorization: Bearer {}\r\ncontent-type: application/json\r\nidempotency-key: huge\r\n\
         content-length: 10485760\r\nexpect: 100-continue\r\n\r\n",
        v.token
    );
    // The answer comes while the client still waits for `100 Continue`: no body is sent.
    let got = raw_tcp(&stack, head.as_bytes()).await;
    refused(got, 413, "too_large", "10 MB with Expect: 100-continue");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_gets_408() {
    let stack = Stack::start_core_tuned(0, |c| {
        c.body_timeout = std::time::Duration::from_millis(300)
    })
    .await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let started = tokio::time::Instant::now();
    let head = format!(
        "POST /v1/conversations HTTP/1.1\r\nhost: core\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"subject\"",
        v.token
    );
    let got = raw_tcp(&stack, head.as_bytes()).await;
    refused(got, 408, "timeout", "a body 90 bytes short");
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn framework_refusals_use_the_error_envelope() {
    use reqwest::Method;
    let stack = Stack::start(0).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let key = &t.api_key;
    for (method, path, status, code) in [
        (Method::GET, "/v1/nope", 404, "not_found"),
        (Method::GET, "/nope", 404, "not_found"),
        (Method::DELETE, "/v1/tenants", 405, "method_not_allowed"),
        (Method::PUT, "/v1/conversations", 405, "method_not_allowed"),
        (
            Method::GET,
            "/v1/conversations/not-a-uuid",
            400,
            "bad_request",
        ),
        (Method::GET, "/v1/visitors/123", 400, "bad_request"),
        (
            Method::GET,
            "/v1/conversations?limit=many",
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/conversations?visitor_id=nope",
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/conversations?support_type=a%00b",
            400,
            "bad_request",
        ),
        (
            Method::GET,
            "/v1/conversations/00000000-0000-0000-0000-000000000000/messages?after=-1",
            400,
            "bad_request",
        ),
    ] {
        let what = format!("{method} {path}");
        let got = raw(&stack, method, path, key, "").await;
        refused(got, status, code, &what);
    }
    let got = raw(
        &stack,
        Method::PUT,
        "/v1/support-types/a%00b",
        key,
        r#"{"name":"x"}"#,
    )
    .await;
    refused(got, 400, "bad_request", "NUL in a path");

    // A JSON array (or scalar) where an object is required.
    for body in ["[]", r#"["help"]"#, "1", r#""help""#, "null"] {
        let got = raw(&stack, Method::POST, "/v1/conversations", &v.token, body).await;
        refused(got, 400, "bad_request", body);
    }
    let got = raw(
        &stack,
        Method::POST,
        "/v1/agents",
        key,
        r#"["Ann","ann@acme.test","correct horse"]"#,
    )
    .await;
    refused(got, 400, "bad_request", "agent as an array");
    let (_, list) = stack.get("/v1/conversations", key).await;
    assert_eq!(list["conversations"], json!([]));
}
