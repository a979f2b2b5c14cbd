//! End-to-end acknowledgement: the PUBACK/PUBREC a device is owed for each QoS 1/2
//! publish, sent in packet order once Kafka has answered for the record, or the `202` an
//! HTTP request waits for. Kafka's answer reaches the connection or the request through
//! the `Waiter` that rides with the record through the producer, so it arrives whatever
//! the connection is busy with.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Instant;

use hdrhistogram::Histogram;

use metrics::counter;
use tokio::sync::{mpsc, oneshot, watch};

use crate::produce::ProduceError;
use crate::wire::{Qos, Reason};

/// What became of a record that was handed to the producer.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivered {
    /// Kafka has it where it was meant to go.
    Stored,
    /// Kafka refused it for good (too large, invalid); it is in the dead-letter topic.
    DeadLettered(String),
}

pub type Outcome = Result<Delivered, ProduceError>;

/// A QoS 2 publish's outcome, shared between connections of one session: a device may
/// resend the publish on its next connection before the first delivery is known.
pub type Qos2Outcome = watch::Receiver<Option<Outcome>>;

/// Who hears Kafka's answer for one record.
enum Listener {
    /// The connection that owes the device an acknowledgement, and which one.
    Connection(mpsc::UnboundedSender<(u64, Outcome)>, u64),
    /// An HTTP request waiting to answer.
    Request(oneshot::Sender<Outcome>),
}

/// Where Kafka's answer for one record goes.
pub struct Waiter {
    ack: Option<Listener>,
    /// The session's QoS 2 state, which outlives the connection.
    session: Option<watch::Sender<Option<Outcome>>>,
    /// Counts a failure nobody else hears of (QoS 0, `ack = "receipt"`, a closed connection).
    policy: &'static str,
    /// What a successful delivery means: the dead letter of a refused record stands in
    /// for the record.
    success: Delivered,
    /// When the record set out, where someone waits for Kafka's answer.
    since: Option<Instant>,
}

/// How long Kafka took to confirm the records someone waited for (a device's PUBACK, an
/// HTTP `202`), in microseconds, since the last `take_confirmations`: the status page's
/// live p50/p99, which a Prometheus summary (never forgetting) cannot give.
static CONFIRMATIONS: LazyLock<Mutex<Histogram<u64>>> = LazyLock::new(|| Mutex::new(latencies()));
/// Whether anyone looks at them (so nobody else pays for the lock).
static RECORDING: AtomicBool = AtomicBool::new(false);

pub fn record_confirmations(on: bool) {
    RECORDING.store(on, Ordering::Relaxed);
}

fn latencies() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 2).expect("static bounds")
}

/// Now, while the status is watched: nobody else pays for the clock on the ack path.
fn watched_since() -> Option<Instant> {
    RECORDING.load(Ordering::Relaxed).then(Instant::now)
}

/// The confirmation times recorded since the last call.
pub fn take_confirmations() -> Histogram<u64> {
    let mut recorded = CONFIRMATIONS.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::replace(&mut *recorded, latencies())
}

impl Waiter {
    /// Nobody waits: a failure is only counted, under `policy`.
    pub fn unheard(policy: &'static str) -> Waiter {
        Waiter {
            ack: None,
            session: None,
            policy,
            success: Delivered::Stored,
            since: None,
        }
    }

    /// A waiter for an HTTP request, and what the request awaits; a request that gave up
    /// waiting (its timeout, its client gone) leaves a failure counted under `policy`.
    pub fn request(policy: &'static str) -> (Waiter, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let waiter = Waiter {
            ack: Some(Listener::Request(tx)),
            since: watched_since(),
            ..Waiter::unheard(policy)
        };
        (waiter, rx)
    }

    /// The same waiter, told `success` when its record is delivered.
    pub fn on_success(self, success: Delivered) -> Waiter {
        Waiter { success, ..self }
    }

    /// Also tells the session how a QoS 2 publish went; returns what resends look at.
    pub fn with_session(mut self) -> (Waiter, Qos2Outcome) {
        let (tx, rx) = watch::channel(None);
        self.session = Some(tx);
        (self, rx)
    }

    pub fn resolve(self, outcome: Outcome) {
        if let (Some(since), Ok(_)) = (self.since, &outcome) {
            let micros = since.elapsed().as_micros() as u64;
            let mut recorded = CONFIRMATIONS.lock().unwrap_or_else(|e| e.into_inner());
            recorded.saturating_record(micros.max(1));
        }
        let outcome = outcome.map(|_| self.success.clone());
        if let Some(session) = &self.session {
            session.send_replace(Some(outcome.clone()));
        }
        let heard = match self.ack {
            Some(Listener::Connection(tx, seq)) => tx.send((seq, outcome.clone())).is_ok(),
            Some(Listener::Request(tx)) => tx.send(outcome.clone()).is_ok(),
            None => false,
        };
        if let (false, Err(e)) = (heard, &outcome) {
            counter!("sluice_delivery_failed_total", "policy" => self.policy).increment(1);
            tracing::warn!(error = %e, policy = self.policy, "record not delivered and nobody left to tell");
        }
    }
}

/// What a device is owed for one publish, once its record's fate is known.
#[derive(Debug, Clone, PartialEq)]
pub struct Acknowledgement {
    pub qos: Qos,
    pub pkid: u16,
    /// MQTT 5 reason when Kafka took the record (a refused payload's is not success).
    pub reason: Reason,
    /// The MQTT 5 reason string, if any.
    pub detail: Option<String>,
}

struct Entry {
    ack: Acknowledgement,
    outcome: Option<Outcome>,
}

/// A connection's acknowledgements in packet order. At most one per packet id: a
/// retransmission of a publish still waiting is answered by the first one's.
pub struct AckQueue {
    entries: VecDeque<Entry>,
    /// Sequence number of `entries[0]`.
    first: u64,
    tx: mpsc::UnboundedSender<(u64, Outcome)>,
    rx: mpsc::UnboundedReceiver<(u64, Outcome)>,
}

impl Default for AckQueue {
    fn default() -> AckQueue {
        let (tx, rx) = mpsc::unbounded_channel();
        AckQueue {
            entries: VecDeque::new(),
            first: 0,
            tx,
            rx,
        }
    }
}

/// An acknowledgement that cannot be given: Kafka did not take the record.
#[derive(Debug)]
pub struct Undelivered {
    pub ack: Acknowledgement,
    pub error: ProduceError,
}

impl AckQueue {
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether an acknowledgement for this packet id is still owed.
    pub fn owes(&self, pkid: u16) -> bool {
        self.entries.iter().any(|e| e.ack.pkid == pkid)
    }

    /// Queues an acknowledgement given when the returned waiter hears from Kafka.
    pub fn wait(&mut self, ack: Acknowledgement) -> Waiter {
        let seq = self.push(ack);
        Waiter {
            ack: Some(Listener::Connection(self.tx.clone(), seq)),
            session: None,
            policy: "kafka",
            success: Delivered::Stored,
            since: watched_since(),
        }
    }

    /// Queues an acknowledgement whose outcome is already known; it is released, in its
    /// turn, on the same path as Kafka's answers.
    pub fn done(&mut self, ack: Acknowledgement, outcome: Outcome) {
        let seq = self.push(ack);
        // The queue holds the receiver: this cannot fail.
        let _ = self.tx.send((seq, outcome));
    }

    /// Queues an acknowledgement given when another connection's record for the same
    /// QoS 2 publish is delivered.
    pub fn follow(&mut self, ack: Acknowledgement, mut outcome: Qos2Outcome) {
        let seq = self.push(ack);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            let result = match outcome.wait_for(Option::is_some).await {
                Ok(done) => done.clone().unwrap_or(Err(ProduceError::Abandoned)),
                Err(_) => Err(ProduceError::Abandoned),
            };
            let _ = tx.send((seq, result));
        });
    }

    fn push(&mut self, ack: Acknowledgement) -> u64 {
        self.entries.push_back(Entry { ack, outcome: None });
        self.first + self.entries.len() as u64 - 1
    }

    /// The next outcome from Kafka (cancel safe).
    pub async fn next_outcome(&mut self) -> (u64, Outcome) {
        // The queue holds a sender itself, so the channel never closes.
        self.rx
            .recv()
            .await
            .unwrap_or((u64::MAX, Err(ProduceError::Abandoned)))
    }

    pub fn record(&mut self, seq: u64, outcome: Outcome) {
        if let Some(e) = seq
            .checked_sub(self.first)
            .and_then(|i| self.entries.get_mut(i as usize))
        {
            e.outcome = Some(outcome);
        }
    }

    /// Hands every acknowledgement that is due, in order, to `send`; stops at the first
    /// record Kafka did not take, which is returned (those before it were handed over).
    pub fn release(
        &mut self,
        mut send: impl FnMut(&Acknowledgement, &Delivered),
    ) -> Result<(), Undelivered> {
        while self.entries.front().is_some_and(|e| e.outcome.is_some()) {
            let Some(Entry {
                ack,
                outcome: Some(outcome),
            }) = self.entries.pop_front()
            else {
                break;
            };
            self.first += 1;
            match outcome {
                Ok(delivered) => send(&ack, &delivered),
                Err(error) => return Err(Undelivered { ack, error }),
            }
        }
        Ok(())
    }
}

/// The QoS 2 publishes of one session that are received and not yet released (PUBREL), by
/// packet id, with how their delivery went. Kept across a persistent session's connections.
pub type Qos2Received = Arc<std::sync::Mutex<std::collections::HashMap<u16, Qos2Outcome>>>;

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(pkid: u16) -> Acknowledgement {
        Acknowledgement {
            qos: Qos::AtLeastOnce,
            pkid,
            reason: Reason::Success,
            detail: None,
        }
    }

    fn released(q: &mut AckQueue) -> (Vec<u16>, Option<u16>) {
        let mut sent = Vec::new();
        let failed = q.release(|a, _| sent.push(a.pkid)).err();
        (sent, failed.map(|u| u.ack.pkid))
    }

    /// Records the next `n` outcomes the queue hears.
    async fn hear(q: &mut AckQueue, n: usize) {
        for _ in 0..n {
            let (seq, outcome) = q.next_outcome().await;
            q.record(seq, outcome);
        }
    }

    #[tokio::test]
    async fn acknowledgements_leave_in_packet_order_and_stop_at_a_failure() {
        let mut q = AckQueue::default();
        let w1 = q.wait(ack(1));
        let w2 = q.wait(ack(2));
        q.done(ack(3), Ok(Delivered::Stored));
        let w4 = q.wait(ack(4));
        assert!(q.owes(2) && !q.owes(5));
        w2.resolve(Ok(Delivered::Stored));
        hear(&mut q, 2).await;
        assert_eq!(released(&mut q), (vec![], None), "1 is not answered yet");
        w1.resolve(Ok(Delivered::Stored));
        hear(&mut q, 1).await;
        assert_eq!(released(&mut q), (vec![1, 2, 3], None));
        w4.resolve(Err(ProduceError::QueueFull));
        hear(&mut q, 1).await;
        assert_eq!(released(&mut q), (vec![], Some(4)));
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn a_session_outcome_is_followed_by_a_later_connection() {
        let (w, outcome) = Waiter::unheard("kafka").with_session();
        let mut q = AckQueue::default();
        q.follow(ack(7), outcome);
        w.resolve(Ok(Delivered::Stored));
        hear(&mut q, 1).await;
        assert_eq!(released(&mut q), (vec![7], None));
    }
}
