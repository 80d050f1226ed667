//! Credential and target checks: logins are throttled per account and per address (in
//! Redis, so every core-api process sees it), unknown accounts cost what wrong passwords
//! do, and webhooks reach only public addresses unless the deployment allows others.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Stack, Tenant};
use serde_json::{json, Value};
use uuid::Uuid;

const PASSWORD: &str = "correct horse";

/// An agent of `t` with a known email and password; returns the email.
async fn agent_email(stack: &Stack, t: &Tenant) -> String {
    let email = format!("{}@acme.test", Uuid::new_v4().simple());
    let (status, body) = stack
        .post(
            "/v1/agents",
            &t.api_key,
            json!({"name": "Ann", "email": email, "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    email
}

/// One login against `base`: status, `Retry-After` (seconds) and body.
async fn login(
    stack: &Stack,
    base: &str,
    tenant: Uuid,
    email: &str,
    password: &str,
) -> (u16, Option<u64>, Value) {
    let r = stack
        .http
        .post(format!("{base}/v1/auth/login"))
        .json(&json!({"tenant": tenant, "email": email, "password": password}))
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap());
    (status, retry_after, r.json().await.unwrap())
}

async fn core_metric(stack: &Stack, name: &str) -> f64 {
    let text = stack
        .http
        .get(format!("{}/metrics", stack.core_url))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    common::metric_sum(&text, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_account_out_across_processes() {
    let stack = Stack::start_with(0, true).await;
    let t = stack.tenant().await;
    let ann = agent_email(&stack, &t).await;
    let bob = agent_email(&stack, &t).await;
    let base = stack.core_url.clone();

    // Below the limit failures are plain 401s, and a success clears them.
    for _ in 0..4 {
        let (status, _, body) = login(&stack, &base, t.id, &ann, "wrong").await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, _, body) = login(&stack, &base, t.id, &ann, PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    for _ in 0..5 {
        let (status, _, body) = login(&stack, &base, t.id, &ann, "wrong").await;
        assert_eq!(status, 401, "{body}");
    }

    // The fifth failure in a row locks the account: even the right password is refused
    // unchecked, for the first lockout (30 s).
    let (status, retry_after, body) = login(&stack, &base, t.id, &ann, PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    let retry_after = retry_after.expect("Retry-After");
    assert!((1..=30).contains(&retry_after), "{retry_after}");
    // The email's case and spaces do not make another account.
    let (status, _, _) = login(
        &stack,
        &base,
        t.id,
        &format!(" {} ", ann.to_uppercase()),
        PASSWORD,
    )
    .await;
    assert_eq!(status, 429);
    assert!(core_metric(&stack, "relaydesk_core_login_throttled_total").await >= 2.0);

    // Another account from the same address is not affected.
    let (status, _, body) = login(&stack, &base, t.id, &bob, PASSWORD).await;
    assert_eq!(status, 200, "{body}");

    // A second core-api process sees the same lockout: it lives in Redis.
    let (l, addr) = common::listener().await;
    let config = Stack::core_config(&stack.env, &stack.prefix, &stack.operator, &stack.edge_urls);
    let stop = tokio_util::sync::CancellationToken::new();
    let _stop_on_exit = stop.clone().drop_guard();
    let s = stop.clone();
    tokio::spawn(async move {
        let _ = relaydesk_core::run(l, config, async move { s.cancelled().await }).await;
    });
    let other = format!("http://{addr}");
    stack.wait_ready(&other).await;
    let (status, retry_after, body) = login(&stack, &other, t.id, &ann, PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lockouts_double_up_to_their_cap() {
    let stack = Stack::start_core_tuned(0, |c| {
        c.login_account_failures = 2;
        c.login_lockout_base = Duration::from_millis(1500);
        c.login_lockout_max = Duration::from_millis(2500);
    })
    .await;
    let t = stack.tenant().await;
    let ann = agent_email(&stack, &t).await;
    let base = stack.core_url.clone();
    for _ in 0..2 {
        assert_eq!(login(&stack, &base, t.id, &ann, "wrong").await.0, 401);
    }
    // 1.5 s after the second failure.
    let (status, retry_after, _) = login(&stack, &base, t.id, &ann, "wrong").await;
    assert_eq!((status, retry_after), (429, Some(2)));
    // Each failure after a lockout ends doubles it (3 s), capped at 2.5 s.
    for _ in 0..2 {
        let deadline = Instant::now() + common::WAIT;
        loop {
            let (status, _, body) = login(&stack, &base, t.id, &ann, "wrong").await;
            if status == 401 {
                break;
            }
            assert_eq!(status, 429, "{body}");
            assert!(Instant::now() < deadline, "the lockout never ended");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let (status, retry_after, _) = login(&stack, &base, t.id, &ann, "wrong").await;
        assert_eq!((status, retry_after), (429, Some(3)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_lock_the_address_out() {
    let stack = Stack::start_with(0, true).await;
    let t = stack.tenant().await;
    let ann = agent_email(&stack, &t).await;
    let base = stack.core_url.clone();
    // Twenty failures from one address, each on another (unknown) account.
    for i in 0..20 {
        let (status, _, body) = login(
            &stack,
            &base,
            t.id,
            &format!("nobody-{i}@acme.test"),
            "guess",
        )
        .await;
        assert_eq!(status, 401, "{body}");
    }
    // Now even a valid login from this address waits.
    let (status, retry_after, body) = login(&stack, &base, t.id, &ann, PASSWORD).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry_after.is_some());
    assert!(core_metric(&stack, "relaydesk_core_login_throttled_total").await >= 1.0);
}

/// Behind a trusted proxy (here the test's own address), the address throttled is the
/// client's from `X-Forwarded-For`: one client locked out leaves another through the same
/// proxy free. Without `TRUSTED_PROXIES` the header changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_client_is_throttled() {
    let stack = Stack::start_core_tuned(0, |c| {
        c.login_address_failures = 3;
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let t = stack.tenant().await;
    let ann = agent_email(&stack, &t).await;
    let from = |client: &'static str, email: String, password: &'static str| {
        let r = stack
            .http
            .post(format!("{}/v1/auth/login", stack.core_url))
            .header("X-Forwarded-For", format!("192.0.2.66, {client}"))
            .json(&json!({"tenant": t.id, "email": email, "password": password}));
        async move { r.send().await.unwrap().status().as_u16() }
    };
    for i in 0..3 {
        assert_eq!(
            from("198.51.100.1", format!("nobody-{i}@acme.test"), "guess").await,
            401
        );
    }
    assert_eq!(from("198.51.100.1", ann.clone(), PASSWORD).await, 429);
    // Another client behind the same proxy (with the same forged left-most entry).
    assert_eq!(from("198.51.100.2", ann.clone(), PASSWORD).await, 200);

    // Not trusted: every request is the peer's, whatever it forwards.
    let stack = Stack::start_core_tuned(0, |c| c.login_address_failures = 3).await;
    let t = stack.tenant().await;
    for (i, client) in ["198.51.100.1", "198.51.100.2", "198.51.100.3"]
        .iter()
        .enumerate()
    {
        let status = stack
            .http
            .post(format!("{}/v1/auth/login", stack.core_url))
            .header("X-Forwarded-For", *client)
            .json(&json!({"tenant": t.id, "email": format!("nobody-{i}@acme.test"), "password": "guess"}))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(status, 401);
    }
    let ann = agent_email(&stack, &t).await;
    let (status, _, body) = login(&stack, &stack.core_url, t.id, &ann, PASSWORD).await;
    assert_eq!(status, 429, "{body}");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_accounts_answer_like_wrong_passwords() {
    // Throttling out of the way: this measures the credential check alone.
    let stack = Stack::start_core_tuned(0, |c| {
        c.login_account_failures = 1000;
        c.login_address_failures = 1000;
    })
    .await;
    let t = stack.tenant().await;
    let ann = agent_email(&stack, &t).await;
    let base = stack.core_url.clone();
    let mut unknown = Vec::new();
    let mut wrong = Vec::new();
    let mut bodies = Vec::new();
    // Interleaved, so that a busy moment of the machine hits both alike.
    for i in 0..30 {
        let started = Instant::now();
        let (status, _, body) = login(
            &stack,
            &base,
            t.id,
            &format!("nobody-{i}@acme.test"),
            "guess",
        )
        .await;
        unknown.push(started.elapsed());
        assert_eq!(status, 401);
        bodies.push(body);
        let started = Instant::now();
        let (status, _, body) = login(&stack, &base, t.id, &ann, "guess").await;
        wrong.push(started.elapsed());
        assert_eq!(status, 401);
        bodies.push(body);
    }
    assert!(
        bodies.windows(2).all(|w| w[0] == w[1]),
        "one answer for both"
    );
    let (unknown, wrong) = (median(unknown), median(wrong));
    let ratio = unknown.as_secs_f64() / wrong.as_secs_f64();
    assert!(
        (0.5..=2.0).contains(&ratio),
        "unknown account {unknown:?} vs wrong password {wrong:?} (median of 30)"
    );
}

/// A server on 127.0.0.1 counting the requests it gets; returns its port.
async fn counting_receiver() -> (u16, Arc<AtomicUsize>) {
    let hits = Arc::new(AtomicUsize::new(0));
    let h = hits.clone();
    let app = axum::Router::new().fallback(move || {
        let h = h.clone();
        async move {
            h.fetch_add(1, Ordering::SeqCst);
            "ok"
        }
    });
    let (listener, addr) = common::listener().await;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let port = addr.rsplit(':').next().unwrap().parse().unwrap();
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_reach_only_public_addresses() {
    let stack = Stack::start_core_tuned(0, |c| c.webhook_allow_private = false).await;
    let t = stack.tenant().await;
    let (port, hits) = counting_receiver().await;

    // Refused at creation: literal addresses and a name that resolves to loopback.
    let private = [
        format!("http://localhost:{port}/hook"),
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::ffff:127.0.0.1]:{port}/hook"),
        format!("http://[::1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
        "http://10.0.0.7/hook".to_owned(),
        "http://[fd00:ec2::254]/hook".to_owned(),
    ];
    for url in &private {
        let (status, body) = stack
            .post(
                "/v1/webhooks",
                &t.api_key,
                json!({"url": url, "events": ["conversation.created"]}),
            )
            .await;
        assert_eq!(status, 400, "{url} → {body}");
        let message = body["error"]["message"].as_str().unwrap();
        assert!(message.contains("public address"), "{message}");
    }

    // Refused at delivery, for a row that got past creation (say, a name whose address
    // changed since). Checked on the delivery client itself: every core-api of the suite
    // sends the due deliveries of every tenant of the shared database, and the others
    // allow loopback receivers.
    let http = relaydesk_core::webhooks::http_client(false).unwrap();
    let sent = http
        .post(format!("http://localhost:{port}/hook"))
        .body("{}")
        .send()
        .await;
    let error = sent.expect_err("localhost is refused");
    let mut chain = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(s) = source {
        chain.push_str(&format!(": {s}"));
        source = s.source();
    }
    assert!(chain.contains("not a public address"), "{chain}");
    for url in [
        format!("http://127.0.0.1:{port}/hook"),
        format!("http://[::ffff:7f00:1]:{port}/hook"),
        "http://169.254.169.254/latest/meta-data/".to_owned(),
    ] {
        let refused = relaydesk_core::webhooks::refused_target(false, &url);
        assert!(
            refused
                .as_deref()
                .is_some_and(|e| e.contains("not a public address")),
            "{url}: {refused:?}"
        );
        assert_eq!(relaydesk_core::webhooks::refused_target(true, &url), None);
    }
    assert!(relaydesk_core::webhooks::refused_target(false, "https://1.1.1.1/hook").is_none());

    // A redirect is never followed, wherever it points.
    let redirect = axum::Router::new().fallback(move || async move {
        (
            axum::http::StatusCode::FOUND,
            [("location", format!("http://127.0.0.1:{port}/hook"))],
        )
    });
    let (listener, addr) = common::listener().await;
    tokio::spawn(async move { axum::serve(listener, redirect).await });
    let answer = relaydesk_core::webhooks::http_client(true)
        .unwrap()
        .post(format!("http://{addr}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 302);
    assert_eq!(
        hits.load(Ordering::SeqCst),
        0,
        "no request reached the receiver"
    );

    // The same client with private targets allowed (development) does reach it.
    let answer = relaydesk_core::webhooks::http_client(true)
        .unwrap()
        .post(format!("http://localhost:{port}/hook"))
        .send()
        .await
        .unwrap();
    assert_eq!(answer.status().as_u16(), 200);
    assert_eq!(hits.load(Ordering::SeqCst), 1);
}
