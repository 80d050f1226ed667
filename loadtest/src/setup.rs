//! The deployment under test ([`Target`]) and world creation through HTTP API v1 from an
//! operator token: a fresh tenant per run, its agents (online, with large capacity),
//! visitors (widget sessions), conversations and connection tokens.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::{stream, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use uuid::Uuid;

/// Where the deployment is and how to create a world in it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Target {
    /// core-api base URL, e.g. `http://127.0.0.1:8080`.
    pub core: String,
    /// Edge WebSocket URLs, e.g. `ws://127.0.0.1:8081/v1/ws`.
    pub edges: Vec<String>,
    pub operator_token: String,
    /// Edge process ids, in the order of `edges` (for resident memory without `/metrics`).
    #[serde(default)]
    pub edge_pids: Vec<u32>,
}

impl Target {
    /// Reads `CORE_URL`, `EDGE_URLS` (space separated, maybe quoted) and `OPERATOR_TOKEN`
    /// from a `.relaydesk/dev.env`-style file.
    pub fn from_env_file(path: &Path) -> Result<Target> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let mut t = Target::default();
        for line in text.lines() {
            let Some((k, v)) = line.trim().split_once('=') else {
                continue;
            };
            let v = v.trim().trim_matches('"').trim_matches('\'');
            match k.trim() {
                "CORE_URL" => t.core = v.to_owned(),
                "EDGE_URLS" => t.edges = v.split_whitespace().map(str::to_owned).collect(),
                "OPERATOR_TOKEN" => t.operator_token = v.to_owned(),
                _ => {}
            }
        }
        Ok(t)
    }

    pub fn validate(&self) -> Result<()> {
        if self.core.is_empty() {
            bail!("no core-api URL: pass --core URL or --env FILE");
        }
        if self.edges.is_empty() {
            bail!("no edge URL: pass --edge URL (repeatable) or --env FILE");
        }
        if self.operator_token.is_empty() {
            bail!("no operator token: pass --operator-token T or --env FILE");
        }
        Ok(())
    }

    /// The `/metrics` URL of edge `i`: same host and port as its WebSocket URL.
    pub fn edge_metrics_url(&self, i: usize) -> Option<String> {
        let ws = self.edges.get(i)?;
        let rest = ws
            .strip_prefix("ws://")
            .map(|r| ("http://", r))
            .or_else(|| ws.strip_prefix("wss://").map(|r| ("https://", r)))?;
        let hostport = rest.1.split('/').next()?;
        Some(format!("{}{hostport}/metrics", rest.0))
    }

    /// core-api's `/metrics` URL: its base URL + `/metrics`.
    pub fn core_metrics_url(&self) -> String {
        format!("{}/metrics", self.core.trim_end_matches('/'))
    }
}

/// A tenant created for this run.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub api_key: String,
    pub site_key: String,
}

/// A visitor with its API token and a connection token.
#[derive(Debug, Clone)]
pub struct Visitor {
    pub id: Uuid,
    pub token: String,
    pub connect: String,
}

/// An HTTP API v1 client.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    core: String,
}

/// Concurrent requests while creating a world.
const PARALLEL: usize = 32;

impl Api {
    pub fn new(target: &Target) -> Result<Api> {
        Ok(Api {
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .context("building the HTTP client")?,
            core: target.core.trim_end_matches('/').to_owned(),
        })
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        bearer: &str,
        body: Value,
    ) -> Result<Value> {
        let url = format!("{}{path}", self.core);
        let mut req = self.http.request(method.clone(), &url).json(&body);
        if !bearer.is_empty() {
            req = req.bearer_auth(bearer);
        }
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("{method} {path}: {status}: {body}");
        }
        Ok(body)
    }

    async fn post(&self, path: &str, bearer: &str, body: Value) -> Result<Value> {
        self.call(reqwest::Method::POST, path, bearer, body).await
    }

    pub async fn ready(&self) -> Result<()> {
        let url = format!("{}/readyz", self.core);
        let r = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| url.clone())?;
        if !r.status().is_success() {
            bail!("{url}: {}", r.status());
        }
        Ok(())
    }

    pub async fn tenant(&self, operator_token: &str) -> Result<Tenant> {
        let name = format!("loadtest-{}", &Uuid::new_v4().simple().to_string()[..8]);
        let b = self
            .post("/v1/tenants", operator_token, json!({ "name": name }))
            .await?;
        Ok(Tenant {
            id: uuid(&b["tenant"]["id"])?,
            api_key: string(&b["api_key"])?,
            site_key: string(&b["tenant"]["site_key"])?,
        })
    }

    /// An online agent of `role` (`agent`, `supervisor`, `admin`).
    pub async fn agent(&self, t: &Tenant, role: &str, max_concurrent: u32) -> Result<Uuid> {
        let email = format!("{}@loadtest.test", Uuid::new_v4().simple());
        let b = self
            .post(
                "/v1/agents",
                &t.api_key,
                json!({"name": format!("lt-{role}"), "email": email, "password": Uuid::new_v4().to_string(),
                       "role": role, "kind": "human", "max_concurrent": max_concurrent}),
            )
            .await?;
        let id = uuid(&b["agent"]["id"])?;
        self.call(
            reqwest::Method::PUT,
            &format!("/v1/agents/{id}/status"),
            &t.api_key,
            json!({"status": "online"}),
        )
        .await?;
        Ok(id)
    }

    pub async fn agents(&self, t: &Tenant, role: &str, n: usize, max: u32) -> Result<Vec<Uuid>> {
        stream::iter(0..n)
            .map(|_| self.agent(t, role, max))
            .buffered(PARALLEL.min(8))
            .try_collect()
            .await
    }

    /// A connection token for an agent, minted with the tenant's API key.
    pub async fn connect_token(&self, t: &Tenant, agent: Uuid) -> Result<String> {
        let b = self
            .post(
                "/v1/connect-tokens",
                &t.api_key,
                json!({ "agent_id": agent }),
            )
            .await?;
        string(&b["token"])
    }

    /// `n` connection tokens, spread over `agents` round robin.
    pub async fn connect_tokens(
        &self,
        t: &Tenant,
        agents: &[Uuid],
        n: usize,
    ) -> Result<Vec<String>> {
        if agents.is_empty() {
            bail!("no agents to mint connection tokens for");
        }
        stream::iter(0..n)
            .map(|i| self.connect_token(t, agents[i % agents.len()]))
            .buffered(PARALLEL)
            .try_collect()
            .await
    }

    /// An anonymous visitor through a widget session.
    pub async fn visitor(&self, t: &Tenant) -> Result<Visitor> {
        let b = self
            .post("/v1/widget/sessions", "", json!({ "site_key": t.site_key }))
            .await?;
        Ok(Visitor {
            id: uuid(&b["visitor"]["id"])?,
            token: string(&b["token"])?,
            connect: string(&b["connect_token"])?,
        })
    }

    /// A conversation of `v`: its id and its assignee, if it was assigned.
    pub async fn conversation(&self, v: &Visitor) -> Result<(Uuid, Option<Uuid>)> {
        let b = self
            .post(
                "/v1/conversations",
                &v.token,
                json!({"subject": "loadtest"}),
            )
            .await?;
        let c = &b["conversation"];
        let assignee = match c["assignee"].as_str() {
            Some(s) => Some(Uuid::parse_str(s).context("assignee is not a uuid")?),
            None => None,
        };
        Ok((uuid(&c["id"])?, assignee))
    }

    /// `n` visitors with one conversation each: (visitor, conversation, assignee).
    pub async fn conversations(
        &self,
        t: &Tenant,
        n: usize,
    ) -> Result<Vec<(Visitor, Uuid, Option<Uuid>)>> {
        stream::iter(0..n)
            .map(|_| async {
                let v = self.visitor(t).await?;
                let (c, a) = self.conversation(&v).await?;
                Ok::<_, anyhow::Error>((v, c, a))
            })
            .buffered(PARALLEL)
            .try_collect()
            .await
    }
}

fn string(v: &Value) -> Result<String> {
    v.as_str()
        .map(str::to_owned)
        .with_context(|| format!("expected a string, got {v}"))
}

fn uuid(v: &Value) -> Result<Uuid> {
    Uuid::parse_str(&string(v)?).context("expected a uuid")
}

/// Reads a gauge or counter from Prometheus text: the sum over every series of `name`.
pub fn prometheus_value(text: &str, name: &str) -> Option<f64> {
    let mut found = None;
    for line in text.lines() {
        if line.starts_with('#') {
            continue;
        }
        let Some(rest) = line.strip_prefix(name) else {
            continue;
        };
        if !(rest.starts_with(' ') || rest.starts_with('{')) {
            continue;
        }
        if let Some(v) = rest
            .split_whitespace()
            .last()
            .and_then(|v| v.parse::<f64>().ok())
        {
            *found.get_or_insert(0.0) += v;
        }
    }
    found
}

/// Resident memory of a process from `/proc/<pid>/status` (`VmRSS`), in bytes.
pub fn vm_rss(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = s.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// One process's memory and connection gauge at a moment (an edge's; core-api's in
/// `soak`, which has no connection gauge).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct EdgeSample {
    pub url: String,
    pub rss_bytes: Option<u64>,
    /// `process_resident_memory_bytes` or `/proc/<pid>/status`.
    pub rss_source: Option<String>,
    pub connections: Option<f64>,
}

/// Reads a process's `/metrics` (`metrics_url`) into a sample: `process_resident_memory_bytes`
/// and the edge connection gauge; fields stay `None` when unreadable. `url` names it.
pub async fn scrape(api: &Api, url: &str, metrics_url: &str) -> EdgeSample {
    let mut s = EdgeSample {
        url: url.to_owned(),
        ..EdgeSample::default()
    };
    if let Some(text) = metrics_text(api, metrics_url).await {
        s.connections = prometheus_value(&text, "relaydesk_edge_connections");
        if let Some(v) = prometheus_value(&text, "process_resident_memory_bytes") {
            s.rss_bytes = Some(v as u64);
            s.rss_source = Some("process_resident_memory_bytes".into());
        }
    }
    s
}

/// A process's `/metrics` text; `None` when it cannot be read.
pub async fn metrics_text(api: &Api, metrics_url: &str) -> Option<String> {
    api.http()
        .get(metrics_url)
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()
}

/// Samples every edge: `/metrics` first, `/proc` (with `--edge-pid`) for memory otherwise.
pub async fn sample_edges(api: &Api, target: &Target) -> Vec<EdgeSample> {
    let mut out = Vec::new();
    for (i, url) in target.edges.iter().enumerate() {
        let mut s = match target.edge_metrics_url(i) {
            Some(m) => scrape(api, url, &m).await,
            None => EdgeSample {
                url: url.clone(),
                ..EdgeSample::default()
            },
        };
        if s.rss_bytes.is_none() {
            if let Some(rss) = target.edge_pids.get(i).and_then(|&p| vm_rss(p)) {
                s.rss_bytes = Some(rss);
                s.rss_source = Some("/proc/<pid>/status VmRSS".into());
            }
        }
        out.push(s);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_prometheus() {
        let t = "# HELP x\nrelaydesk_edge_connections 12\nrelaydesk_edge_connections_total 3\nprocess_resident_memory_bytes{a=\"b\"} 1.5e6\n";
        assert_eq!(
            prometheus_value(t, "relaydesk_edge_connections"),
            Some(12.0)
        );
        assert_eq!(
            prometheus_value(t, "process_resident_memory_bytes"),
            Some(1.5e6)
        );
        assert_eq!(prometheus_value(t, "nope"), None);
    }

    #[test]
    fn metrics_url() {
        let t = Target {
            edges: vec!["ws://127.0.0.1:9/v1/ws".into()],
            ..Target::default()
        };
        assert_eq!(
            t.edge_metrics_url(0).as_deref(),
            Some("http://127.0.0.1:9/metrics")
        );
    }
}
