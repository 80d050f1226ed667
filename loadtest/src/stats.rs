//! Measurements: HDR histograms (microseconds) per measured interval, counters, the
//! per-second timeline, and the exact merging of what worker processes measured.
//!
//! One [`Recorder`] per process collects everything. Every second its *window* (what
//! happened since the last look) becomes a [`Point`] of the timeline; a worker process
//! instead ships its window to the parent as a [`WireWindow`] (histograms in the V2
//! format, base64), which the parent adds into its own recorder — histograms are merged
//! bucket by bucket, never by averaging percentiles.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// Interval names, as they appear in reports.
pub const CONNECT: &str = "connect";
pub const ACCEPT: &str = "accept";
pub const DELIVER: &str = "deliver";
pub const RESUME: &str = "resume";
/// How late each scheduled send left (the harness's own health, not a server figure).
pub const LAG: &str = "lag";

/// Counter names.
pub const SENT: &str = "sent";
pub const ACCEPTED: &str = "accepted";
pub const DELIVERED: &str = "delivered";
pub const ERRORS: &str = "errors";
pub const LOST: &str = "lost";
pub const DUPLICATED: &str = "duplicated";
pub const REORDERED: &str = "reordered";
pub const CONNECTED: &str = "connected";
pub const CONNECT_FAILED: &str = "connect_failed";
pub const RESUMED: &str = "resumed";
pub const RESUME_FAILED: &str = "resume_failed";
/// Connections the server closed (or lost) outside a planned drop.
pub const DISCONNECTED: &str = "disconnected";
/// Chat parties back on an edge after a close that invites a reconnect (a draining edge's
/// 1012, a slow consumer's 4008, …) or a lost connection.
pub const RECONNECTS: &str = "reconnects";

/// Largest recordable value: ten minutes in microseconds (larger values saturate).
const MAX_US: u64 = 600_000_000;

pub fn new_hist() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_US, 3).expect("constant, valid histogram bounds")
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

/// Percentiles of one interval, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
    pub count: u64,
}

impl Summary {
    pub fn of(h: &Histogram<u64>) -> Summary {
        let ms = |v: u64| v as f64 / 1000.0;
        if h.is_empty() {
            return Summary::default();
        }
        Summary {
            p50: ms(h.value_at_quantile(0.50)),
            p90: ms(h.value_at_quantile(0.90)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
            count: h.len(),
        }
    }
}

/// Histograms and counters over some span of time.
#[derive(Debug, Clone, Default)]
pub struct Window {
    pub hists: BTreeMap<String, Histogram<u64>>,
    pub counts: BTreeMap<String, u64>,
}

impl Window {
    pub fn record(&mut self, name: &str, d: Duration) {
        self.hists
            .entry(name.to_owned())
            .or_insert_with(new_hist)
            .saturating_record(us(d));
    }

    pub fn add(&mut self, name: &str, n: u64) {
        *self.counts.entry(name.to_owned()).or_default() += n;
    }

    pub fn count(&self, name: &str) -> u64 {
        self.counts.get(name).copied().unwrap_or(0)
    }

    pub fn summary(&self, name: &str) -> Option<Summary> {
        self.hists.get(name).map(Summary::of)
    }

    /// Adds `other` in, exactly.
    pub fn merge(&mut self, other: &Window) {
        for (k, h) in &other.hists {
            let mine = self.hists.entry(k.clone()).or_insert_with(new_hist);
            // Same bounds on both sides; a failure could only come from a foreign histogram
            // whose values exceed ours, and then the values saturate instead.
            if mine.add(h).is_err() {
                for v in h.iter_recorded() {
                    mine.saturating_record_n(v.value_iterated_to(), v.count_at_value());
                }
            }
        }
        for (k, n) in &other.counts {
            *self.counts.entry(k.clone()).or_default() += n;
        }
    }

    pub fn to_wire(&self) -> WireWindow {
        let mut hists = BTreeMap::new();
        for (k, h) in &self.hists {
            let mut buf = Vec::new();
            if V2Serializer::new().serialize(h, &mut buf).is_ok() {
                hists.insert(
                    k.clone(),
                    base64::engine::general_purpose::STANDARD.encode(&buf),
                );
            }
        }
        WireWindow {
            hists,
            counts: self.counts.clone(),
        }
    }
}

/// A [`Window`] as it travels from a worker to the parent.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WireWindow {
    /// Interval name → V2-serialized histogram, base64.
    pub hists: BTreeMap<String, String>,
    pub counts: BTreeMap<String, u64>,
}

impl WireWindow {
    pub fn decode(&self) -> Result<Window> {
        let mut w = Window {
            counts: self.counts.clone(),
            ..Window::default()
        };
        for (k, b64) in &self.hists {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(b64)
                .with_context(|| format!("histogram {k}: bad base64"))?;
            let h: Histogram<u64> = Deserializer::new()
                .deserialize(&mut bytes.as_slice())
                .map_err(|e| anyhow::anyhow!("histogram {k}: {e:?}"))?;
            w.hists.insert(k.clone(), h);
        }
        Ok(w)
    }
}

/// One second of the timeline.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Point {
    /// Seconds since the start of the run.
    pub t: f64,
    pub connections: i64,
    /// Per second, over this point's window.
    pub sent: f64,
    pub accepted: f64,
    pub delivered: f64,
    /// Percentiles (ms) of the scenario's main interval in this window.
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

/// Everything one process measured: totals, the current window, live connections.
#[derive(Debug, Default)]
pub struct Recorder {
    pub total: Window,
    pub window: Window,
    /// Open connections of this process.
    pub connections: i64,
    /// Open connections last reported by each worker.
    pub remote_connections: BTreeMap<usize, i64>,
}

/// The recorder shared by every task of a process.
#[derive(Debug, Clone, Default)]
pub struct Rec(Arc<Mutex<Recorder>>);

impl Rec {
    pub fn new() -> Rec {
        Rec::default()
    }

    pub fn lock(&self) -> MutexGuard<'_, Recorder> {
        // A panic while holding the lock leaves plain numbers behind: keep going.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn record(&self, name: &str, d: Duration) {
        let mut r = self.lock();
        r.total.record(name, d);
        r.window.record(name, d);
    }

    pub fn add(&self, name: &str, n: u64) {
        let mut r = self.lock();
        r.total.add(name, n);
        r.window.add(name, n);
    }

    pub fn connections(&self, delta: i64) {
        self.lock().connections += delta;
    }

    /// Adds a window measured elsewhere (a worker) into totals and the current window.
    pub fn merge(&self, w: &Window) {
        let mut r = self.lock();
        r.total.merge(w);
        r.window.merge(w);
    }

    /// Takes the window since the last call.
    pub fn take_window(&self) -> Window {
        std::mem::take(&mut self.lock().window)
    }

    pub fn open_connections(&self) -> i64 {
        let r = self.lock();
        r.connections + r.remote_connections.values().sum::<i64>()
    }

    pub fn total(&self) -> Window {
        self.lock().total.clone()
    }

    pub fn count(&self, name: &str) -> u64 {
        self.lock().total.count(name)
    }
}

/// Turns windows into the timeline.
#[derive(Debug)]
pub struct Timeline {
    start: std::time::Instant,
    last: std::time::Instant,
    pub main: &'static str,
    pub points: Vec<Point>,
}

impl Timeline {
    pub fn new(main: &'static str) -> Timeline {
        let now = std::time::Instant::now();
        Timeline {
            start: now,
            last: now,
            main,
            points: Vec::new(),
        }
    }

    /// Takes the recorder's window and appends a point for it.
    pub fn sample(&mut self, rec: &Rec) -> Point {
        let now = std::time::Instant::now();
        let secs = now.duration_since(self.last).as_secs_f64().max(1e-3);
        self.last = now;
        let w = rec.take_window();
        let s = w.summary(self.main).unwrap_or_default();
        let p = Point {
            t: now.duration_since(self.start).as_secs_f64(),
            connections: rec.open_connections(),
            sent: w.count(SENT) as f64 / secs,
            accepted: w.count(ACCEPTED) as f64 / secs,
            delivered: w.count(DELIVERED) as f64 / secs,
            p50: s.p50,
            p99: s.p99,
            max: s.max,
        };
        self.points.push(p.clone());
        p
    }
}

/// A set of seqs seen on one connection for one conversation (a growable bitset:
/// conversations are gapless from 1, so this stays small).
#[derive(Debug, Clone, Default)]
pub struct SeqSet {
    bits: Vec<u64>,
    /// Highest seq seen.
    pub last: u64,
    /// Every seq in 1..=contiguous was seen.
    pub contiguous: u64,
}

/// What one arriving seq was, relative to the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arrival {
    New,
    Duplicate,
    /// Not seen before, but lower than one that was.
    Reordered,
}

impl SeqSet {
    pub fn contains(&self, seq: u64) -> bool {
        let (i, b) = ((seq / 64) as usize, seq % 64);
        self.bits.get(i).is_some_and(|w| w & (1 << b) != 0)
    }

    pub fn insert(&mut self, seq: u64) -> Arrival {
        if self.contains(seq) {
            return Arrival::Duplicate;
        }
        let (i, b) = ((seq / 64) as usize, seq % 64);
        if self.bits.len() <= i {
            self.bits.resize(i + 1, 0);
        }
        self.bits[i] |= 1 << b;
        let arrival = if seq < self.last {
            Arrival::Reordered
        } else {
            Arrival::New
        };
        self.last = self.last.max(seq);
        while self.contains(self.contiguous + 1) {
            self.contiguous += 1;
        }
        arrival
    }

    /// How many of 1..=head were never seen.
    pub fn missing(&self, head: u64) -> u64 {
        (self.contiguous + 1..=head)
            .filter(|&s| !self.contains(s))
            .count() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_roundtrip_merges_exactly() {
        let mut a = Window::default();
        let mut b = Window::default();
        for i in 1..=1000u64 {
            a.record(DELIVER, Duration::from_micros(i));
            b.record(DELIVER, Duration::from_micros(i * 1000));
        }
        b.add(SENT, 7);
        let mut merged = a.clone();
        merged.merge(&b.to_wire().decode().unwrap());
        let mut direct = new_hist();
        for i in 1..=1000u64 {
            direct.record(i).unwrap();
            direct.record(i * 1000).unwrap();
        }
        assert_eq!(merged.summary(DELIVER).unwrap(), Summary::of(&direct));
        assert_eq!(merged.count(SENT), 7);
    }

    #[test]
    fn seqset_classifies() {
        let mut s = SeqSet::default();
        assert_eq!(s.insert(1), Arrival::New);
        assert_eq!(s.insert(3), Arrival::New);
        assert_eq!(s.insert(3), Arrival::Duplicate);
        assert_eq!(s.insert(2), Arrival::Reordered);
        assert_eq!(s.contiguous, 3);
        assert_eq!(s.missing(5), 2);
    }
}
