//! The system-test harness: a real stack (core-api and edges against the private
//! PostgreSQL and Redis that `cargo xtask test` starts), isolated per test by its own
//! Redis key prefix and its own tenants, plus HTTP and WebSocket clients: a protocol v1
//! client ([`Ws`]) and a raw-socket peer that writes frames by hand ([`RawWs`]).

#![allow(dead_code)]

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(30);

/// Connection settings handed over by `cargo xtask test`.
#[derive(Clone)]
pub struct TestEnv {
    pub database_url: String,
    pub admin_database_url: String,
    pub redis_url: String,
    pub signing_pem: Vec<u8>,
    pub public_pem: Vec<u8>,
}

pub fn test_env() -> TestEnv {
    let var = |name: &str| {
        std::env::var(name)
            .unwrap_or_else(|_| panic!("{name} is not set: run the suite with `cargo xtask test`"))
    };
    let keys = std::path::PathBuf::from(var("RELAYDESK_TEST_KEYS_DIR"));
    TestEnv {
        database_url: var("RELAYDESK_TEST_DATABASE_URL"),
        admin_database_url: var("RELAYDESK_TEST_ADMIN_DATABASE_URL"),
        redis_url: var("RELAYDESK_TEST_REDIS_URL"),
        signing_pem: std::fs::read(keys.join("signing.pem")).expect("signing key"),
        public_pem: std::fs::read(keys.join("public.pem")).expect("public key"),
    }
}

/// A running stack; everything stops when it is dropped.
pub struct Stack {
    pub env: TestEnv,
    pub prefix: String,
    pub operator: String,
    pub core_url: String,
    pub edge_urls: Vec<String>,
    pub http: reqwest::Client,
    stop: CancellationToken,
    /// One per edge (children of the stack's token): cancelling one drains that edge.
    pub edge_stops: Vec<CancellationToken>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

pub fn init_logs() {
    let _ = tracing_subscriber_init();
}

fn tracing_subscriber_init() -> Option<()> {
    relaydesk_shared::telemetry::init_tracing();
    Some(())
}

pub async fn listener() -> (TcpListener, String) {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr").to_string();
    (l, addr)
}

impl Stack {
    /// One in-process core-api and `edges` in-process edges.
    pub async fn start(edges: usize) -> Stack {
        Self::start_with(edges, true).await
    }

    /// `with_core = false` leaves core-api to the test (e.g. as child processes).
    pub async fn start_with(edges: usize, with_core: bool) -> Stack {
        Self::start_custom(edges, with_core, |_| {}).await
    }

    /// Like [`Stack::start_with`], with each edge's configuration adjusted by `tune`.
    /// Send-rate limits are lifted unless `tune` sets them: these tests measure the
    /// message path, not the limits.
    pub async fn start_custom(
        edges: usize,
        with_core: bool,
        tune: impl Fn(&mut relaydesk_edge::Config),
    ) -> Stack {
        Self::start_on(None, edges, with_core, tune).await
    }

    /// Like [`Stack::start_custom`], against `redis_url` (core-api and edges alike)
    /// instead of the suite's Redis when it is given.
    pub async fn start_on(
        redis_url: Option<String>,
        edges: usize,
        with_core: bool,
        tune: impl Fn(&mut relaydesk_edge::Config),
    ) -> Stack {
        Self::start_full(redis_url, edges, with_core, tune, |_| {}).await
    }

    /// One core-api, its configuration adjusted by `tune_core`, and `edges` edges.
    pub async fn start_core_tuned(
        edges: usize,
        tune_core: impl Fn(&mut relaydesk_core::Config),
    ) -> Stack {
        Self::start_full(None, edges, true, |_| {}, tune_core).await
    }

    /// Everything configurable: Redis, edges and their tuning, core-api and its tuning.
    pub async fn start_full(
        redis_url: Option<String>,
        edges: usize,
        with_core: bool,
        tune: impl Fn(&mut relaydesk_edge::Config),
        tune_core: impl Fn(&mut relaydesk_core::Config),
    ) -> Stack {
        init_logs();
        let mut env = test_env();
        if let Some(url) = redis_url {
            env.redis_url = url;
        }
        let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..10]);
        let operator = format!("op-{}", Uuid::new_v4().simple());
        let stop = CancellationToken::new();
        let mut edge_urls = Vec::new();
        let mut edge_stops = Vec::new();
        for _ in 0..edges {
            let (l, addr) = listener().await;
            edge_urls.push(format!("ws://{addr}/v1/ws"));
            let mut config = relaydesk_edge::Config::new(
                env.redis_url.clone(),
                prefix.clone(),
                env.public_pem.clone(),
            );
            config.conn_msgs_per_sec = 1_000_000;
            config.tenant_msgs_per_sec = 1_000_000;
            tune(&mut config);
            let s = stop.child_token();
            edge_stops.push(s.clone());
            tokio::spawn(async move {
                if let Err(e) =
                    relaydesk_edge::run(l, config, async move { s.cancelled().await }).await
                {
                    eprintln!("edge stopped: {e}");
                }
            });
        }
        let (l, addr) = listener().await;
        let core_url = format!("http://{addr}");
        if with_core {
            let mut config = Stack::core_config(&env, &prefix, &operator, &edge_urls);
            tune_core(&mut config);
            let s = stop.clone();
            tokio::spawn(async move {
                if let Err(e) =
                    relaydesk_core::run(l, config, async move { s.cancelled().await }).await
                {
                    eprintln!("core-api stopped: {e}");
                }
            });
        } else {
            drop(l);
        }
        let stack = Stack {
            env,
            prefix,
            operator,
            core_url,
            edge_urls,
            http: reqwest::Client::builder()
                .timeout(WAIT)
                .build()
                .expect("http client"),
            stop,
            edge_stops,
        };
        for url in stack.edge_urls.clone() {
            stack
                .wait_ready(&url.replace("ws://", "http://").replace("/v1/ws", ""))
                .await;
        }
        if with_core {
            stack.wait_ready(&stack.core_url).await;
        }
        stack
    }

    pub fn core_config(
        env: &TestEnv,
        prefix: &str,
        operator: &str,
        edges: &[String],
    ) -> relaydesk_core::Config {
        let mut c = relaydesk_core::Config::new(
            env.database_url.clone(),
            env.redis_url.clone(),
            prefix.to_owned(),
            env.signing_pem.clone(),
            operator.to_owned(),
        );
        c.edge_urls = edges.to_vec();
        c.database_pool = 4;
        c.commit_workers = 2;
        c.claim_idle = Duration::from_millis(1500);
        c.webhook_retry_base = Duration::from_millis(200);
        // The suite's webhook receivers listen on 127.0.0.1.
        c.webhook_allow_private = true;
        c
    }

    pub async fn wait_ready(&self, base: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = self.http.get(format!("{base}/readyz")).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{base} never became ready"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub async fn post(&self, path: &str, bearer: &str, body: Value) -> (u16, Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.core_url))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// A request with a JSON body and any method.
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Value,
    ) -> (u16, Value) {
        let r = self
            .http
            .request(method, format!("{}{path}", self.core_url))
            .bearer_auth(bearer)
            .json(&body)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    /// `POST /v1/conversations/{conv}/messages` (the REST fallback) of a text under the
    /// idempotency `key`: the status and the answer.
    pub async fn post_text(&self, conv: Uuid, bearer: &str, key: &str, text: &str) -> (u16, Value) {
        let r = self
            .http
            .post(format!(
                "{}/v1/conversations/{conv}/messages",
                self.core_url
            ))
            .bearer_auth(bearer)
            .header("Idempotency-Key", key)
            .json(&json!({"kind": "text", "body": {"text": text}}))
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, bearer: &str) -> (u16, Value) {
        let r = self
            .http
            .get(format!("{}{path}", self.core_url))
            .bearer_auth(bearer)
            .send()
            .await
            .expect("request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    pub async fn tenant(&self) -> Tenant {
        let (status, body) = self
            .post("/v1/tenants", &self.operator, json!({"name": "Acme"}))
            .await;
        assert_eq!(status, 201, "{body}");
        Tenant {
            id: uuid(&body["tenant"]["id"]),
            api_key: body["api_key"].as_str().expect("api key").to_owned(),
            site_key: body["tenant"]["site_key"]
                .as_str()
                .expect("site key")
                .to_owned(),
        }
    }

    /// An online agent of `role`, with a session token and a connection token.
    pub async fn agent(&self, t: &Tenant, role: &str) -> Principal {
        self.agent_with(t, role, "human", 1000, true).await
    }

    /// An agent of `role` and `kind` (human or bot) taking at most `max` conversations,
    /// online or offline.
    pub async fn agent_with(
        &self,
        t: &Tenant,
        role: &str,
        kind: &str,
        max: i32,
        online: bool,
    ) -> Principal {
        let email = format!("{}@acme.test", Uuid::new_v4().simple());
        let body = json!({"name": "Ann", "email": email, "password": "correct horse", "role": role, "kind": kind, "max_concurrent": max});
        let (status, body) = self.post("/v1/agents", &t.api_key, body).await;
        assert_eq!(status, 201, "{body}");
        let id = uuid(&body["agent"]["id"]);
        let (status, body) = self
            .post(
                "/v1/auth/login",
                "",
                json!({"tenant": t.id, "email": email, "password": "correct horse"}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let token = body["token"].as_str().expect("token").to_owned();
        let r = self
            .http
            .put(format!("{}/v1/agents/{id}/status", self.core_url))
            .bearer_auth(&token)
            .json(&json!({"status": if online { "online" } else { "offline" }}))
            .send()
            .await
            .expect("status");
        assert_eq!(r.status().as_u16(), 200);
        let (status, body) = self.post("/v1/connect-tokens", &token, json!({})).await;
        assert_eq!(status, 200, "{body}");
        Principal {
            id,
            token,
            connect: body["token"].as_str().expect("connect").to_owned(),
        }
    }

    pub async fn visitor(&self, t: &Tenant) -> Principal {
        let (status, body) = self
            .post("/v1/widget/sessions", "", json!({"site_key": t.site_key}))
            .await;
        assert_eq!(status, 201, "{body}");
        Principal {
            id: uuid(&body["visitor"]["id"]),
            token: body["token"].as_str().expect("token").to_owned(),
            connect: body["connect_token"].as_str().expect("connect").to_owned(),
        }
    }

    /// A conversation of `visitor`; returns its id and its assignee.
    pub async fn conversation(&self, visitor: &Principal) -> (Uuid, Option<Uuid>) {
        let (status, body) = self
            .post(
                "/v1/conversations",
                &visitor.token,
                json!({"subject": "help"}),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        let c = &body["conversation"];
        (
            uuid(&c["id"]),
            c["assignee"]
                .as_str()
                .map(|s| Uuid::parse_str(s).expect("uuid")),
        )
    }

    /// `GET /v1/conversations/{id}` with the tenant's API key: the conversation.
    pub async fn conversation_state(&self, t: &Tenant, id: Uuid) -> Value {
        let (status, body) = self
            .get(&format!("/v1/conversations/{id}"), &t.api_key)
            .await;
        assert_eq!(status, 200, "{body}");
        body["conversation"].clone()
    }

    /// Polls the conversation until `pred` holds (within [`WAIT`]); returns it.
    pub async fn until_conversation(
        &self,
        t: &Tenant,
        id: Uuid,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let c = self.conversation_state(t, id).await;
            if pred(&c) {
                return c;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "condition never held: {c}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The admin (owner) connection, for checks behind the application's back.
    pub async fn admin_db(&self) -> tokio_postgres::Client {
        connect_db(&self.env.admin_database_url).await
    }
}

pub async fn connect_db(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect postgres");
    tokio::spawn(conn);
    client
}

pub fn uuid(v: &Value) -> Uuid {
    Uuid::parse_str(v.as_str().unwrap_or_else(|| panic!("not a uuid: {v}"))).expect("uuid")
}

pub struct Tenant {
    pub id: Uuid,
    pub api_key: String,
    pub site_key: String,
}

pub struct Principal {
    pub id: Uuid,
    pub token: String,
    pub connect: String,
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A protocol v1 client.
pub struct Ws {
    pub stream: Stream,
}

/// What the next frame was.
#[derive(Debug)]
pub enum Next {
    Frame(Value),
    Closed(Option<u16>),
}

impl Ws {
    pub async fn open(url: &str) -> Ws {
        let (stream, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Ws { stream }
    }

    /// Connects and authenticates; returns the client and the `welcome` frame.
    pub async fn connect(url: &str, token: &str) -> (Ws, Value) {
        let mut ws = Ws::open(url).await;
        ws.send(json!({"t": "hello", "token": token})).await;
        let welcome = ws.next_frame().await;
        assert_eq!(welcome["t"], "welcome", "{welcome}");
        (ws, welcome)
    }

    pub async fn send(&mut self, v: Value) {
        self.stream
            .send(WsMessage::Text(v.to_string().into()))
            .await
            .expect("ws send");
    }

    pub async fn send_raw(&mut self, m: WsMessage) {
        let _ = self.stream.send(m).await;
    }

    /// The next text frame or the close, within [`WAIT`].
    pub async fn next(&mut self) -> Next {
        loop {
            let m = tokio::time::timeout(WAIT, self.stream.next())
                .await
                .expect("timed out waiting for a frame");
            match m {
                Some(Ok(WsMessage::Text(t))) => {
                    return Next::Frame(serde_json::from_str(&t).expect("json frame"))
                }
                Some(Ok(WsMessage::Close(c))) => return Next::Closed(c.map(|c| u16::from(c.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Next::Closed(None),
            }
        }
    }

    pub async fn next_frame(&mut self) -> Value {
        match self.next().await {
            Next::Frame(v) => v,
            Next::Closed(c) => panic!("closed ({c:?}) while waiting for a frame"),
        }
    }

    /// Skips frames until one satisfies `pred`.
    pub async fn wait_for(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let f = self.next_frame().await;
            if pred(&f) {
                return f;
            }
        }
    }

    /// The close code, skipping frames.
    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            if let Next::Closed(c) = self.next().await {
                return c;
            }
        }
    }

    /// Sends a message and waits for its `accepted` (or `error`).
    pub async fn send_message(&mut self, conv: Uuid, id: &str, text: &str) -> Value {
        self.send(
            json!({"t": "send", "id": id, "conv": conv, "kind": "text", "body": {"text": text}}),
        )
        .await;
        self.wait_for(|f| (f["t"] == "accepted" || f["t"] == "error") && f["id"] == id)
            .await
    }

    /// Subscribes from `after` and collects the replay: returns (`head`, replayed frames).
    pub async fn sub(&mut self, conv: Uuid, after: u64) -> (u64, Vec<Value>) {
        self.send(json!({"t": "sub", "conv": conv, "after": after}))
            .await;
        let subbed = self
            .wait_for(|f| f["t"] == "subbed" && f["conv"] == json!(conv))
            .await;
        let head = subbed["head"].as_u64().expect("head");
        let mut got = Vec::new();
        let mut last = after;
        while last < head {
            let f = self
                .wait_for(|f| f["t"] == "msg" && f["conv"] == json!(conv))
                .await;
            last = f["seq"].as_u64().expect("seq");
            got.push(f);
        }
        (head, got)
    }
}

impl Stack {
    /// `host:port` of edge `i`.
    pub fn edge_addr(&self, i: usize) -> String {
        self.edge_urls[i]
            .trim_start_matches("ws://")
            .trim_end_matches("/v1/ws")
            .to_owned()
    }

    /// Starts draining edge `i` (its shutdown future resolves); the others keep running.
    pub fn stop_edge(&self, i: usize) {
        self.edge_stops[i].cancel();
    }

    /// The sum of every series of the metric `name` on edge `i`'s `/metrics` (0 when
    /// absent). The recorder is process-wide: compare with a value read earlier.
    pub async fn edge_metric(&self, i: usize, name: &str) -> f64 {
        let url = format!("http://{}/metrics", self.edge_addr(i));
        let text = self
            .http
            .get(url)
            .send()
            .await
            .expect("metrics request")
            .text()
            .await
            .expect("metrics body");
        metric_sum(&text, name)
    }
}

/// The sum of every series of `name` in Prometheus text.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A TCP connection to `addr`, from `source` (any address of 127/8) if given, with the
/// receive buffer set to `recv_buffer` bytes (before connecting) if given.
pub async fn tcp_connect(
    addr: &str,
    source: Option<std::net::IpAddr>,
    recv_buffer: Option<u32>,
) -> std::io::Result<tokio::net::TcpStream> {
    let addr: std::net::SocketAddr = addr.parse().expect("socket address");
    let socket = tokio::net::TcpSocket::new_v4()?;
    if let Some(n) = recv_buffer {
        socket.set_recv_buffer_size(n)?;
    }
    if let Some(ip) = source {
        socket.bind(std::net::SocketAddr::new(ip, 0))?;
    }
    socket.connect(addr).await
}

impl Ws {
    /// The WebSocket handshake for `url` over an already connected `tcp`.
    pub async fn over(
        url: &str,
        tcp: tokio::net::TcpStream,
    ) -> Result<Ws, tokio_tungstenite::tungstenite::Error> {
        let (stream, _) =
            tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp))
                .await?;
        Ok(Ws { stream })
    }

    /// Authenticates an open connection; returns the `welcome` frame.
    pub async fn hello(&mut self, token: &str) -> Value {
        self.send(json!({"t": "hello", "token": token})).await;
        let welcome = self.next_frame().await;
        assert_eq!(welcome["t"], "welcome", "{welcome}");
        welcome
    }
}

/// A complete WebSocket upgrade request for `/v1/ws`.
pub const UPGRADE: &str = "GET /v1/ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// Reads from `s` until the peer closes (EOF or reset) or `limit` passes; returns what
/// was read and whether the peer closed.
pub async fn read_to_close(s: &mut tokio::net::TcpStream, limit: Duration) -> (Vec<u8>, bool) {
    use tokio::io::AsyncReadExt;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// WebSocket opcodes (RFC 6455 section 5.2).
pub mod op {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
}

/// A masked client frame written by hand (RFC 6455 section 5.2), its length in the
/// shortest form.
pub fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![(u8::from(fin) << 7) | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// A client close frame with `code` and `reason`.
pub fn close_frame(code: u16, reason: &[u8]) -> Vec<u8> {
    let mut payload = code.to_be_bytes().to_vec();
    payload.extend_from_slice(reason);
    client_frame(true, op::CLOSE, &payload)
}

/// How a [`RawWs`] connection ended.
#[derive(Debug, PartialEq, Eq)]
pub struct Ending {
    /// The code of the edge's close frame; `None` when the stream ended without one (or
    /// the frame had no code).
    pub code: Option<u16>,
    /// The stream ended with a reset rather than an orderly end.
    pub reset: bool,
}

impl Ending {
    /// A close frame with `code`, then an orderly end of the stream.
    pub fn clean(code: u16) -> Ending {
        Ending {
            code: Some(code),
            reset: false,
        }
    }
}

/// A WebSocket peer on a raw TCP socket: the upgrade and every frame are written by hand,
/// server frames parsed by hand, so that it can send what no client library would.
pub struct RawWs {
    pub tcp: tokio::net::TcpStream,
    /// Read but not yet parsed.
    input: Vec<u8>,
}

impl RawWs {
    /// Connects to the edge at `addr` (`host:port`) and upgrades with [`UPGRADE`].
    pub async fn upgrade(addr: &str) -> RawWs {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut tcp = tcp_connect(addr, None, None).await.expect("connect");
        tcp.write_all(UPGRADE.as_bytes())
            .await
            .expect("upgrade request");
        let mut input = Vec::new();
        let mut buf = [0u8; 4096];
        let end = loop {
            if let Some(i) = input.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = tokio::time::timeout(WAIT, tcp.read(&mut buf))
                .await
                .expect("upgrade answer in time")
                .expect("upgrade answer");
            assert!(n > 0, "closed during the upgrade");
            input.extend_from_slice(&buf[..n]);
        };
        let head = String::from_utf8_lossy(&input[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
        input.drain(..end);
        RawWs { tcp, input }
    }

    /// Upgrades, then authenticates with `token` and reads the `welcome`.
    pub async fn hello(addr: &str, token: &str) -> RawWs {
        let mut ws = RawWs::upgrade(addr).await;
        let hello = json!({"t": "hello", "token": token}).to_string();
        ws.send(&client_frame(true, op::TEXT, hello.as_bytes()))
            .await;
        match ws.next_frame().await {
            Some((op::TEXT, payload)) => {
                let v: Value = serde_json::from_slice(&payload).expect("json");
                assert_eq!(v["t"], "welcome", "{v}");
            }
            other => panic!("expected welcome, got {other:?}"),
        }
        ws
    }

    /// Writes `bytes` as they are.
    pub async fn send(&mut self, bytes: &[u8]) {
        use tokio::io::AsyncWriteExt;
        self.tcp.write_all(bytes).await.expect("write");
    }

    /// Reads more input, before `deadline`, writing one byte of `trickle` per tick of its
    /// interval meanwhile; `Err(reset)` when the stream ended (`reset`: by a reset).
    async fn fill(
        &mut self,
        trickle: &mut Option<Trickle<'_>>,
        deadline: tokio::time::Instant,
    ) -> Result<(), bool> {
        loop {
            let mut buf = [0u8; 4096];
            match self.tcp.try_read(&mut buf) {
                Ok(0) => return Err(false),
                Ok(n) => {
                    self.input.extend_from_slice(&buf[..n]);
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.kind() == std::io::ErrorKind::ConnectionReset),
            }
            let tcp = &self.tcp;
            tokio::select! {
                r = tcp.readable() => {
                    if r.is_err() {
                        return Err(false);
                    }
                }
                _ = async {
                    match trickle.as_mut() {
                        Some(t) if t.sent < t.bytes.len() => {
                            t.every.tick().await;
                            if tcp.try_write(&t.bytes[t.sent..=t.sent]).is_ok() {
                                t.sent += 1;
                            }
                        }
                        _ => std::future::pending().await,
                    }
                } => {}
                _ = tokio::time::sleep_until(deadline) => panic!("timed out reading from the edge"),
            }
        }
    }

    /// The next server frame as (opcode, payload), within [`WAIT`], skipping the edge's
    /// heartbeat pings (which come at any time); `None` when the stream ended first.
    /// Server frames are unmasked and, from the edge, unfragmented.
    pub async fn next_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            match self.next_or_end().await {
                Ok((op::PING, _)) => {}
                Ok(frame) => return Some(frame),
                Err(_) => return None,
            }
        }
    }

    async fn next_or_end(&mut self) -> Result<(u8, Vec<u8>), bool> {
        let deadline = tokio::time::Instant::now() + WAIT;
        self.next_or_end_trickling(&mut None, deadline).await
    }

    async fn next_or_end_trickling(
        &mut self,
        trickle: &mut Option<Trickle<'_>>,
        deadline: tokio::time::Instant,
    ) -> Result<(u8, Vec<u8>), bool> {
        loop {
            if let Some((opcode, len, at)) = server_header(&self.input) {
                if self.input.len() >= at + len {
                    let payload = self.input[at..at + len].to_vec();
                    self.input.drain(..at + len);
                    return Ok((opcode, payload));
                }
            }
            self.fill(trickle, deadline).await?;
        }
    }

    /// Reads up to the edge's close frame (skipping other frames), then to the end of
    /// the stream, all within [`WAIT`]: the close code and whether the stream was reset.
    pub async fn ending(&mut self) -> Ending {
        self.ending_trickling(&mut None).await
    }

    /// Like [`RawWs::ending`], writing one byte of `bytes` every `every` meanwhile (a
    /// slowloris); also returns how many were written.
    pub async fn ending_while_trickling(
        &mut self,
        bytes: &[u8],
        every: Duration,
    ) -> (Ending, usize) {
        let mut trickle = Some(Trickle {
            bytes,
            sent: 0,
            every: tokio::time::interval(every),
        });
        let ending = self.ending_trickling(&mut trickle).await;
        (ending, trickle.map_or(0, |t| t.sent))
    }

    async fn ending_trickling(&mut self, trickle: &mut Option<Trickle<'_>>) -> Ending {
        let deadline = tokio::time::Instant::now() + WAIT;
        let code = loop {
            match self.next_or_end_trickling(trickle, deadline).await {
                Ok((op::CLOSE, payload)) => {
                    break match payload[..] {
                        [a, b, ..] => Some(u16::from_be_bytes([a, b])),
                        _ => None,
                    }
                }
                Ok(_) => {}
                Err(reset) => return Ending { code: None, reset },
            }
        };
        loop {
            self.input.clear();
            if let Err(reset) = self.fill(trickle, deadline).await {
                return Ending { code, reset };
            }
        }
    }
}

/// Bytes written one per tick while a [`RawWs`] reads.
struct Trickle<'a> {
    bytes: &'a [u8],
    sent: usize,
    every: tokio::time::Interval,
}

/// The header of the server frame at the start of `buf`: opcode, payload length and
/// header length; `None` while incomplete.
fn server_header(buf: &[u8]) -> Option<(u8, usize, usize)> {
    let (&b0, &b1) = (buf.first()?, buf.get(1)?);
    assert_eq!(b1 & 0x80, 0, "server frames are not masked");
    let (len, at) = match b1 & 0x7f {
        126 => (
            usize::from(u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?)),
            4,
        ),
        127 => (
            usize::try_from(u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?)).ok()?,
            10,
        ),
        n => (usize::from(n), 2),
    };
    Some((b0 & 0x0f, len, at))
}
