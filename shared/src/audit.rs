//! Delivery audit: checks a run's outcome against the at-least-once contract.
//!
//! Fed with what senders were told (`accepted`), what PostgreSQL holds and what each
//! recipient received, [`Audit`] reports every loss, duplicate, gap and reordering. The
//! fault tests and the load harness share it, so "nothing lost, nothing duplicated" means
//! the same thing everywhere.

use std::collections::{BTreeMap, HashMap};

use uuid::Uuid;

/// A message as stored, identified by its dedupe key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub conv: Uuid,
    pub seq: u64,
    pub msg: Uuid,
    pub sender: Uuid,
    pub client_id: String,
}

/// What went wrong; empty everywhere means the contract held.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// `accepted` frames recorded.
    pub accepted: usize,
    /// Rows stored.
    pub stored: usize,
    /// Accepted but not stored (or stored under another seq/msg).
    pub lost: Vec<String>,
    /// One dedupe key stored more than once.
    pub duplicated: Vec<String>,
    /// One key accepted with two different (seq, msg).
    pub conflicting: Vec<String>,
    /// Per conversation, seqs missing from 1..=max.
    pub gaps: Vec<(Uuid, u64)>,
    /// Recipient problems: (recipient, conversation, description).
    pub recipients: Vec<(String, Uuid, String)>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.lost.is_empty()
            && self.duplicated.is_empty()
            && self.conflicting.is_empty()
            && self.gaps.is_empty()
            && self.recipients.is_empty()
    }
}

/// Collects observations, then [`Audit::report`]s.
#[derive(Debug, Default)]
pub struct Audit {
    accepted: HashMap<(Uuid, Uuid, String), (u64, Uuid)>,
    report: Report,
    stored: Vec<StoredMessage>,
    received: Vec<(String, Uuid, Vec<u64>, u64)>,
}

impl Audit {
    pub fn new() -> Self {
        Self::default()
    }

    /// A sender was told `accepted` for (conv, sender, client id).
    pub fn accepted(&mut self, conv: Uuid, sender: Uuid, client_id: &str, seq: u64, msg: Uuid) {
        self.report.accepted += 1;
        let key = (conv, sender, client_id.to_owned());
        match self.accepted.get(&key) {
            Some(&(s, m)) if (s, m) != (seq, msg) => {
                self.report
                    .conflicting
                    .push(format!("{client_id}: seq {s} and {seq}"));
            }
            Some(_) => self.report.accepted -= 1,
            None => {
                self.accepted.insert(key, (seq, msg));
            }
        }
    }

    /// Everything stored for the conversations under audit.
    pub fn stored(&mut self, rows: impl IntoIterator<Item = StoredMessage>) {
        self.stored.extend(rows);
    }

    /// The seqs a recipient received for `conv`, in arrival order, and the head it
    /// should have reached (every seq in 1..=head it may see).
    pub fn received(
        &mut self,
        recipient: impl Into<String>,
        conv: Uuid,
        seqs: Vec<u64>,
        head: u64,
    ) {
        self.received.push((recipient.into(), conv, seqs, head));
    }

    pub fn report(mut self) -> Report {
        let mut by_key: HashMap<(Uuid, Uuid, String), Vec<&StoredMessage>> = HashMap::new();
        let mut by_conv: BTreeMap<Uuid, Vec<u64>> = BTreeMap::new();
        for m in &self.stored {
            by_key
                .entry((m.conv, m.sender, m.client_id.clone()))
                .or_default()
                .push(m);
            by_conv.entry(m.conv).or_default().push(m.seq);
        }
        self.report.stored = self.stored.len();
        for (key, rows) in &by_key {
            if rows.len() > 1 {
                self.report.duplicated.push(key.2.clone());
            }
        }
        for (key, (seq, msg)) in &self.accepted {
            let ok = by_key
                .get(key)
                .is_some_and(|rows| rows.iter().any(|r| r.seq == *seq && r.msg == *msg));
            if !ok {
                self.report.lost.push(key.2.clone());
            }
        }
        for (conv, mut seqs) in by_conv {
            seqs.sort_unstable();
            let max = seqs.last().copied().unwrap_or(0);
            let mut expected = 1;
            for s in seqs {
                while expected < s {
                    self.report.gaps.push((conv, expected));
                    expected += 1;
                }
                expected = s + 1;
            }
            debug_assert!(expected > max || max == 0);
        }
        for (who, conv, seqs, head) in &self.received {
            let mut last = 0;
            for &s in seqs {
                if s <= last {
                    self.report.recipients.push((
                        who.clone(),
                        *conv,
                        format!("seq {s} after {last}"),
                    ));
                }
                last = last.max(s);
            }
            let mut sorted = seqs.clone();
            sorted.sort_unstable();
            sorted.dedup();
            let missing = (1..=*head)
                .filter(|s| sorted.binary_search(s).is_err())
                .count();
            if missing > 0 {
                self.report.recipients.push((
                    who.clone(),
                    *conv,
                    format!("{missing} of 1..={head} missing"),
                ));
            }
        }
        self.report
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(conv: Uuid, seq: u64, msg: Uuid, id: &str) -> StoredMessage {
        StoredMessage {
            conv,
            seq,
            msg,
            sender: Uuid::nil(),
            client_id: id.into(),
        }
    }

    #[test]
    fn clean_run() {
        let (c, m1, m2) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let mut a = Audit::new();
        a.accepted(c, Uuid::nil(), "a", 1, m1);
        a.accepted(c, Uuid::nil(), "a", 1, m1);
        a.accepted(c, Uuid::nil(), "b", 2, m2);
        a.stored([row(c, 1, m1, "a"), row(c, 2, m2, "b")]);
        a.received("r", c, vec![1, 2], 2);
        let r = a.report();
        assert!(r.is_clean(), "{r:?}");
        assert_eq!(r.accepted, 2);
    }

    #[test]
    fn finds_every_kind_of_fault() {
        let c = Uuid::new_v4();
        let mut a = Audit::new();
        a.accepted(c, Uuid::nil(), "lost", 5, Uuid::new_v4());
        a.accepted(c, Uuid::nil(), "x", 1, Uuid::nil());
        a.accepted(c, Uuid::nil(), "x", 2, Uuid::nil());
        a.stored([
            row(c, 1, Uuid::nil(), "x"),
            row(c, 3, Uuid::nil(), "dup"),
            row(c, 4, Uuid::nil(), "dup"),
        ]);
        a.received("r", c, vec![1, 3, 2], 4);
        let r = a.report();
        assert_eq!(r.lost, vec!["lost".to_string()]);
        assert_eq!(r.conflicting.len(), 1);
        assert_eq!(r.duplicated, vec!["dup".to_string()]);
        assert_eq!(r.gaps, vec![(c, 2)]);
        assert_eq!(r.recipients.len(), 2);
    }
}
