//! Disturbances for `chat`, run beside the measured conversations so that their latency
//! can be compared with an undisturbed run of the same command:
//!
//! - a noisy tenant ([`Noisy`]): another tenant's conversations sending far over the
//!   edge's per-tenant limit; its sends are refused `rate_limited`, its persisting
//!   connections closed 4029, and they reconnect and go on;
//! - stalled clients ([`Stalled`]): extra connections of the measured tenant's agents,
//!   auto-subscribed to every conversation of their agent, that never read a byte; the
//!   edge must bound what it queues for them (closing them 4008) without slowing others.

use std::time::Duration;

use anyhow::Result;
use futures::StreamExt;
use tokio::sync::watch;
use uuid::Uuid;

use super::chat::{Pairs, World};
use super::{schedule, Common};
use crate::client::{self, Ws};
use crate::setup::{Api, Tenant};
use crate::stats::{self, Rec};

/// Conversations of the noisy tenant (its agents take 5 each).
const NOISY_CONVERSATIONS: usize = 10;

/// Another tenant flooding at `rate` until stopped.
pub struct Noisy {
    rec: Rec,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Pairs>,
}

/// What the noisy tenant did, for the report's figures.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoisyOutcome {
    pub sent: u64,
    pub accepted: u64,
    /// Refused (`rate_limited` and any other error).
    pub refused: u64,
    pub reconnects: u64,
}

impl Noisy {
    /// Creates the tenant and its conversations, connects them and starts sending.
    pub async fn start(common: &Common, api: &Api, rate: f64) -> Result<Noisy> {
        let tenant = api.tenant(&common.target.operator_token).await?;
        let world = World::create(api, &tenant, NOISY_CONVERSATIONS, 5).await?;
        let rec = Rec::new();
        let (stop, stop_rx) = watch::channel(false);
        let pairs = world.connect(common, api, &tenant, &rec, &stop_rx).await?;
        let task = tokio::spawn(async move {
            // Until stopped (an hour stands for "the whole run"); its schedule lag is not
            // the measured run's.
            let lag = Rec::new();
            schedule(rate, Duration::from_secs(3600), Some(stop_rx), &lag, |i| {
                pairs.send(i)
            })
            .await;
            pairs
        });
        Ok(Noisy { rec, stop, task })
    }

    /// Stops sending, closes its connections and says what happened.
    pub async fn finish(self) -> NoisyOutcome {
        self.stop.send_replace(true);
        if let Ok(pairs) = self.task.await {
            // Its losses are not this run's: audited into a throwaway recorder.
            let _ = pairs.finish(&Rec::new()).await;
        }
        let t = self.rec.total();
        NoisyOutcome {
            sent: t.count(stats::SENT),
            accepted: t.count(stats::ACCEPTED),
            refused: t.count(stats::ERRORS),
            reconnects: t.count(stats::RECONNECTS),
        }
    }
}

/// Connections that never read.
pub struct Stalled {
    held: Vec<Ws>,
}

impl Stalled {
    /// Opens `n` connections with the tokens of `agents` (round robin), spread over the
    /// edges; each is auto-subscribed at hello to its agent's conversations, then never
    /// read again.
    pub async fn open(
        common: &Common,
        api: &Api,
        tenant: &Tenant,
        agents: &[Uuid],
        n: usize,
    ) -> Result<Stalled> {
        let mut tokens = Vec::with_capacity(agents.len());
        for a in agents {
            tokens.push(api.connect_token(tenant, *a).await?);
        }
        if tokens.is_empty() {
            return Ok(Stalled { held: Vec::new() });
        }
        let held = futures::stream::iter(0..n)
            .map(|i| {
                let token = tokens[i % tokens.len()].clone();
                async move {
                    client::connect(common.edge(i), None, &token, common.connect_timeout)
                        .await
                        .map(|(ws, _, _)| ws)
                }
            })
            .buffer_unordered(32)
            .collect::<Vec<Result<Ws>>>()
            .await
            .into_iter()
            .collect::<Result<Vec<Ws>>>()?;
        Ok(Stalled { held })
    }

    pub fn len(&self) -> usize {
        self.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.held.is_empty()
    }
}
