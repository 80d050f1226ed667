//! The edge's protective behaviour, black-box: slow consumers, slow and silent clients,
//! connection caps and rates, whole-message size across fragments, noisy tenants,
//! draining, and a Redis outage. Every test runs its own stack with its own limits.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{read_to_close, tcp_connect, Next, Stack, Ws, UPGRADE, WAIT};
use futures::SinkExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use uuid::Uuid;

fn ip(s: &str) -> Option<IpAddr> {
    Some(s.parse().unwrap())
}

fn send_frame(conv: Uuid, id: &str, text: &str) -> Value {
    json!({"t": "send", "id": id, "conv": conv, "kind": "text", "body": {"text": text}})
}

/// Sends every frame of `frames` (ids `ids`) at once, then waits until each id has its
/// `accepted` or `error`; returns the answers by id.
async fn send_all(ws: &mut Ws, frames: Vec<Value>) -> HashMap<String, Value> {
    let mut want: BTreeSet<String> = BTreeSet::new();
    for f in frames {
        want.insert(f["id"].as_str().unwrap().to_owned());
        ws.send(f).await;
    }
    let mut got = HashMap::new();
    while got.len() < want.len() {
        let f = ws
            .wait_for(|f| {
                (f["t"] == "accepted" || f["t"] == "error")
                    && f["id"].as_str().is_some_and(|id| want.contains(id))
            })
            .await;
        let id = f["id"].as_str().unwrap().to_owned();
        assert!(got.insert(id.clone(), f).is_none(), "{id} answered twice");
    }
    got
}

// ---------------------------------------------------------------------------------------
// 1. Backpressure
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_that_stops_reading_is_closed_4008_while_others_get_everything() {
    const BOUND: usize = 160 * 1024;
    const BODY: usize = 24 * 1024;
    const MAX_MESSAGES: u64 = 400;
    let stack = Stack::start_custom(1, true, |c| c.outbound_queue_bytes = BOUND).await;
    let t = stack.tenant().await;
    let agent = stack.agent(&t, "agent").await;
    let visitor = stack.visitor(&t).await;
    let (conv, assignee) = stack.conversation(&visitor).await;
    assert_eq!(assignee, Some(agent.id));
    let url = &stack.edge_urls[0];

    // The slow consumer: the agent on a socket with a tiny receive buffer, which reads its
    // `welcome` and then nothing at all.
    let tcp = tcp_connect(&stack.edge_addr(0), None, Some(4096))
        .await
        .unwrap();
    let mut slow = Ws::over(url, tcp).await.unwrap();
    slow.hello(&agent.connect).await;
    // A normal reader: the same agent on a second connection, reading everything.
    let (mut normal, _) = Ws::connect(url, &agent.connect).await;
    let (mut sender, _) = Ws::connect(url, &visitor.connect).await;

    let (normal_tx, mut normal_rx) = tokio::sync::mpsc::unbounded_channel::<Result<u64, u16>>();
    tokio::spawn(async move {
        loop {
            match normal.next().await {
                Next::Frame(f) if f["t"] == "msg" => {
                    let _ = normal_tx.send(Ok(f["seq"].as_u64().unwrap()));
                }
                Next::Frame(_) => {}
                Next::Closed(c) => {
                    let _ = normal_tx.send(Err(c.unwrap_or(1006)));
                    return;
                }
            }
        }
    });

    // Watches the edge's slow-consumer counter; once it moves, the slow client starts
    // reading again and collects what reached it, up to the close frame.
    let metric = "relaydesk_edge_slow_consumer_closes_total";
    let before = stack.edge_metric(0, metric).await;
    let (triggered_tx, triggered_rx) = tokio::sync::watch::channel(false);
    let http = stack.http.clone();
    let metrics_url = format!("http://{}/metrics", stack.edge_addr(0));
    let watcher = tokio::spawn(async move {
        let deadline = tokio::time::Instant::now() + WAIT * 2;
        loop {
            let text = http
                .get(&metrics_url)
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            if common::metric_sum(&text, metric) > before {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the slow consumer was never closed"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let _ = triggered_tx.send(true);
        let mut seqs = Vec::new();
        let code = loop {
            match slow.next().await {
                Next::Frame(f) if f["t"] == "msg" => seqs.push(f["seq"].as_u64().unwrap()),
                Next::Frame(_) => {}
                Next::Closed(c) => break c,
            }
        };
        (seqs, code)
    });

    // Fan out large messages, two at a time, until the edge gives up on the slow reader
    // (its kernel buffers fill first, then its outbound queue), then a few more.
    let text = "x".repeat(BODY);
    let mut sent = 0u64;
    let mut after_trigger = 0;
    while after_trigger < 4 {
        assert!(
            sent < MAX_MESSAGES,
            "{sent} messages of {BODY} bytes did not overflow a {BOUND}-byte queue"
        );
        let frames = (sent..sent + 2)
            .map(|i| send_frame(conv, &format!("m-{i}"), &text))
            .collect();
        for (id, a) in send_all(&mut sender, frames).await {
            assert_eq!(a["t"], "accepted", "{id}: {a}");
        }
        sent += 2;
        if *triggered_rx.borrow() {
            after_trigger += 2;
        }
    }

    let (slow_seqs, code) = tokio::time::timeout(WAIT, watcher)
        .await
        .expect("slow consumer never saw its close")
        .unwrap();
    assert_eq!(code, Some(4008), "slow consumer close code");
    let k = slow_seqs.len() as u64;
    assert_eq!(
        slow_seqs,
        (1..=k).collect::<Vec<_>>(),
        "what reached the slow reader is an in-order prefix"
    );
    assert!(k < sent, "the slow reader got everything ({k} of {sent})");

    // The normal reader got every message, in order, exactly once, and is still open.
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < sent {
        let r = tokio::time::timeout(WAIT, normal_rx.recv())
            .await
            .expect("normal reader stalled")
            .expect("normal reader gone");
        match r {
            Ok(seq) => seqs.push(seq),
            Err(code) => panic!("normal reader closed with {code} after {} msgs", seqs.len()),
        }
    }
    assert_eq!(seqs, (1..=sent).collect::<Vec<_>>());
    eprintln!("slow consumer closed after {k} of {sent} messages of {BODY} bytes");
}

// ---------------------------------------------------------------------------------------
// 2. Slowloris
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_completes_is_cut_off_after_the_header_timeout() {
    const HEADER_TIMEOUT: Duration = Duration::from_millis(600);
    let stack = Stack::start_custom(1, false, |c| c.header_timeout = HEADER_TIMEOUT).await;
    let addr = stack.edge_addr(0);

    // A slowloris: half a request head, then one more header line every 100 ms.
    let trickler = async {
        let mut s = tcp_connect(&addr, None, None).await.unwrap();
        let start = Instant::now();
        s.write_all(b"GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\n")
            .await
            .unwrap();
        let mut buf = [0u8; 1024];
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT;
        let closed = loop {
            tokio::select! {
                r = s.read(&mut buf) => match r {
                    Ok(0) | Err(_) => break true,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                },
                _ = tokio::time::sleep(Duration::from_millis(100)) => {
                    // Fails once the edge has closed: the next read reports it.
                    let _ = s.write_all(b"X-Slow: a\r\n").await;
                }
                _ = tokio::time::sleep_until(deadline) => break false,
            }
        };
        (closed, start.elapsed(), got)
    };
    // A silent connection: not a byte after connecting.
    let silent = async {
        let mut s = tcp_connect(&addr, None, None).await.unwrap();
        let start = Instant::now();
        let (got, closed) = read_to_close(&mut s, WAIT).await;
        (closed, start.elapsed(), got)
    };
    let (trickled, silent) = tokio::join!(trickler, silent);
    for (name, (closed, elapsed, got)) in [("trickling", trickled), ("silent", silent)] {
        assert!(closed, "{name} connection still open after {WAIT:?}");
        assert!(
            elapsed >= HEADER_TIMEOUT.mul_f32(0.8),
            "{name} connection closed after {elapsed:?}, before the header timeout"
        );
        assert!(
            elapsed < Duration::from_secs(5),
            "{name} connection closed only after {elapsed:?}"
        );
        assert!(
            !String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"),
            "{name} connection was upgraded"
        );
    }

    // A client that sends its head in time is served.
    let mut s = tcp_connect(&addr, None, None).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (got, closed) = read_to_close(&mut s, WAIT).await;
    assert!(closed);
    assert!(
        String::from_utf8_lossy(&got).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&got)
    );
}

// ---------------------------------------------------------------------------------------
// 3. Hello timeout
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_says_hello_is_closed_4501_after_the_hello_timeout() {
    const HELLO_TIMEOUT: Duration = Duration::from_millis(400);
    let stack = Stack::start_custom(1, false, |c| c.hello_timeout = HELLO_TIMEOUT).await;
    let url = stack.edge_urls[0].clone();

    // Silent after the upgrade.
    let silent = async {
        let mut ws = Ws::open(&url).await;
        let start = Instant::now();
        (ws.close_code().await, start.elapsed())
    };
    // Busy with WebSocket pings, but never a `hello`: control frames do not count.
    let pinging = async {
        let mut ws = Ws::open(&url).await;
        let start = Instant::now();
        let mut ticker = tokio::time::interval(Duration::from_millis(50));
        let code = loop {
            tokio::select! {
                n = ws.next() => match n {
                    Next::Closed(c) => break c,
                    Next::Frame(f) => panic!("unexpected frame before hello: {f}"),
                },
                _ = ticker.tick() => ws.send_raw(WsMessage::Ping(vec![1u8].into())).await,
            }
        };
        (code, start.elapsed())
    };
    let (silent, pinging) = tokio::join!(silent, pinging);
    for (name, (code, elapsed)) in [("silent", silent), ("pinging", pinging)] {
        assert_eq!(code, Some(4501), "{name}");
        assert!(
            elapsed >= HELLO_TIMEOUT.mul_f32(0.8),
            "{name}: closed after {elapsed:?}, before the hello timeout"
        );
        assert!(
            elapsed < Duration::from_secs(4),
            "{name}: closed after {elapsed:?}: the configured timeout was not used"
        );
    }
}

// ---------------------------------------------------------------------------------------
// 4. Per-address connection cap and upgrade rate
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_per_address_cap_are_refused_429() {
    let stack = Stack::start_custom(1, false, |c| {
        c.max_connections_per_ip = 2;
        // The held connections never authenticate.
        c.hello_timeout = Duration::from_secs(60);
    })
    .await;
    let url = &stack.edge_urls[0];
    let addr = stack.edge_addr(0);
    // Sources of their own, apart from the harness's HTTP client on 127.0.0.1.
    let (a, b) = (ip("127.0.0.2"), ip("127.0.0.3"));

    let mut held = Vec::new();
    for _ in 0..2 {
        let tcp = tcp_connect(&addr, a, None).await.unwrap();
        held.push(Ws::over(url, tcp).await.expect("under the cap"));
    }
    // The third from the same address: answered 429 with Retry-After, then closed.
    let mut s = tcp_connect(&addr, a, None).await.unwrap();
    let _ = s.write_all(UPGRADE.as_bytes()).await;
    let (got, closed) = read_to_close(&mut s, WAIT).await;
    assert!(closed, "a connection over the cap was kept open");
    let got = String::from_utf8_lossy(&got);
    assert!(
        got.starts_with("HTTP/1.1 429 ") && got.contains("retry-after: 1"),
        "expected 429 with Retry-After, got {got:?}"
    );
    let tcp = tcp_connect(&addr, a, None).await.unwrap();
    assert!(Ws::over(url, tcp).await.is_err());

    // Another address is not affected.
    let tcp = tcp_connect(&addr, b, None).await.unwrap();
    let _other = Ws::over(url, tcp).await.expect("another source address");

    // Closing one frees its place.
    let mut gone = held.pop().unwrap();
    gone.stream.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let tcp = tcp_connect(&addr, a, None).await.unwrap();
        if Ws::over(url, tcp).await.is_ok() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place of a closed connection was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrades_over_the_rate_get_429_with_retry_after() {
    const RATE: u32 = 2;
    let stack = Stack::start_custom(1, false, |c| c.upgrades_per_sec = RATE).await;
    let url = &stack.edge_urls[0];

    let start = Instant::now();
    let mut ok = Vec::new();
    let mut refused = 0u32;
    for _ in 0..10 {
        match tokio_tungstenite::connect_async(url.as_str()).await {
            Ok((s, _)) => ok.push(s),
            Err(tokio_tungstenite::tungstenite::Error::Http(r)) => {
                assert_eq!(r.status().as_u16(), 429, "{r:?}");
                let retry = r.headers().get("retry-after").expect("Retry-After");
                assert!(retry.to_str().unwrap().parse::<u64>().unwrap() >= 1);
                refused += 1;
            }
            Err(e) => panic!("unexpected upgrade failure: {e}"),
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    // A burst of one second's worth, then RATE per second.
    let allowed = RATE as f64 * (1.0 + elapsed) + 1.0;
    assert!(
        (ok.len() as f64) <= allowed,
        "{} upgrades accepted in {elapsed:.2} s at {RATE}/s",
        ok.len()
    );
    assert!(refused >= 1, "no upgrade was refused");
    assert!(!ok.is_empty(), "the burst was refused too");

    // The bucket refills: upgrades succeed again.
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if tokio_tungstenite::connect_async(url.as_str()).await.is_ok() {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "never refilled");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 5. Per-tenant connection cap
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_tenant_cap_are_closed_4029_other_tenants_connect() {
    let stack = Stack::start_custom(1, true, |c| c.tenant_max_connections = 2).await;
    let url = &stack.edge_urls[0];
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let other = stack.tenant().await;
    let ov = stack.visitor(&other).await;

    let (_a, _) = Ws::connect(url, &v.connect).await;
    let (mut b, _) = Ws::connect(url, &v.connect).await;
    let mut third = Ws::open(url).await;
    third.send(json!({"t": "hello", "token": v.connect})).await;
    assert_eq!(third.close_code().await, Some(4029));

    // Another tenant on the same edge is not affected.
    let (mut o, welcome) = Ws::connect(url, &ov.connect).await;
    assert_eq!(welcome["tenant"], json!(other.id));
    o.send(json!({"t": "ping"})).await;
    assert_eq!(o.next_frame().await["t"], "pong");

    // A closed connection frees its place under the cap.
    b.stream.close(None).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut ws = Ws::open(url).await;
        ws.send(json!({"t": "hello", "token": v.connect})).await;
        match ws.next().await {
            Next::Frame(f) if f["t"] == "welcome" => break,
            Next::Closed(Some(4029)) => {}
            other => panic!("unexpected: {other:?}"),
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the tenant's place was never released"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------
// 6. Whole-message size across continuation frames
// ---------------------------------------------------------------------------------------

/// Sends `payload` as one text message in fragments of at most `chunk` bytes.
async fn send_fragmented(ws: &mut Ws, payload: &str, chunk: usize) {
    let parts: Vec<&[u8]> = payload.as_bytes().chunks(chunk).collect();
    let last = parts.len() - 1;
    for (i, part) in parts.into_iter().enumerate() {
        let opcode = if i == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(part.to_vec(), opcode, i == last);
        ws.stream.send(WsMessage::Frame(frame)).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fragmented_message_over_the_limit_is_closed_1009() {
    const MAX: usize = 1024;
    let stack = Stack::start_custom(1, true, |c| c.max_message_bytes = MAX).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let (conv, _) = stack.conversation(&v).await;
    let url = &stack.edge_urls[0];

    // Under the limit in total: reassembled and accepted.
    let (mut ws, welcome) = Ws::connect(url, &v.connect).await;
    assert_eq!(welcome["max_message"], MAX);
    let text = "a".repeat(800);
    let ok = send_frame(conv, "frag-ok", &text).to_string();
    assert!(ok.len() < MAX);
    send_fragmented(&mut ws, &ok, 300).await;
    let a = ws
        .wait_for(|f| f["id"] == "frag-ok" && (f["t"] == "accepted" || f["t"] == "error"))
        .await;
    assert_eq!(a["t"], "accepted", "{a}");
    let (status, body) = stack
        .get(&format!("/v1/conversations/{conv}/messages"), &v.token)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["messages"][0]["body"]["text"], text.as_str());

    // Every fragment under the limit, the whole message over it: 1009, nothing stored.
    let big = send_frame(conv, "frag-big", &"b".repeat(1500)).to_string();
    assert!(big.len() > MAX);
    send_fragmented(&mut ws, &big, 400).await;
    loop {
        match ws.next().await {
            Next::Closed(c) => {
                assert_eq!(c, Some(1009));
                break;
            }
            Next::Frame(f) => assert_ne!(f["id"], "frag-big", "{f}"),
        }
    }
    let db = stack.admin_db().await;
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM messages WHERE tenant_id = $1 AND client_msg_id = 'frag-big'",
            &[&t.id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);

    // The first fragment alone fits, the first continuation takes it over: 1009 too.
    let (mut ws, _) = Ws::connect(url, &v.connect).await;
    let first = Frame::message(vec![b' '; MAX - 10], OpCode::Data(Data::Text), false);
    ws.stream.send(WsMessage::Frame(first)).await.unwrap();
    let cont = Frame::message(vec![b' '; 20], OpCode::Data(Data::Continue), false);
    ws.stream.send(WsMessage::Frame(cont)).await.unwrap();
    assert_eq!(ws.close_code().await, Some(1009));
}

// ---------------------------------------------------------------------------------------
// 7. Noisy tenant
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_noisy_tenant_is_rate_limited_while_another_is_served() {
    const RATE: u32 = 10;
    const FLOODERS: usize = 5;
    // Each connection stays under the 20 consecutive refusals that close it with 4029.
    const PER_FLOODER: usize = 15;
    let stack = Stack::start_custom(1, true, |c| c.tenant_msgs_per_sec = RATE).await;
    let url = stack.edge_urls[0].clone();
    let noisy = stack.tenant().await;
    let nv = stack.visitor(&noisy).await;
    let (nconv, _) = stack.conversation(&nv).await;
    let quiet = stack.tenant().await;
    let qv = stack.visitor(&quiet).await;
    let (qconv, _) = stack.conversation(&qv).await;

    let mut flooders = Vec::new();
    for _ in 0..FLOODERS {
        flooders.push(Ws::connect(&url, &nv.connect).await.0);
    }
    let (mut q, _) = Ws::connect(&url, &qv.connect).await;

    let start = Instant::now();
    let flood = flooders.into_iter().enumerate().map(|(c, mut ws)| {
        tokio::spawn(async move {
            let frames = (0..PER_FLOODER)
                .map(|i| send_frame(nconv, &format!("n{c}-{i}"), "spam"))
                .collect();
            let answers = send_all(&mut ws, frames).await;
            (ws, answers)
        })
    });
    let flood: Vec<_> = flood.collect();
    // Meanwhile the quiet tenant sends, well within its own rate.
    let mut quiet_ids = Vec::new();
    for i in 0..RATE as usize - 2 {
        let id = format!("q-{i}");
        let a = q.send_message(qconv, &id, "hello").await;
        assert_eq!(a["t"], "accepted", "quiet tenant refused: {a}");
        quiet_ids.push(id);
    }
    let mut answers = HashMap::new();
    let mut flooders = Vec::new();
    for h in flood {
        let (ws, a) = h.await.unwrap();
        answers.extend(a);
        flooders.push(ws);
    }
    let elapsed = start.elapsed().as_secs_f64();

    let total = FLOODERS * PER_FLOODER;
    assert_eq!(answers.len(), total, "every send is answered once");
    let mut accepted = BTreeSet::new();
    let mut limited = Vec::new();
    for (id, a) in &answers {
        match (a["t"].as_str(), a["code"].as_str()) {
            (Some("accepted"), _) => {
                accepted.insert(id.clone());
            }
            (Some("error"), Some("rate_limited")) => {
                let retry = a["retry_after_ms"].as_u64();
                assert!(retry.is_some_and(|r| r > 0), "no retry_after_ms: {a}");
                limited.push((id.clone(), retry.unwrap()));
            }
            _ => panic!("{id}: unexpected answer {a}"),
        }
    }
    let allowed = RATE as f64 * (1.0 + elapsed) + 1.0;
    assert!(
        (accepted.len() as f64) <= allowed,
        "{} of {total} accepted in {elapsed:.2} s at {RATE}/s",
        accepted.len()
    );
    assert!(!limited.is_empty(), "nothing was rate limited");
    assert!(!accepted.is_empty(), "the tenant's burst was refused too");

    // What was accepted is stored, what was refused is not; the quiet tenant lost nothing.
    let db = stack.admin_db().await;
    let stored: BTreeSet<String> = db
        .query(
            "SELECT client_msg_id FROM messages WHERE tenant_id = $1",
            &[&noisy.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, accepted);
    let stored: BTreeSet<String> = db
        .query(
            "SELECT client_msg_id FROM messages WHERE tenant_id = $1",
            &[&quiet.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(stored, quiet_ids.into_iter().collect());

    // The flooders are still connected, and a refused send retried after its
    // `retry_after_ms` is accepted.
    for ws in &mut flooders {
        ws.send(json!({"t": "ping"})).await;
        ws.wait_for(|f| f["t"] == "pong").await;
    }
    let (id, retry) = limited[0].clone();
    let ws = &mut flooders[0];
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut wait = retry;
    loop {
        tokio::time::sleep(Duration::from_millis(wait)).await;
        let a = ws.send_message(nconv, &id, "spam").await;
        if a["t"] == "accepted" {
            break;
        }
        assert_eq!(a["code"], "rate_limited", "{a}");
        wait = a["retry_after_ms"].as_u64().unwrap();
        assert!(tokio::time::Instant::now() < deadline, "never accepted");
    }
}

// ---------------------------------------------------------------------------------------
// 8. Drain
// ---------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_fails_readiness_refuses_and_closes_1012_over_the_window() {
    const WINDOW: Duration = Duration::from_millis(2000);
    const CONNECTIONS: usize = 4;
    let stack = Stack::start_custom(1, true, |c| c.drain_window = WINDOW).await;
    let t = stack.tenant().await;
    let v = stack.visitor(&t).await;
    let url = &stack.edge_urls[0];
    let addr = stack.edge_addr(0);

    // Two HTTP connections accepted before the drain, their requests begun before it
    // (hyper closes a connection that has not sent a byte at once) and finished during it.
    let mut ready_conn = tcp_connect(&addr, None, None).await.unwrap();
    ready_conn
        .write_all(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        .await
        .unwrap();
    let mut upgrade_conn = tcp_connect(&addr, None, None).await.unwrap();
    let (upgrade_head, upgrade_end) = UPGRADE.split_at(UPGRADE.len() - 2);
    upgrade_conn
        .write_all(upgrade_head.as_bytes())
        .await
        .unwrap();
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        // Accepted after the two above (one listen queue, in order), and served only
        // after several round trips: by then the partial heads above have been read.
        clients.push(Ws::connect(url, &v.connect).await.0);
    }
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut ws| {
            tokio::spawn(async move {
                let code = ws.close_code().await;
                (code, Instant::now())
            })
        })
        .collect();

    let start = Instant::now();
    stack.stop_edge(0);

    // New connections are refused: the listener goes away.
    let deadline = tokio::time::Instant::now() + WAIT;
    while tcp_connect(&addr, None, None).await.is_ok() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "still accepting connections"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(tokio_tungstenite::connect_async(url.as_str())
        .await
        .is_err());
    // On connections accepted before: not ready, and no upgrade.
    ready_conn.write_all(b"\r\n").await.unwrap();
    let (got, _) = read_to_close(&mut ready_conn, WAIT).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503"), "/readyz: {got}");
    upgrade_conn
        .write_all(upgrade_end.as_bytes())
        .await
        .unwrap();
    let (got, _) = read_to_close(&mut upgrade_conn, WAIT).await;
    let got = String::from_utf8_lossy(&got);
    assert!(got.starts_with("HTTP/1.1 503"), "upgrade: {got}");

    // Every WebSocket is closed with 1012, the closes spread over the window.
    let mut times = Vec::new();
    for h in closes {
        let (code, at) = tokio::time::timeout(WAIT, h).await.unwrap().unwrap();
        assert_eq!(code, Some(1012));
        times.push(at);
    }
    times.sort();
    let spread = times[CONNECTIONS - 1] - times[0];
    let last = times[CONNECTIONS - 1] - start;
    // Evenly spaced: the last starts (n-1)/n of the window after the first.
    assert!(
        spread >= WINDOW.mul_f32(0.4),
        "closes spread over {spread:?} only, window {WINDOW:?}"
    );
    assert!(
        last <= WINDOW + Duration::from_secs(3),
        "last close {last:?} after the drain began, window {WINDOW:?}"
    );
}

// ---------------------------------------------------------------------------------------
// 9. Redis outage
// ---------------------------------------------------------------------------------------

/// A throwaway redis-server of this test alone (AOF with fsync always, so that a restart
/// keeps streams and consumer groups), killed when dropped.
struct ThrowawayRedis {
    port: u16,
    dir: PathBuf,
    child: Option<tokio::process::Child>,
}

impl ThrowawayRedis {
    async fn start() -> ThrowawayRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = std::env::temp_dir().join(format!("relaydesk-redis-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut r = ThrowawayRedis {
            port,
            dir,
            child: None,
        };
        r.restart().await;
        r
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn restart(&mut self) {
        assert!(self.child.is_none());
        let child = tokio::process::Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--save",
                "",
                "--appendonly",
                "yes",
                "--appendfsync",
                "always",
            ])
            .arg("--dir")
            .arg(&self.dir)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if self.ping().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "redis-server never answered"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn ping(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)).await else {
            return false;
        };
        if s.write_all(b"PING\r\n").await.is_err() {
            return false;
        }
        let mut buf = [0u8; 64];
        matches!(
            tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
            Ok(Ok(n)) if buf[..n].starts_with(b"+PONG")
        )
    }

    async fn kill(&mut self) {
        let mut child = self.child.take().expect("running");
        child.kill().await.unwrap();
    }
}

impl Drop for ThrowawayRedis {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.start_kill();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A stack on a throwaway Redis, and a visitor connected to it whose first message
/// (`before`) is accepted.
struct Outage {
    redis: ThrowawayRedis,
    stack: Stack,
    tenant: common::Tenant,
    conv: Uuid,
    ws: Ws,
}

async fn outage_setup() -> Outage {
    let redis = ThrowawayRedis::start().await;
    let stack = Stack::start_on(Some(redis.url()), 1, true, |_| {}).await;
    let tenant = stack.tenant().await;
    let visitor = stack.visitor(&tenant).await;
    let (conv, _) = stack.conversation(&visitor).await;
    let (mut ws, _) = Ws::connect(&stack.edge_urls[0], &visitor.connect).await;
    let a = ws.send_message(conv, "before", "hi").await;
    assert_eq!(a["t"], "accepted", "{a}");
    Outage {
        redis,
        stack,
        tenant,
        conv,
        ws,
    }
}

/// In a Redis outage the edge keeps the socket and refuses sends with `unavailable` and
/// `retry_after_ms`; once Redis is back (same port, data kept), the same edge and the
/// same core-api serve again, and the retried id is stored once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_refuses_sends_as_unavailable_then_recovers() {
    let mut o = outage_setup().await;
    o.redis.kill().await;
    let start = Instant::now();
    o.ws.send(send_frame(o.conv, "during", "anyone?")).await;
    let answer = loop {
        match o.ws.next().await {
            Next::Frame(f) if f["id"] == "during" => break Ok(f),
            Next::Frame(_) => {}
            Next::Closed(c) => break Err(c),
        }
    };
    let f = match answer {
        Ok(f) => f,
        Err(c) => panic!(
            "closed with {c:?} {:?} after the send, instead of an `unavailable` error",
            start.elapsed()
        ),
    };
    assert_eq!(f["t"], "error", "{f}");
    assert_eq!(f["code"], "unavailable", "{f}");
    assert!(f["retry_after_ms"].as_u64().is_some_and(|r| r > 0), "{f}");
    o.ws.send(json!({"t": "ping"})).await;
    o.ws.wait_for(|f| f["t"] == "pong").await;

    o.redis.restart().await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = o.ws.send_message(o.conv, "during", "anyone?").await;
        if a["t"] == "accepted" {
            break;
        }
        assert_eq!(a["code"], "unavailable", "{a}");
        assert!(tokio::time::Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(a["retry_after_ms"].as_u64().unwrap())).await;
    }
    let a = o.ws.send_message(o.conv, "after", "back").await;
    assert_eq!(a["t"], "accepted", "{a}");

    let db = o.stack.admin_db().await;
    let ids: Vec<String> = db
        .query(
            "SELECT client_msg_id FROM messages WHERE tenant_id = $1 ORDER BY seq",
            &[&o.tenant.id],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, ["before", "during", "after"]);
}
