//! Local subscriptions and per-connection ordering.
//!
//! [`SubOrder`] is the pure ordering state of one (connection, conversation)
//! subscription: it turns live `Deliver`s and `Replay` chunks, in whatever order they
//! arrive, into a gapless, duplicate-free, in-order stream of frames, buffering what
//! arrives early and asking for a repair (a new `sub`) when a gap persists.
//!
//! [`Hub`] holds every local connection, indexed by (tenant, conv) and (tenant,
//! principal) so that a frame of one tenant can never reach another tenant's connection,
//! and decides when this edge's registry entries appear and disappear (first local
//! subscriber / connection, last one gone).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use bytes::Bytes;
use relaydesk_shared::bus::{Ingress, Source};
use relaydesk_shared::token::Role;
use relaydesk_shared::wire::ServerFrame;
use relaydesk_shared::CloseCode;
use serde::Deserialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use crate::registry::{RegKey, Registrar};
use crate::writer::Outbound;

/// Most live frames held per subscription while waiting for a gap to fill.
pub const BUFFER_CAP: usize = 1024;
/// A gap that persists this long is repaired by re-subscribing.
pub const GAP_REPAIR_AFTER: Duration = Duration::from_secs(1);
/// A replay that has not finished after this long is requested again.
pub const REPLAY_RETRY_AFTER: Duration = Duration::from_secs(10);

/// Ordering state of one subscription.
#[derive(Debug)]
pub struct SubOrder {
    /// The next `seq` the connection must receive.
    next: u64,
    /// A replay (answer to a `sub`) is in progress: live frames are buffered.
    replaying: bool,
    /// Send `subbed` before the first replay chunk.
    announce: bool,
    /// The connection is a visitor's: `agents_only` frames are skipped.
    visitor: bool,
    /// Live frames ahead of `next` (or received during a replay): seq → (frame, agents_only).
    buffer: BTreeMap<u64, (Bytes, bool)>,
    /// Since when the buffer has waited for `next`.
    gap_since: Option<Instant>,
    /// When the current replay was requested.
    replay_since: Option<Instant>,
    /// The buffer overflowed: repair now.
    overflow: bool,
    /// core-api let the connection read this conversation (a welcome or auto-sub, or the
    /// answer to its `sub`). Until then nothing about the conversation reaches it, and
    /// nothing it sends about it has an effect: its `typing` is dropped, its `ack` and
    /// `read` positions are held here and sent once granted (dropped if refused), so no
    /// frame races core-api's answer.
    granted: bool,
    /// Highest `ack` and `read` seq received while not granted (0: none).
    held_ack: u64,
    held_read: u64,
}

/// What a connection may do about a conversation ([`Hub::gate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// Granted by core-api.
    Granted,
    /// Its `sub` awaits core-api's answer.
    Pending,
    /// Never asked for, or refused.
    Refused,
}

impl SubOrder {
    /// A live subscription whose history up to `head` is known: next is `head + 1`.
    pub fn live(head: u64, visitor: bool) -> Self {
        SubOrder {
            next: head.saturating_add(1),
            replaying: false,
            announce: false,
            visitor,
            buffer: BTreeMap::new(),
            gap_since: None,
            replay_since: None,
            overflow: false,
            granted: true,
            held_ack: 0,
            held_read: 0,
        }
    }

    /// A subscription asked for by the client, waiting for core-api's answer (not yet
    /// granted) and then for the replay of everything after `after`.
    pub fn replaying(after: u64, visitor: bool, announce: bool, now: Instant) -> Self {
        let mut s = SubOrder::live(after, visitor);
        s.granted = false;
        s.begin_replay(after, announce, now);
        s
    }

    pub fn is_granted(&self) -> bool {
        self.granted
    }

    /// A (new) `sub` with `after`: replay from there, buffering live frames meanwhile.
    pub fn begin_replay(&mut self, after: u64, announce: bool, now: Instant) {
        self.next = after.saturating_add(1);
        self.replaying = true;
        self.announce = announce;
        self.replay_since = Some(now);
        self.gap_since = None;
        self.overflow = false;
    }

    pub fn next(&self) -> u64 {
        self.next
    }

    pub fn is_replaying(&self) -> bool {
        self.replaying
    }

    pub fn buffered(&self) -> usize {
        self.buffer.len()
    }

    /// A live `Deliver`. Frames to send are appended to `out`. Returns true when the
    /// subscription needs a repair now (its buffer overflowed).
    pub fn on_live(
        &mut self,
        seq: u64,
        agents_only: bool,
        frame: &Bytes,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) -> bool {
        if seq < self.next {
            return false;
        }
        if !self.replaying && seq == self.next {
            self.emit(frame, agents_only, out);
            self.next += 1;
            self.drain(now, out);
            return false;
        }
        if !self.buffer.contains_key(&seq) {
            if self.buffer.len() >= BUFFER_CAP {
                self.overflow = !self.replaying;
                return self.overflow;
            }
            self.buffer.insert(seq, (frame.clone(), agents_only));
        }
        if !self.replaying && self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
        false
    }

    /// One `Replay` chunk: `items` are (seq, frame) in order. Sends `subbed` first if this
    /// replay is announced; on `done`, live delivery resumes after `head`.
    pub fn on_replay(
        &mut self,
        conv: Uuid,
        head: u64,
        items: &[(u64, Bytes)],
        done: bool,
        now: Instant,
        out: &mut Vec<Bytes>,
    ) {
        if self.announce {
            self.announce = false;
            out.push(Bytes::from(ServerFrame::Subbed { conv, head }.to_json()));
        }
        // Replay is authoritative: a visitor's replay omits notes, so seqs may jump.
        for (seq, frame) in items {
            if *seq >= self.next {
                out.push(frame.clone());
                self.next = seq + 1;
            }
        }
        if done {
            self.next = self.next.max(head.saturating_add(1));
            self.replaying = false;
            self.replay_since = None;
            self.gap_since = None;
            self.drain(now, out);
        }
    }

    /// Sends buffered frames that are now contiguous; drops those already seen.
    fn drain(&mut self, now: Instant, out: &mut Vec<Bytes>) {
        let mut advanced = false;
        while let Some(entry) = self.buffer.first_entry() {
            let seq = *entry.key();
            if seq < self.next {
                entry.remove();
            } else if seq == self.next {
                let (frame, agents_only) = entry.remove();
                self.emit(&frame, agents_only, out);
                self.next += 1;
                advanced = true;
            } else {
                break;
            }
        }
        if self.buffer.is_empty() {
            self.gap_since = None;
        } else if advanced || self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
    }

    fn emit(&self, frame: &Bytes, agents_only: bool, out: &mut Vec<Bytes>) {
        if !(agents_only && self.visitor) {
            out.push(frame.clone());
        }
    }

    /// Whether this subscription needs a (re-)`sub` now; if so it enters replay (not
    /// announced) and the `after` to ask for is returned.
    pub fn sweep(&mut self, now: Instant) -> Option<u64> {
        if self.replaying {
            let stale = match self.replay_since {
                Some(t) => now.duration_since(t) >= REPLAY_RETRY_AFTER,
                None => true,
            };
            if stale {
                self.replay_since = Some(now);
                return Some(self.next.saturating_sub(1));
            }
            return None;
        }
        let gap = self
            .gap_since
            .is_some_and(|t| now.duration_since(t) >= GAP_REPAIR_AFTER);
        if self.overflow || gap {
            return Some(self.start_repair(now));
        }
        None
    }

    /// Enters an unannounced replay from `next - 1`; returns that `after`.
    pub fn start_repair(&mut self, now: Instant) -> u64 {
        let after = self.next.saturating_sub(1);
        self.replaying = true;
        self.announce = false;
        self.overflow = false;
        self.gap_since = None;
        self.replay_since = Some(now);
        after
    }
}

/// A connection until core-api's `Welcome` arrived.
struct Unwelcomed {
    /// The `welcome` frame.
    welcome: Bytes,
    /// Frames for this connection produced before its `welcome` was sent.
    early: Vec<Bytes>,
    early_bytes: usize,
    /// Told when the welcome was sent.
    tx: oneshot::Sender<()>,
}

/// A connection as the hub knows it.
struct Conn {
    src: Source,
    out: Outbound,
    /// Boxed: only connections being welcomed need it.
    unwelcomed: Option<Box<Unwelcomed>>,
    /// An ordered map: no allocation while the connection has no subscription.
    subs: BTreeMap<Uuid, SubOrder>,
}

impl Conn {
    fn visitor(&self) -> bool {
        self.src.role == Role::Visitor
    }

    fn push(&mut self, frame: Bytes, limit: usize) {
        if let Some(u) = self.unwelcomed.as_mut() {
            u.early_bytes += frame.len();
            if u.early_bytes > limit {
                u.early.clear();
                metrics::counter!("relaydesk_edge_slow_consumer_closes_total").increment(1);
                self.out.close_discarding(CloseCode::SlowConsumer);
            } else {
                u.early.push(frame);
            }
        } else {
            self.out.send(frame);
        }
    }

    fn push_all(&mut self, frames: Vec<Bytes>, limit: usize) {
        for f in frames {
            self.push(f, limit);
        }
    }
}

/// The beginning of a frame, enough to recognize the `error` answering a `sub`.
#[derive(Deserialize)]
struct Probe {
    t: String,
    #[serde(default)]
    id: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    conv: Option<Uuid>,
}

/// Connections by a (tenant, id) key, as one ordered set: no allocation per key, which
/// matters when most keys (principals) have a single connection.
#[derive(Debug, Default)]
struct Index(BTreeSet<(Uuid, Uuid, u64)>);

impl Index {
    /// Adds `conn` under `key`; true when it is the key's first connection.
    fn insert(&mut self, key: (Uuid, Uuid), conn: u64) -> bool {
        let first = !self.has(key);
        self.0.insert((key.0, key.1, conn));
        first
    }

    /// Removes `conn` from `key`; true when it was there and was the key's last.
    fn remove(&mut self, key: (Uuid, Uuid), conn: u64) -> bool {
        self.0.remove(&(key.0, key.1, conn)) && !self.has(key)
    }

    fn has(&self, key: (Uuid, Uuid)) -> bool {
        self.conns(key).next().is_some()
    }

    /// The connections under `key`, in id order.
    fn conns(&self, key: (Uuid, Uuid)) -> impl Iterator<Item = u64> + '_ {
        self.0
            .range((key.0, key.1, 0)..=(key.0, key.1, u64::MAX))
            .map(|k| k.2)
    }
}

/// Every local connection and subscription of this edge.
pub struct Hub {
    /// Boxed: the table's spare capacity then costs a pointer per slot, not a `Conn`.
    conns: HashMap<u64, Box<Conn>>,
    by_conv: Index,
    by_principal: Index,
    reg: Registrar,
    /// Byte bound of frames held for a connection before its `welcome`.
    early_limit: usize,
}

impl Hub {
    pub fn new(reg: Registrar, early_limit: usize) -> Self {
        Hub {
            conns: HashMap::new(),
            by_conv: Index::default(),
            by_principal: Index::default(),
            reg,
            early_limit,
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Adds an authenticated connection awaiting core-api's `Welcome`. Returns a receiver
    /// resolved when the welcome was sent, and one for the principal registry write.
    pub fn register(
        &mut self,
        src: Source,
        out: Outbound,
        welcome: Bytes,
    ) -> (oneshot::Receiver<()>, oneshot::Receiver<bool>) {
        let (tx, rx) = oneshot::channel();
        let key = (src.tenant, src.principal);
        let conn = src.conn;
        self.conns.insert(
            conn,
            Box::new(Conn {
                src,
                out,
                unwelcomed: Some(Box::new(Unwelcomed {
                    welcome,
                    early: Vec::new(),
                    early_bytes: 0,
                    tx,
                })),
                subs: BTreeMap::new(),
            }),
        );
        self.by_principal.insert(key, conn);
        let ack = self.reg.set_acked(RegKey::Principal {
            tenant: key.0,
            principal: key.1,
        });
        (rx, ack)
    }

    /// Removes a connection and its subscriptions.
    pub fn remove(&mut self, conn: u64) {
        let Some(c) = self.conns.remove(&conn) else {
            return;
        };
        let tenant = c.src.tenant;
        for conv in c.subs.keys() {
            self.unindex_conv(tenant, *conv, conn);
        }
        let key = (tenant, c.src.principal);
        if self.by_principal.remove(key, conn) {
            self.reg.del(RegKey::Principal {
                tenant,
                principal: key.1,
            });
        }
    }

    fn index_conv(&mut self, tenant: Uuid, conv: Uuid, conn: u64) {
        if self.by_conv.insert((tenant, conv), conn) {
            self.reg.set(RegKey::Conv { tenant, conv });
        }
    }

    fn unindex_conv(&mut self, tenant: Uuid, conv: Uuid, conn: u64) {
        if self.by_conv.remove((tenant, conv), conn) {
            self.reg.del(RegKey::Conv { tenant, conv });
        }
    }

    /// Whether core-api has granted `conn` the conversation (see [`SubOrder`]'s
    /// `granted`): a `sub` still awaiting its answer does not count.
    pub fn is_granted(&self, conn: u64, conv: Uuid) -> bool {
        self.gate(conn, conv) == Gate::Granted
    }

    pub fn gate(&self, conn: u64, conv: Uuid) -> Gate {
        match self.conns.get(&conn).and_then(|c| c.subs.get(&conv)) {
            Some(s) if s.granted => Gate::Granted,
            Some(_) => Gate::Pending,
            None => Gate::Refused,
        }
    }

    /// The gate of an `ack` (or `read`) at `seq`; a pending subscription holds the
    /// position until its answer ([`Hub::replay`] gives it back).
    pub fn gate_receipt(&mut self, conn: u64, conv: Uuid, seq: u64, read: bool) -> Gate {
        let gate = self.gate(conn, conv);
        if gate == Gate::Pending {
            if let Some(sub) = self
                .conns
                .get_mut(&conn)
                .and_then(|c| c.subs.get_mut(&conv))
            {
                let held = if read {
                    &mut sub.held_read
                } else {
                    &mut sub.held_ack
                };
                *held = (*held).max(seq);
            }
        }
        gate
    }

    /// core-api's `Welcome`: live subscriptions from each head, then the `welcome` frame,
    /// then whatever was produced for the connection meanwhile.
    pub fn welcome(&mut self, conn: u64, subs: &[(Uuid, u64)]) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let Some(u) = c.unwelcomed.take() else {
            return;
        };
        let tenant = c.src.tenant;
        let visitor = c.visitor();
        let mut added = Vec::new();
        for (conv, head) in subs {
            if !c.subs.contains_key(conv) {
                c.subs.insert(*conv, SubOrder::live(*head, visitor));
                added.push(*conv);
            }
        }
        let Unwelcomed {
            welcome, early, tx, ..
        } = *u;
        c.out.send(welcome);
        for f in early {
            c.out.send(f);
        }
        let _ = tx.send(());
        for conv in added {
            self.index_conv(tenant, conv, conn);
        }
    }

    /// A client `sub`: (re)starts an announced replay from `after` and sets the conv
    /// registry entry; the receiver tells whether that write succeeded. `None` if the
    /// connection is gone.
    pub fn begin_sub(
        &mut self,
        conn: u64,
        conv: Uuid,
        after: u64,
        now: Instant,
    ) -> Option<oneshot::Receiver<bool>> {
        let c = self.conns.get_mut(&conn)?;
        let tenant = c.src.tenant;
        let visitor = c.visitor();
        let mut created = false;
        c.subs
            .entry(conv)
            .and_modify(|s| s.begin_replay(after, true, now))
            .or_insert_with(|| {
                created = true;
                SubOrder::replaying(after, visitor, true, now)
            });
        if created {
            self.by_conv.insert((tenant, conv), conn);
        }
        // Always an acknowledged write, even if already registered: the `sub` must not
        // reach core-api before this edge is in the registry.
        Some(self.reg.set_acked(RegKey::Conv { tenant, conv }))
    }

    /// A client `unsub` (or a refused `sub`).
    pub fn unsub(&mut self, conn: u64, conv: Uuid) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        if c.subs.remove(&conv).is_some() {
            let tenant = c.src.tenant;
            self.unindex_conv(tenant, conv, conn);
        }
    }

    /// `Egress::Deliver`: a committed message for every local subscription of (tenant,
    /// conv). Returns the repairs (re-`sub`s) to send.
    pub fn deliver(
        &mut self,
        tenant: Uuid,
        conv: Uuid,
        seq: u64,
        agents_only: bool,
        frame: &Bytes,
        now: Instant,
    ) -> Vec<Ingress> {
        let mut repairs = Vec::new();
        let limit = self.early_limit;
        let mut out = Vec::new();
        for id in self.by_conv.conns((tenant, conv)) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.src.tenant != tenant {
                continue;
            }
            let Some(sub) = c.subs.get_mut(&conv) else {
                continue;
            };
            out.clear();
            let repair = sub.on_live(seq, agents_only, frame, now, &mut out);
            if repair {
                let after = sub.start_repair(now);
                repairs.push(Ingress::Sub {
                    src: c.src.clone(),
                    conv,
                    after,
                });
            }
            c.push_all(std::mem::take(&mut out), limit);
        }
        repairs
    }

    /// `Egress::Reply`: a frame for one connection. An `error` without `id` but with
    /// `conv` refuses a `sub`: the subscription is dropped.
    pub fn reply(&mut self, conn: u64, frame: Bytes) {
        let limit = self.early_limit;
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let mut refused = None;
        if c.subs.values().any(SubOrder::is_replaying) {
            if let Ok(p) = serde_json::from_slice::<Probe>(&frame) {
                if p.t == "error" && p.id.is_none() {
                    refused = p
                        .conv
                        .filter(|conv| c.subs.get(conv).is_some_and(SubOrder::is_replaying));
                }
            }
        }
        c.push(frame, limit);
        if let Some(conv) = refused {
            self.unsub(conn, conv);
        }
    }

    /// `Egress::Replay`: one chunk answering a `sub` of `conn`. Returns the receipts held
    /// while the `sub` awaited its answer, to send now.
    pub fn replay(
        &mut self,
        conn: u64,
        conv: Uuid,
        head: u64,
        items: &[(u64, Bytes)],
        done: bool,
        now: Instant,
    ) -> Vec<Ingress> {
        let limit = self.early_limit;
        let Some(c) = self.conns.get_mut(&conn) else {
            return Vec::new();
        };
        let Some(sub) = c.subs.get_mut(&conv) else {
            return Vec::new();
        };
        let mut held = Vec::new();
        if !sub.granted {
            // core-api replays only what the principal may read: the answer grants it.
            sub.granted = true;
            let src = c.src.clone();
            let (ack, read) = (
                std::mem::take(&mut sub.held_ack),
                std::mem::take(&mut sub.held_read),
            );
            if ack > 0 {
                held.push(Ingress::Ack {
                    src: src.clone(),
                    conv,
                    seq: ack,
                });
            }
            if read > 0 {
                held.push(Ingress::Read {
                    src,
                    conv,
                    seq: read,
                });
            }
        }
        let mut out = Vec::new();
        sub.on_replay(conv, head, items, done, now, &mut out);
        c.push_all(out, limit);
        held
    }

    /// `Egress::AutoSub`: every local connection of (tenant, principal) goes live on
    /// `conv` after `head` (unless already subscribed) and receives `frame` if any.
    pub fn autosub(
        &mut self,
        tenant: Uuid,
        principal: Uuid,
        conv: Uuid,
        head: u64,
        frame: Option<&Bytes>,
    ) {
        let ids: Vec<u64> = self.by_principal.conns((tenant, principal)).collect();
        let limit = self.early_limit;
        for id in ids {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.src.tenant != tenant {
                continue;
            }
            let mut added = false;
            if !c.subs.contains_key(&conv) {
                let visitor = c.visitor();
                c.subs.insert(conv, SubOrder::live(head, visitor));
                added = true;
            }
            if let Some(f) = frame {
                c.push(f.clone(), limit);
            }
            if added {
                self.index_conv(tenant, conv, id);
            }
        }
    }

    /// `Egress::ToPrincipal`: a frame for every local connection of (tenant, principal);
    /// with `unsub`, each first stops receiving that conversation.
    pub fn to_principal(
        &mut self,
        tenant: Uuid,
        principal: Uuid,
        unsub: Option<Uuid>,
        frame: &Bytes,
    ) {
        let ids: Vec<u64> = self.by_principal.conns((tenant, principal)).collect();
        let limit = self.early_limit;
        for id in ids {
            if let Some(conv) = unsub {
                self.unsub(id, conv);
            }
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.src.tenant != tenant {
                continue;
            }
            if !frame.is_empty() {
                c.push(frame.clone(), limit);
            }
        }
    }

    /// `Egress::Event` (and local typing): a frame for every local subscriber of (tenant,
    /// conv) except connections of `exclude`; `agents_only` skips visitors.
    pub fn event(
        &mut self,
        tenant: Uuid,
        conv: Uuid,
        exclude: Option<Uuid>,
        agents_only: bool,
        frame: &Bytes,
    ) {
        let limit = self.early_limit;
        for id in self.by_conv.conns((tenant, conv)) {
            let Some(c) = self.conns.get_mut(&id) else {
                continue;
            };
            if c.src.tenant != tenant
                || Some(c.src.principal) == exclude
                || (agents_only && c.visitor())
                || !c.subs.get(&conv).is_some_and(SubOrder::is_granted)
            {
                continue;
            }
            c.push(frame.clone(), limit);
        }
    }

    /// Finds subscriptions whose gap persisted or whose replay stalled; returns the
    /// re-`sub`s to send.
    pub fn sweep(&mut self, now: Instant) -> Vec<Ingress> {
        let mut repairs = Vec::new();
        for c in self.conns.values_mut() {
            for (conv, sub) in c.subs.iter_mut() {
                if let Some(after) = sub.sweep(now) {
                    repairs.push(Ingress::Sub {
                        src: c.src.clone(),
                        conv: *conv,
                        after,
                    });
                }
            }
        }
        if !repairs.is_empty() {
            metrics::counter!("relaydesk_edge_gap_repairs_total").increment(repairs.len() as u64);
        }
        repairs
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::RegOp;

    fn f(seq: u64) -> Bytes {
        Bytes::from(format!("m{seq}"))
    }

    fn live(sub: &mut SubOrder, seq: u64, agents_only: bool, now: Instant) -> Vec<Bytes> {
        let mut out = Vec::new();
        sub.on_live(seq, agents_only, &f(seq), now, &mut out);
        out
    }

    fn names(v: &[Bytes]) -> Vec<String> {
        v.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn in_order_frames_pass_through() {
        let now = Instant::now();
        let mut s = SubOrder::live(0, false);
        assert_eq!(names(&live(&mut s, 1, false, now)), ["m1"]);
        assert_eq!(names(&live(&mut s, 2, false, now)), ["m2"]);
        assert_eq!(s.next(), 3);
    }

    #[test]
    fn duplicates_are_dropped() {
        let now = Instant::now();
        let mut s = SubOrder::live(5, false);
        assert!(live(&mut s, 5, false, now).is_empty());
        assert_eq!(names(&live(&mut s, 6, false, now)), ["m6"]);
        assert!(live(&mut s, 6, false, now).is_empty());
        assert!(live(&mut s, 3, false, now).is_empty());
    }

    #[test]
    fn out_of_order_is_buffered_then_flushed() {
        let now = Instant::now();
        let mut s = SubOrder::live(0, false);
        assert!(live(&mut s, 3, false, now).is_empty());
        assert!(live(&mut s, 2, false, now).is_empty());
        assert_eq!(s.buffered(), 2);
        assert_eq!(names(&live(&mut s, 1, false, now)), ["m1", "m2", "m3"]);
        assert_eq!(s.buffered(), 0);
        assert_eq!(s.sweep(now + Duration::from_secs(5)), None);
    }

    #[test]
    fn persistent_gap_triggers_one_repair() {
        let now = Instant::now();
        let mut s = SubOrder::live(0, false);
        assert!(live(&mut s, 2, false, now).is_empty());
        assert_eq!(s.sweep(now + Duration::from_millis(500)), None);
        assert_eq!(s.sweep(now + Duration::from_millis(1100)), Some(0));
        assert!(s.is_replaying());
        // The repair is not announced; its replay fills the gap, then the buffer drains.
        let mut out = Vec::new();
        s.on_replay(Uuid::nil(), 2, &[(1, f(1)), (2, f(2))], true, now, &mut out);
        assert_eq!(names(&out), ["m1", "m2"]);
        assert_eq!(names(&live(&mut s, 3, false, now)), ["m3"]);
    }

    #[test]
    fn replay_then_buffered_live() {
        let now = Instant::now();
        let conv = Uuid::new_v4();
        let mut s = SubOrder::replaying(0, false, true, now);
        // Live frames during the replay are held, including ones the replay also carries.
        assert!(live(&mut s, 3, false, now).is_empty());
        assert!(live(&mut s, 4, false, now).is_empty());
        let mut out = Vec::new();
        s.on_replay(conv, 3, &[(1, f(1)), (2, f(2))], false, now, &mut out);
        let subbed = ServerFrame::Subbed { conv, head: 3 }.to_json();
        assert_eq!(names(&out), [subbed.as_str(), "m1", "m2"]);
        out.clear();
        s.on_replay(conv, 3, &[(3, f(3))], true, now, &mut out);
        assert_eq!(names(&out), ["m3", "m4"]);
        assert!(!s.is_replaying());
        assert_eq!(s.next(), 5);
    }

    #[test]
    fn empty_replay_announces_and_moves_to_head() {
        let now = Instant::now();
        let conv = Uuid::new_v4();
        let mut s = SubOrder::replaying(7, false, true, now);
        let mut out = Vec::new();
        s.on_replay(conv, 7, &[], true, now, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(s.next(), 8);
        assert_eq!(names(&live(&mut s, 8, false, now)), ["m8"]);
    }

    #[test]
    fn visitor_skips_agents_only_but_counts_them() {
        let now = Instant::now();
        let mut s = SubOrder::live(0, true);
        assert_eq!(names(&live(&mut s, 1, false, now)), ["m1"]);
        assert!(live(&mut s, 2, true, now).is_empty());
        assert_eq!(names(&live(&mut s, 3, false, now)), ["m3"]);
        // Buffered agents-only frames are skipped as well.
        assert!(live(&mut s, 5, false, now).is_empty());
        assert_eq!(names(&live(&mut s, 4, true, now)), ["m5"]);
        assert_eq!(s.next(), 6);
        // Staff see everything.
        let mut a = SubOrder::live(0, false);
        assert_eq!(names(&live(&mut a, 1, true, now)), ["m1"]);
    }

    #[test]
    fn visitor_replay_may_jump_over_notes() {
        let now = Instant::now();
        let mut s = SubOrder::replaying(0, true, false, now);
        let mut out = Vec::new();
        s.on_replay(Uuid::nil(), 5, &[(1, f(1)), (3, f(3))], true, now, &mut out);
        assert_eq!(names(&out), ["m1", "m3"]);
        assert_eq!(s.next(), 6);
    }

    #[test]
    fn overflow_asks_for_repair() {
        let now = Instant::now();
        let mut s = SubOrder::live(0, false);
        let mut out = Vec::new();
        for seq in 2..(2 + BUFFER_CAP as u64) {
            assert!(!s.on_live(seq, false, &f(seq), now, &mut out));
        }
        assert!(s.on_live(10_000, false, &f(10_000), now, &mut out));
        assert_eq!(s.start_repair(now), 0);
    }

    #[test]
    fn stalled_replay_is_requested_again() {
        let now = Instant::now();
        let mut s = SubOrder::replaying(4, false, true, now);
        assert_eq!(s.sweep(now + Duration::from_secs(1)), None);
        assert_eq!(s.sweep(now + REPLAY_RETRY_AFTER), Some(4));
    }

    fn src(tenant: Uuid, principal: Uuid, conn: u64, role: Role) -> Source {
        Source {
            edge: "e".into(),
            conn,
            tenant,
            principal,
            role,
            name: None,
        }
    }

    #[test]
    fn hub_isolates_tenants_and_orders_welcome_first() {
        let (reg, mut rx) = Registrar::channel();
        let mut hub = Hub::new(reg, 1 << 20);
        let (t1, t2, conv) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let (o1, o2) = (Outbound::new(1 << 20), Outbound::new(1 << 20));
        let (mut w1, _a1) = hub.register(
            src(t1, Uuid::new_v4(), 1, Role::Agent),
            o1.clone(),
            Bytes::from("welcome1"),
        );
        let (_w2, _a2) = hub.register(
            src(t2, Uuid::new_v4(), 2, Role::Agent),
            o2.clone(),
            Bytes::from("welcome2"),
        );
        let now = Instant::now();
        hub.welcome(1, &[(conv, 4)]);
        assert!(w1.try_recv().is_ok());
        // Same conv id under another tenant: never delivered to tenant 1's connection.
        assert!(hub.deliver(t2, conv, 5, false, &f(5), now).is_empty());
        hub.deliver(t1, conv, 5, false, &f(5), now);
        assert_eq!(names(&o1.drain_texts()), ["welcome1", "m5"]);
        assert!(o2.drain_texts().is_empty());
        // Registry: principal entries (acked), then the conv entry on first subscriber.
        let mut sets = 0;
        while let Ok(op) = rx.try_recv() {
            if let RegOp::Set(RegKey::Conv { tenant, .. }, _) = op {
                assert_eq!(tenant, t1);
            }
            sets += 1;
        }
        assert_eq!(sets, 3);
        hub.remove(1);
        let dels: Vec<RegOp> = std::iter::from_fn(|| rx.try_recv().ok()).collect();
        assert_eq!(dels.len(), 2);
        assert!(dels.iter().all(|op| matches!(op, RegOp::Del(_))));
    }

    #[test]
    fn hub_holds_frames_until_welcome_and_excludes_sender() {
        let (reg, _rx) = Registrar::channel();
        let mut hub = Hub::new(reg, 1 << 20);
        let (t, conv) = (Uuid::new_v4(), Uuid::new_v4());
        let (visitor, agent) = (Uuid::new_v4(), Uuid::new_v4());
        let (ov, oa) = (Outbound::new(1 << 20), Outbound::new(1 << 20));
        let _ = hub.register(
            src(t, visitor, 1, Role::Visitor),
            ov.clone(),
            Bytes::from("wv"),
        );
        let _ = hub.register(src(t, agent, 2, Role::Agent), oa.clone(), Bytes::from("wa"));
        hub.welcome(2, &[]);
        hub.autosub(t, visitor, conv, 0, Some(&Bytes::from("conv-event")));
        assert!(ov.drain_texts().is_empty());
        hub.welcome(1, &[(conv, 9)]);
        assert_eq!(names(&ov.drain_texts()), ["wv", "conv-event"]);
        hub.autosub(t, agent, conv, 0, None);
        let now = Instant::now();
        hub.deliver(t, conv, 1, true, &f(1), now);
        assert!(ov.drain_texts().is_empty());
        assert_eq!(names(&oa.drain_texts()), ["wa", "m1"]);
        hub.event(t, conv, Some(agent), false, &Bytes::from("typing"));
        assert_eq!(names(&ov.drain_texts()), ["typing"]);
        assert!(oa.drain_texts().is_empty());
        hub.event(t, conv, None, true, &Bytes::from("staff-only"));
        assert!(ov.drain_texts().is_empty());
        assert_eq!(names(&oa.drain_texts()), ["staff-only"]);
    }

    #[test]
    fn refused_sub_is_dropped() {
        let (reg, _rx) = Registrar::channel();
        let mut hub = Hub::new(reg, 1 << 20);
        let (t, conv) = (Uuid::new_v4(), Uuid::new_v4());
        let o = Outbound::new(1 << 20);
        let _ = hub.register(
            src(t, Uuid::new_v4(), 1, Role::Agent),
            o.clone(),
            Bytes::from("w"),
        );
        hub.welcome(1, &[]);
        let _ack = hub.begin_sub(1, conv, 0, Instant::now());
        // Asked for, not granted until core-api answers: events of the conversation skip it.
        assert_eq!(hub.gate(1, conv), Gate::Pending);
        hub.event(t, conv, None, false, &Bytes::from("typing"));
        let err = ServerFrame::Error {
            id: None,
            conv: Some(conv),
            code: relaydesk_shared::ErrorCode::NotFound,
            message: "no".into(),
            retry_after_ms: None,
        };
        hub.reply(1, Bytes::from(err.to_json()));
        assert_eq!(hub.gate(1, conv), Gate::Refused);
        assert_eq!(o.drain_texts().len(), 2, "the welcome and the refusal only");
    }

    #[test]
    fn the_answer_to_a_sub_grants_it() {
        let (reg, _rx) = Registrar::channel();
        let mut hub = Hub::new(reg, 1 << 20);
        let (t, conv) = (Uuid::new_v4(), Uuid::new_v4());
        let o = Outbound::new(1 << 20);
        let _ = hub.register(
            src(t, Uuid::new_v4(), 1, Role::Agent),
            o.clone(),
            Bytes::from("w"),
        );
        hub.welcome(1, &[]);
        let _ack = hub.begin_sub(1, conv, 0, Instant::now());
        assert!(!hub.is_granted(1, conv));
        // Receipts behind the sub are held, the highest of each kind.
        assert_eq!(hub.gate_receipt(1, conv, 4, true), Gate::Pending);
        assert_eq!(hub.gate_receipt(1, conv, 3, true), Gate::Pending);
        assert_eq!(hub.gate_receipt(1, conv, 2, false), Gate::Pending);
        let held = hub.replay(1, conv, 0, &[], true, Instant::now());
        assert!(hub.is_granted(1, conv));
        assert!(
            matches!(
                held.as_slice(),
                [Ingress::Ack { seq: 2, .. }, Ingress::Read { seq: 4, .. }]
            ),
            "{held:?}"
        );
        assert!(hub.replay(1, conv, 0, &[], true, Instant::now()).is_empty());
        assert_eq!(hub.gate_receipt(1, Uuid::new_v4(), 1, false), Gate::Refused);
        hub.event(t, conv, None, false, &Bytes::from("typing"));
        let texts = o.drain_texts();
        assert_eq!(
            texts.last().map(|b| &b[..]),
            Some(&b"typing"[..]),
            "{texts:?}"
        );
        // A welcome's subscriptions are granted from the start.
        let other = Uuid::new_v4();
        let _ = hub.register(
            src(t, Uuid::new_v4(), 2, Role::Agent),
            Outbound::new(1 << 20),
            Bytes::from("w"),
        );
        hub.welcome(2, &[(other, 3)]);
        assert!(hub.is_granted(2, other));
    }
}
