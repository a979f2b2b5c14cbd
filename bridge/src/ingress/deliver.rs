//! What rumqttd sends a subscriber, made what MQTT 5 promises. rumqttd 0.20 ignores the
//! subscription options (no local, retain as published, retain handling) and the client's
//! receive maximum and maximum packet size. So Sluice gives
//! each subscription its own subscription identifier in rumqttd (every delivery then names
//! the subscription it is for), stamps relayed publishes with what rumqttd forgets, and
//! filters, holds and rewrites deliveries on their way to the client.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};

use bytes::{Bytes, BytesMut};
use metrics::counter;

use crate::security::acl;
use crate::wire::{self, Delivery, Level, Qos, RetainHandling, SubscribeFilter, WireError};

/// The user property Sluice adds to what it relays to rumqttd (publishes, wills). A
/// client's own is removed on the way in, so it cannot speak for another, and Sluice's on
/// the way out.
pub const STAMP: &str = "$sluice";

/// The most a stamp adds to a packet: the property, its key, and a 256-byte client id.
pub const STAMP_ROOM: usize = 512;

/// Subscription identifiers are variable byte integers: 1 to 268,435,455.
const MAX_IDENTIFIER: usize = 268_435_455;

/// A subscription as its client asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    /// The identifier Sluice gave it in rumqttd.
    sluice_id: usize,
    qos: Qos,
    /// The client's own subscription identifier.
    identifier: Option<usize>,
    no_local: bool,
    retain_as_published: bool,
    /// Whether the retained messages sent for its latest SUBSCRIBE reach the client.
    replay: bool,
}

/// A session's subscriptions. rumqttd keeps a persistent session's across connections, so
/// they are kept with the session (and re-checked when the rules change), and so is the
/// order in which rumqttd awaits PUBCOMPs, which outlives a connection too.
#[derive(Debug, Default)]
pub struct Subscriptions {
    by_filter: HashMap<String, Subscription>,
    by_id: HashMap<usize, String>,
    last_id: usize,
    awaiting_pubcomp: InOrder,
}

/// A session's subscriptions, shared by its connections.
pub type Granted = Arc<Mutex<Subscriptions>>;

/// The filters all sessions in this process hold, each with how many hold it: a publish
/// that is not retained and that none of them matches has nobody to reach in rumqttd and
/// is not relayed to it at all (a loopback round trip saved per reading, and for a client
/// without a relay, no relay opened).
static HELD: LazyLock<RwLock<HashMap<String, usize>>> = LazyLock::new(RwLock::default);

/// Whether `HELD` has any filter, read per publish without its lock (most gateways have
/// no subscriber at all); written under the lock.
static ANY_HELD: AtomicBool = AtomicBool::new(false);

/// Past this many different filters held, a publish is relayed without matching it
/// against each (a fleet whose devices each subscribe to their own command topic).
const MATCHED_FILTERS: usize = 64;

/// Whether some session holds a subscription rumqttd could route a publish on `topic` to.
pub fn subscribed_to(topic: &str) -> bool {
    if !ANY_HELD.load(Ordering::Relaxed) {
        return false;
    }
    let held = HELD.read().unwrap_or_else(|p| p.into_inner());
    !held.is_empty()
        && (held.len() > MATCHED_FILTERS || held.keys().any(|f| acl::filter_matches(f, topic)))
}

fn hold(filter: &str) {
    let mut held = HELD.write().unwrap_or_else(|p| p.into_inner());
    *held.entry(filter.to_owned()).or_default() += 1;
    ANY_HELD.store(true, Ordering::Relaxed);
}

fn release<'a>(filters: impl Iterator<Item = &'a str>) {
    let mut held = HELD.write().unwrap_or_else(|p| p.into_inner());
    for filter in filters {
        if let Some(n) = held.get_mut(filter) {
            *n -= 1;
            if *n == 0 {
                held.remove(filter);
            }
        }
    }
    ANY_HELD.store(!held.is_empty(), Ordering::Relaxed);
}

impl Subscriptions {
    pub fn filters(&self) -> impl Iterator<Item = &str> {
        self.by_filter.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.by_filter.len()
    }

    pub fn contains(&self, filter: &str) -> bool {
        self.by_filter.contains_key(filter)
    }

    pub fn any_no_local(&self) -> bool {
        self.by_filter.values().any(|s| s.no_local)
    }

    /// Records a subscription (a new one, or new options for one the session has) and
    /// returns the identifier rumqttd is to know it by.
    pub fn add(&mut self, filter: &SubscribeFilter, identifier: Option<usize>) -> usize {
        let existed = self.by_filter.get(&filter.path).map(|s| s.sluice_id);
        let sluice_id = match existed {
            Some(id) => id,
            None => self.next_id(),
        };
        let replay = match filter.retain_handling {
            RetainHandling::OnEverySubscribe => true,
            RetainHandling::OnNewSubscribe => existed.is_none(),
            RetainHandling::Never => false,
        };
        self.by_id.insert(sluice_id, filter.path.clone());
        if existed.is_none() {
            hold(&filter.path);
        }
        self.by_filter.insert(
            filter.path.clone(),
            Subscription {
                sluice_id,
                qos: filter.qos,
                identifier,
                no_local: filter.no_local,
                retain_as_published: filter.retain_as_published,
                replay,
            },
        );
        sluice_id
    }

    pub fn remove(&mut self, filter: &str) -> bool {
        match self.by_filter.remove(filter) {
            Some(s) => {
                self.by_id.remove(&s.sluice_id);
                release(std::iter::once(filter));
                true
            }
            None => false,
        }
    }

    pub fn clear(&mut self) {
        release(self.filters());
        self.by_filter.clear();
        self.by_id.clear();
        self.awaiting_pubcomp = InOrder::default();
    }

    /// SUBSCRIBEs giving rumqttd back Sluice's identifiers, which it forgets when a
    /// persistent session reconnects (it keeps the filters: nothing is sent again).
    pub fn restore(&self, out: &mut BytesMut) -> Result<(), WireError> {
        for (path, s) in &self.by_filter {
            let filter = SubscribeFilter {
                path: path.clone(),
                qos: s.qos,
                no_local: s.no_local,
                retain_as_published: s.retain_as_published,
                retain_handling: RetainHandling::Never,
            };
            wire::encode_subscribe(out, Level::V5, 1, &filter, s.sluice_id)?;
        }
        Ok(())
    }

    /// The subscriptions matching a topic, for a delivery that names none (one rumqttd sends
    /// before its identifiers are restored).
    fn matching(&self, topic: &str) -> Vec<&Subscription> {
        self.by_filter
            .iter()
            .filter(|(filter, _)| acl::filter_matches(filter, topic))
            .map(|(_, s)| s)
            .collect()
    }

    fn next_id(&mut self) -> usize {
        loop {
            self.last_id = self.last_id % MAX_IDENTIFIER + 1;
            if !self.by_id.contains_key(&self.last_id) {
                return self.last_id;
            }
        }
    }

    fn by_id(&self, id: usize) -> Option<&Subscription> {
        self.by_id.get(&id).and_then(|f| self.by_filter.get(f))
    }
}

impl Drop for Subscriptions {
    fn drop(&mut self) {
        release(self.filters());
    }
}

/// What rumqttd forgets about a publish, carried through it in the `STAMP` user property:
/// whether it was retained (retain as published; rumqttd clears the flag) and which client
/// sent it (no local).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    pub retained: bool,
    pub origin: String,
}

impl Stamp {
    /// The stamp a client's publish needs, if any: only what a subscriber could need, so
    /// most readings reach rumqttd unchanged.
    pub fn needed(
        publish: &wire::Publish,
        sender_has_no_local: bool,
        sender: &str,
    ) -> Option<Stamp> {
        (publish.retain || sender_has_no_local).then(|| Stamp {
            retained: publish.retain,
            origin: sender.to_owned(),
        })
    }

    /// The stamp a will needs: a retained will keeps its flag for retain as published.
    pub fn will(retain: bool, sender: &str) -> Option<Stamp> {
        retain.then(|| Stamp {
            retained: true,
            origin: sender.to_owned(),
        })
    }

    pub fn encode(&self) -> String {
        format!("{} {}", u8::from(self.retained), self.origin)
    }

    fn parse(text: &str) -> Option<Stamp> {
        let (retained, origin) = text.split_once(' ')?;
        Some(Stamp {
            retained: retained == "1",
            origin: origin.to_owned(),
        })
    }
}

/// Who a client is in stamps: its client id, or for one with none (rumqttd assigns it one)
/// a name no client id can be, as rumqttd refuses client ids with `#`.
pub fn origin(client_id: &str) -> Arc<str> {
    static ANONYMOUS: AtomicU64 = AtomicU64::new(0);
    match client_id {
        "" => format!("#{}", ANONYMOUS.fetch_add(1, Ordering::Relaxed)).into(),
        id => id.into(),
    }
}

/// Why a delivery does not reach the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skipped {
    /// For a subscription the client has ended.
    Unsubscribed,
    /// The client's own publish, on a no-local subscription.
    NoLocal,
    /// A QoS 0 delivery while the client's queue is full (it does not read, or holds
    /// back its acknowledgements).
    QueueFull,
    /// A retained message sent at subscribe, which the subscription's retain handling
    /// declines.
    RetainHandling,
    /// Its message expiry interval passed while it waited.
    Expired,
    /// Larger than the client's maximum packet size.
    TooLarge,
}

impl Skipped {
    fn label(self) -> &'static str {
        match self {
            Skipped::Unsubscribed => "unsubscribed",
            Skipped::NoLocal => "no_local",
            Skipped::QueueFull => "queue_full",
            Skipped::RetainHandling => "retain_handling",
            Skipped::Expired => "expired",
            Skipped::TooLarge => "too_large",
        }
    }
}

/// A delivery as the client is to get it, but for its remaining message expiry (rumqttd
/// counts the time a message waits in it; the time it waits here is counted when it is
/// sent).
#[derive(Debug)]
pub struct Ready {
    publish: Delivery,
    /// When its message expiry runs out (ms since the Unix epoch).
    expires_ms: Option<u64>,
}

/// Applies the session's subscriptions to a delivery from rumqttd: which one it is for (by
/// Sluice's identifier), its options, and the client's own identifiers in place of
/// Sluice's.
pub fn prepare(
    mut publish: Delivery,
    subs: &Subscriptions,
    me: &str,
    now_ms: u64,
) -> Result<Ready, Skipped> {
    let mut props = publish.properties.take().unwrap_or_default();
    let mut stamp = None;
    props.user_properties.retain(|(k, v)| {
        if k != STAMP {
            return true;
        }
        stamp = Stamp::parse(v);
        false
    });
    let ours = std::mem::take(&mut props.subscription_identifiers);
    let matched: Vec<&Subscription> = match ours.is_empty() {
        true => subs.matching(&String::from_utf8_lossy(&publish.topic)),
        false => ours.iter().filter_map(|&id| subs.by_id(id)).collect(),
    };
    if !ours.is_empty() && matched.is_empty() {
        return Err(Skipped::Unsubscribed);
    }
    // rumqttd clears the retained flag on what it routes live, so a retained flag is a
    // retained message sent at subscribe.
    let at_subscribe = publish.retain;
    let all =
        |test: fn(&Subscription) -> bool| !matched.is_empty() && matched.iter().all(|s| test(s));
    if at_subscribe && all(|s| !s.replay) {
        return Err(Skipped::RetainHandling);
    }
    let mine = stamp.as_ref().is_some_and(|s| s.origin == me);
    if mine && all(|s| s.no_local) {
        return Err(Skipped::NoLocal);
    }
    let retained = stamp.as_ref().is_some_and(|s| s.retained);
    publish.retain = at_subscribe || (retained && matched.iter().any(|s| s.retain_as_published));
    props.subscription_identifiers = matched.iter().filter_map(|s| s.identifier).collect();
    let expires_ms = props
        .message_expiry_interval
        .map(|seconds| now_ms + u64::from(seconds) * 1000);
    publish.properties = Some(props);
    Ok(Ready {
        publish,
        expires_ms,
    })
}

/// Deliveries on their way to one MQTT 5 client: at most its receive maximum of QoS 1 and
/// 2 ones unacknowledged (the rest wait here, in order), none larger than its maximum
/// packet size, none expired. What the client never gets is acknowledged to rumqttd in its
/// place. rumqttd takes PUBACKs and PUBRECs only in the order of its deliveries and PUBCOMPs
/// only in the order of the PUBRECs (else it drops the connection), and it reuses packet
/// ids, so every answer, the client's too, goes to rumqttd in its turn, matched by position.
/// QoS 1 and 2 deliveries waiting are bounded by rumqttd's in-flight window; QoS 0 ones are
/// dropped past `held_cap` bytes.
#[derive(Debug)]
pub struct Outbox {
    receive_maximum: usize,
    max_packet_size: usize,
    held_cap: usize,
    /// QoS 1 and 2 deliveries sent and not finished by the client.
    unacknowledged: usize,
    held: VecDeque<Ready>,
    held_bytes: usize,
    /// PUBACKs and PUBRECs rumqttd waits for, in the order of its deliveries.
    acks: InOrder,
    /// PUBCOMPs rumqttd waits for, in the order of the PUBRECs.
    comps: InOrder,
}

/// PUBCOMPs rumqttd may wait for: past this a client that never completes is disconnected.
pub const MAX_AWAITED: usize = 1000;

/// What a delivery waiting in the outbox is counted as, beside its topic and payload.
const HELD_OVERHEAD: usize = 256;

impl Outbox {
    /// `subs`: the session's, whose PUBCOMP order this connection takes over (`park`
    /// hands it back).
    pub fn new(
        receive_maximum: u16,
        max_packet_size: Option<u32>,
        held_cap: usize,
        subs: &mut Subscriptions,
    ) -> Outbox {
        Outbox {
            receive_maximum: usize::from(receive_maximum),
            max_packet_size: max_packet_size.map_or(usize::MAX, |m| m as usize),
            held_cap,
            unacknowledged: 0,
            held: VecDeque::new(),
            held_bytes: 0,
            acks: InOrder::default(),
            comps: std::mem::take(&mut subs.awaiting_pubcomp),
        }
    }

    /// At the end of the connection: the PUBCOMPs rumqttd still waits for are the
    /// session's. rumqttd sends their PUBRELs again, in order, when the client is back, and
    /// every one is answered again (what was not sent yet never reached it); deliveries not
    /// acknowledged are sent again, so their turns go.
    pub fn park(&mut self, subs: &mut Subscriptions) {
        let mut comps = std::mem::take(&mut self.comps);
        for a in &mut comps.0 {
            a.asked = false;
            a.answer = None;
        }
        subs.awaiting_pubcomp = comps;
    }

    /// Bytes of deliveries waiting for the client's receive maximum.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.held_bytes
    }

    /// Whether the client has left more unfinished than any client should.
    pub fn backlog(&self) -> bool {
        self.comps.0.len() > MAX_AWAITED
    }

    /// A delivery goes out now if the client has room and nothing waits before it.
    pub fn push(&mut self, ready: Ready, now_ms: u64, out: &mut Out<'_>) -> Result<(), WireError> {
        let qos = wire::delivery_qos(&ready.publish);
        if qos > Qos::AtMostOnce {
            self.acks.push(ready.publish.pkid, Owner::Client, true);
        } else if self.held_bytes >= self.held_cap {
            self.skip(qos, ready.publish.pkid, Skipped::QueueFull, out);
            return Ok(());
        }
        self.held_bytes += size(&ready.publish);
        self.held.push_back(ready);
        self.send_due(now_ms, out)
    }

    /// rumqttd is answered as if the client had taken the delivery, in its turn.
    pub fn skip(&mut self, qos: Qos, pkid: u16, why: Skipped, out: &mut Out<'_>) {
        counter!("sluice_deliveries_skipped_total", "reason" => why.label()).increment(1);
        let kind = match qos {
            Qos::AtMostOnce => return,
            Qos::AtLeastOnce => wire::PUBACK,
            Qos::ExactlyOnce => wire::PUBREC,
        };
        self.acks.take_over(pkid, answer(kind, pkid));
        self.flush_acks(out.to_broker);
    }

    /// An acknowledgement from the client (PUBACK, PUBREC, PUBCOMP), for rumqttd in its
    /// turn. One for nothing this connection was sent, or rumqttd asked for, is dropped:
    /// rumqttd would close the connection for it. One that ends a delivery lets the next go.
    pub fn client_ack(
        &mut self,
        frame: &wire::Frame,
        now_ms: u64,
        out: &mut Out<'_>,
    ) -> Result<(), WireError> {
        let pkid = frame.packet_id()?;
        let kind = frame.packet_type();
        let order = match kind {
            wire::PUBCOMP => &mut self.comps,
            _ => &mut self.acks,
        };
        if !order.answered(pkid, frame.bytes.clone()) {
            tracing::debug!(pkid, kind, "acknowledgement for nothing awaited, dropped");
            return Ok(());
        }
        self.flush_acks(out.to_broker);
        self.comps.flush(out.to_broker);
        // MQTT 5, 4.9: a delivery counts until its PUBACK, its PUBCOMP, or a PUBREC refusing it.
        let ended = kind != wire::PUBREC || frame.ack_reason() >= 0x80;
        if ended {
            self.unacknowledged = self.unacknowledged.saturating_sub(1);
            self.send_due(now_ms, out)?;
        }
        Ok(())
    }

    /// rumqttd's PUBREL, for the oldest PUBREC it has not released: true when Sluice
    /// answers it (a delivery the client never got, or refused), false when it is the
    /// client's to answer.
    pub fn released(&mut self, pkid: u16, to_broker: &mut BytesMut) -> bool {
        let ours = self.comps.asked(pkid);
        self.comps.flush(to_broker);
        ours
    }

    /// Writes the PUBACKs and PUBRECs whose turn has come; each PUBREC's PUBCOMP is awaited
    /// next, Sluice's when the client refused the delivery or never got it.
    fn flush_acks(&mut self, to_broker: &mut BytesMut) {
        while let Some(a) = self.acks.pop_answered() {
            let (owner, answer) = (a.owner, a.answer.unwrap_or_default());
            to_broker.extend_from_slice(&answer);
            if answer.first().is_some_and(|b| b >> 4 == wire::PUBREC) {
                let refused = answer.get(4).is_some_and(|&r| r >= 0x80);
                let owner = if refused { Owner::Sluice } else { owner };
                self.comps.push(a.pkid, owner, false);
            }
        }
    }

    fn send_due(&mut self, now_ms: u64, out: &mut Out<'_>) -> Result<(), WireError> {
        while let Some(front) = self.held.front() {
            let acked = wire::delivery_qos(&front.publish) > Qos::AtMostOnce;
            if acked && self.unacknowledged >= self.receive_maximum {
                break;
            }
            let Some(Ready {
                mut publish,
                expires_ms,
            }) = self.held.pop_front()
            else {
                break;
            };
            self.held_bytes = self.held_bytes.saturating_sub(size(&publish));
            let (qos, pkid) = (wire::delivery_qos(&publish), publish.pkid);
            if let Some(expires) = expires_ms {
                if now_ms >= expires {
                    self.skip(qos, pkid, Skipped::Expired, out);
                    continue;
                }
                // MQTT 5, 3.3.2.3.3: the interval received less the time it waited.
                let left = (expires - now_ms).div_ceil(1000);
                if let Some(p) = publish.properties.as_mut() {
                    p.message_expiry_interval = Some(u32::try_from(left).unwrap_or(u32::MAX));
                }
            }
            let start = out.to_device.len();
            wire::encode_delivery(out.to_device, &publish)?;
            if out.to_device.len() - start > self.max_packet_size {
                out.to_device.truncate(start);
                self.skip(qos, pkid, Skipped::TooLarge, out);
                continue;
            }
            if acked {
                self.unacknowledged += 1;
            }
        }
        Ok(())
    }
}

/// Where the outbox writes: to the client, and to rumqttd.
pub struct Out<'a> {
    pub to_device: &'a mut BytesMut,
    pub to_broker: &'a mut BytesMut,
}

/// Who answers rumqttd for a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Owner {
    Client,
    Sluice,
}

/// One acknowledgement rumqttd waits for.
#[derive(Debug, Clone)]
struct Awaited {
    pkid: u16,
    owner: Owner,
    /// rumqttd asked for it: its PUBREL, for a PUBCOMP (a delivery asks for its PUBACK or
    /// PUBREC at once).
    asked: bool,
    /// The packet rumqttd gets in its turn, once given.
    answer: Option<Bytes>,
}

/// Acknowledgements rumqttd takes only in order, each matched to the oldest that fits:
/// packet ids repeat.
#[derive(Debug, Default)]
struct InOrder(VecDeque<Awaited>);

impl InOrder {
    fn push(&mut self, pkid: u16, owner: Owner, asked: bool) {
        self.0.push_back(Awaited {
            pkid,
            owner,
            asked,
            answer: None,
        });
    }

    /// Sluice answers a delivery in the client's place (the one just pushed for `pkid`, or
    /// one the client never saw).
    fn take_over(&mut self, pkid: u16, answer: Bytes) {
        let mine =
            |a: &&mut Awaited| a.pkid == pkid && a.owner == Owner::Client && a.answer.is_none();
        match self.0.iter_mut().rev().find(mine) {
            Some(a) => {
                a.owner = Owner::Sluice;
                a.answer = Some(answer);
            }
            None => self.0.push_back(Awaited {
                pkid,
                owner: Owner::Sluice,
                asked: true,
                answer: Some(answer),
            }),
        }
    }

    /// The client's answer for the oldest of its own that rumqttd asked for; false when
    /// there is none.
    fn answered(&mut self, pkid: u16, answer: Bytes) -> bool {
        let fits = |a: &&mut Awaited| {
            a.pkid == pkid && a.owner == Owner::Client && a.asked && a.answer.is_none()
        };
        match self.0.iter_mut().find(fits) {
            Some(a) => {
                a.answer = Some(answer);
                true
            }
            None => false,
        }
    }

    /// rumqttd asks for the oldest answer it has not asked for yet: true when it is
    /// Sluice's (given now). One nothing was recorded for is the client's.
    fn asked(&mut self, pkid: u16) -> bool {
        let Some(a) = self.0.iter_mut().find(|a| !a.asked) else {
            self.push(pkid, Owner::Client, true);
            return false;
        };
        if a.pkid != pkid {
            tracing::warn!(
                pkid,
                expected = a.pkid,
                "rumqttd released another packet id than awaited"
            );
        }
        a.asked = true;
        if a.owner == Owner::Sluice {
            a.answer = Some(answer(wire::PUBCOMP, a.pkid));
        }
        a.owner == Owner::Sluice
    }

    fn pop_answered(&mut self) -> Option<Awaited> {
        match self.0.front() {
            Some(a) if a.answer.is_some() => self.0.pop_front(),
            _ => None,
        }
    }

    /// Writes the answers whose turn has come.
    fn flush(&mut self, out: &mut BytesMut) {
        while let Some(a) = self.pop_answered() {
            out.extend_from_slice(&a.answer.unwrap_or_default());
        }
    }
}

/// A success PUBACK, PUBREC or PUBCOMP.
fn answer(kind: u8, pkid: u16) -> Bytes {
    let [hi, lo] = pkid.to_be_bytes();
    Bytes::copy_from_slice(&[kind << 4, 2, hi, lo])
}

fn size(publish: &Delivery) -> usize {
    HELD_OVERHEAD + publish.topic.len() + publish.payload.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use rumqttc::v5::mqttbytes::v5::PublishProperties;
    use rumqttc::v5::mqttbytes::QoS;

    fn filter(path: &str, no_local: bool, rap: bool, rh: RetainHandling) -> SubscribeFilter {
        SubscribeFilter {
            path: path.into(),
            qos: Qos::AtLeastOnce,
            no_local,
            retain_as_published: rap,
            retain_handling: rh,
        }
    }

    /// A delivery as rumqttd sends it: for Sluice's subscription `ids`, with a stamp.
    fn delivery(
        pkid: u16,
        qos: QoS,
        ids: &[usize],
        stamp: Option<Stamp>,
        retain: bool,
    ) -> Delivery {
        let mut props = PublishProperties {
            subscription_identifiers: ids.to_vec(),
            ..Default::default()
        };
        if let Some(s) = stamp {
            props.user_properties.push((STAMP.into(), s.encode()));
        }
        props.user_properties.push(("k".into(), "v".into()));
        Delivery {
            dup: false,
            qos,
            retain,
            topic: Bytes::from_static(b"a/b"),
            pkid,
            payload: Bytes::from_static(b"x"),
            properties: Some(props),
        }
    }

    fn from(origin: &str, retained: bool) -> Option<Stamp> {
        Some(Stamp {
            retained,
            origin: origin.into(),
        })
    }

    #[test]
    fn subscription_options_are_applied_by_the_subscription_a_delivery_names() {
        let mut subs = Subscriptions::default();
        let plain = subs.add(
            &filter("a/#", false, false, RetainHandling::OnEverySubscribe),
            Some(7),
        );
        let local = subs.add(&filter("a/+", true, true, RetainHandling::Never), None);
        let d = |ids: &[usize], stamp, retain| delivery(1, QoS::AtLeastOnce, ids, stamp, retain);
        let ok = |r: Result<Ready, Skipped>| r.expect("delivered").publish;

        // The client's identifier replaces Sluice's; the stamp never reaches the client.
        let p = ok(prepare(
            d(&[plain], from("me", false), false),
            &subs,
            "me",
            0,
        ));
        let props = p.properties.unwrap();
        assert_eq!(props.subscription_identifiers, vec![7]);
        assert_eq!(
            props.user_properties,
            vec![("k".to_string(), "v".to_string())]
        );
        // No local: the client's own publish is skipped on that subscription only.
        assert_eq!(
            prepare(d(&[local], from("me", false), false), &subs, "me", 0).err(),
            Some(Skipped::NoLocal)
        );
        assert!(prepare(d(&[local], from("other", false), false), &subs, "me", 0).is_ok());
        assert!(prepare(d(&[local, plain], from("me", false), false), &subs, "me", 0).is_ok());
        // Retain as published, on a live delivery of a retained publish.
        assert!(ok(prepare(d(&[local], from("x", true), false), &subs, "me", 0)).retain);
        assert!(!ok(prepare(d(&[plain], from("x", true), false), &subs, "me", 0)).retain);
        // Retain handling: a retained flag from rumqttd is a message sent at subscribe.
        assert_eq!(
            prepare(d(&[local], None, true), &subs, "me", 0).err(),
            Some(Skipped::RetainHandling)
        );
        assert!(ok(prepare(d(&[plain], None, true), &subs, "me", 0)).retain);
        // Sent only for a new subscription (retain handling 1).
        let again = filter("a/#", false, false, RetainHandling::OnNewSubscribe);
        assert_eq!(
            subs.add(&again, None),
            plain,
            "the same filter keeps its identifier"
        );
        assert_eq!(
            prepare(d(&[plain], None, true), &subs, "me", 0).err(),
            Some(Skipped::RetainHandling)
        );
        // After UNSUBSCRIBE, what rumqttd still had on its way is not delivered.
        assert!(subs.remove("a/+"));
        assert_eq!(
            prepare(d(&[local], None, false), &subs, "me", 0).err(),
            Some(Skipped::Unsubscribed)
        );
        assert!(!subs.any_no_local());
    }

    fn out<'a>(to_device: &'a mut BytesMut, to_broker: &'a mut BytesMut) -> Out<'a> {
        Out {
            to_device,
            to_broker,
        }
    }

    fn packets(bytes: &BytesMut) -> Vec<(u8, u16)> {
        let mut buf = bytes.clone();
        let mut seen = Vec::new();
        while let Some(f) = wire::next_frame(&mut buf, usize::MAX).unwrap() {
            let pkid = match f.packet_type() {
                wire::PUBLISH => wire::read_delivery(&f).unwrap().pkid,
                _ => f.packet_id().unwrap(),
            };
            seen.push((f.packet_type(), pkid));
        }
        seen
    }

    fn ack(kind: u8, pkid: u16) -> wire::Frame {
        let [hi, lo] = pkid.to_be_bytes();
        let mut buf = BytesMut::from(&[kind << 4, 2, hi, lo][..]);
        wire::next_frame(&mut buf, 16).unwrap().unwrap()
    }

    fn ready(pkid: u16, qos: QoS, payload: usize, expires_ms: Option<u64>) -> Ready {
        let mut publish = delivery(pkid, qos, &[], None, false);
        publish.payload = Bytes::from(vec![b'x'; payload]);
        Ready {
            publish,
            expires_ms,
        }
    }

    #[test]
    fn the_receive_maximum_holds_deliveries_until_the_client_acknowledges() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut outbox = Outbox::new(2, None, 1 << 20, &mut Subscriptions::default());
        for pkid in 1..=3 {
            outbox
                .push(
                    ready(pkid, QoS::AtLeastOnce, 1, None),
                    0,
                    &mut out(&mut dev, &mut brk),
                )
                .unwrap();
        }
        outbox
            .push(
                ready(0, QoS::AtMostOnce, 1, None),
                0,
                &mut out(&mut dev, &mut brk),
            )
            .unwrap();
        assert_eq!(packets(&dev), [(wire::PUBLISH, 1), (wire::PUBLISH, 2)]);
        assert!(outbox.held_bytes() > 0);
        dev.clear();
        outbox
            .client_ack(&ack(wire::PUBACK, 1), 0, &mut out(&mut dev, &mut brk))
            .unwrap();
        // The QoS 0 one waits behind it, in order.
        assert_eq!(packets(&dev), [(wire::PUBLISH, 3), (wire::PUBLISH, 0)]);
        assert_eq!(packets(&brk), [(wire::PUBACK, 1)]);
        assert_eq!(outbox.held_bytes(), 0);
    }

    #[test]
    fn what_the_client_never_gets_is_acknowledged_to_rumqttd_in_turn() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut outbox = Outbox::new(10, Some(100), 1 << 20, &mut Subscriptions::default());
        let mut o = out(&mut dev, &mut brk);
        outbox
            .push(ready(1, QoS::AtLeastOnce, 1, None), 0, &mut o)
            .unwrap();
        // Too large, then expired: Sluice's PUBACKs wait for the client's for packet 1.
        outbox
            .push(ready(2, QoS::AtLeastOnce, 500, None), 0, &mut o)
            .unwrap();
        outbox
            .push(ready(3, QoS::AtLeastOnce, 1, Some(5)), 10, &mut o)
            .unwrap();
        outbox.skip(Qos::AtLeastOnce, 4, Skipped::NoLocal, &mut o);
        assert_eq!(packets(o.to_device), [(wire::PUBLISH, 1)]);
        assert!(
            o.to_broker.is_empty(),
            "nothing overtakes the client's PUBACK"
        );
        outbox
            .client_ack(&ack(wire::PUBACK, 1), 10, &mut o)
            .unwrap();
        assert_eq!(
            packets(o.to_broker),
            [
                (wire::PUBACK, 1),
                (wire::PUBACK, 2),
                (wire::PUBACK, 3),
                (wire::PUBACK, 4)
            ]
        );
    }

    #[test]
    fn a_skipped_qos2_delivery_is_received_and_completed_for_the_client_in_turn() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut outbox = Outbox::new(10, None, 1 << 20, &mut Subscriptions::default());
        let mut o = out(&mut dev, &mut brk);
        outbox
            .push(ready(1, QoS::ExactlyOnce, 1, None), 0, &mut o)
            .unwrap();
        outbox.skip(Qos::ExactlyOnce, 2, Skipped::NoLocal, &mut o);
        outbox.client_ack(&ack(wire::PUBREC, 1), 0, &mut o).unwrap();
        assert_eq!(packets(o.to_broker), [(wire::PUBREC, 1), (wire::PUBREC, 2)]);
        o.to_broker.clear();
        // rumqttd releases both; Sluice's PUBCOMP waits for the client's.
        assert!(!outbox.released(1, o.to_broker), "the client's to answer");
        assert!(outbox.released(2, o.to_broker));
        assert!(o.to_broker.is_empty());
        outbox
            .client_ack(&ack(wire::PUBCOMP, 1), 0, &mut o)
            .unwrap();
        assert_eq!(
            packets(o.to_broker),
            [(wire::PUBCOMP, 1), (wire::PUBCOMP, 2)]
        );
    }

    #[test]
    fn a_held_delivery_is_sent_with_the_expiry_it_has_left() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut outbox = Outbox::new(1, None, 1 << 20, &mut Subscriptions::default());
        let mut o = out(&mut dev, &mut brk);
        outbox
            .push(ready(1, QoS::AtLeastOnce, 1, None), 0, &mut o)
            .unwrap();
        let mut later = ready(2, QoS::AtLeastOnce, 1, Some(60_000));
        later
            .publish
            .properties
            .as_mut()
            .unwrap()
            .message_expiry_interval = Some(60);
        outbox.push(later, 0, &mut o).unwrap();
        o.to_device.clear();
        outbox
            .client_ack(&ack(wire::PUBACK, 1), 2_500, &mut o)
            .unwrap();
        let mut buf = o.to_device.clone();
        let f = wire::next_frame(&mut buf, usize::MAX).unwrap().unwrap();
        let p = wire::read_delivery(&f).unwrap().properties.unwrap();
        assert_eq!(p.message_expiry_interval, Some(58));
    }

    #[test]
    fn pubcomp_order_survives_refusals_and_reconnects() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut subs = Subscriptions::default();
        let mut outbox = Outbox::new(10, None, 1 << 20, &mut subs);
        let mut o = out(&mut dev, &mut brk);
        // Delivery 1 the client receives; 2 it never gets; 3 it refuses (PUBREC 0x80), after
        // which its PUBREL is Sluice's to answer too.
        outbox
            .push(ready(1, QoS::ExactlyOnce, 1, None), 0, &mut o)
            .unwrap();
        outbox.skip(Qos::ExactlyOnce, 2, Skipped::NoLocal, &mut o);
        outbox
            .push(ready(3, QoS::ExactlyOnce, 1, None), 0, &mut o)
            .unwrap();
        outbox.client_ack(&ack(wire::PUBREC, 1), 0, &mut o).unwrap();
        let mut refusal = BytesMut::from(&[wire::PUBREC << 4, 3, 0, 3, 0x80][..]);
        let refusal = wire::next_frame(&mut refusal, 16).unwrap().unwrap();
        outbox.client_ack(&refusal, 0, &mut o).unwrap();
        assert_eq!(
            packets(o.to_broker),
            [(wire::PUBREC, 1), (wire::PUBREC, 2), (wire::PUBREC, 3)]
        );
        o.to_broker.clear();
        assert!(!outbox.released(1, o.to_broker), "the client's");
        assert!(outbox.released(2, o.to_broker));
        assert!(outbox.released(3, o.to_broker));
        assert!(o.to_broker.is_empty(), "behind the client's PUBCOMP for 1");
        // The connection ends first: rumqttd sends all three PUBRELs again, and the next
        // connection answers them in the same order.
        outbox.park(&mut subs);
        let mut next = Outbox::new(10, None, 1 << 20, &mut subs);
        assert!(!next.released(1, o.to_broker));
        assert!(next.released(2, o.to_broker));
        assert!(next.released(3, o.to_broker));
        // A PUBCOMP for nothing rumqttd asked for is dropped, not relayed.
        next.client_ack(&ack(wire::PUBCOMP, 7), 0, &mut o).unwrap();
        assert!(o.to_broker.is_empty());
        next.client_ack(&ack(wire::PUBCOMP, 1), 0, &mut o).unwrap();
        assert_eq!(
            packets(o.to_broker),
            [(wire::PUBCOMP, 1), (wire::PUBCOMP, 2), (wire::PUBCOMP, 3)]
        );
    }

    #[test]
    fn reused_packet_ids_are_matched_by_turn() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut outbox = Outbox::new(10, None, 1 << 20, &mut Subscriptions::default());
        let mut o = out(&mut dev, &mut brk);
        // QoS 2 delivery 1 is received by the client; rumqttd reuses id 1 for a delivery the
        // client never gets before the first one is complete.
        outbox
            .push(ready(1, QoS::ExactlyOnce, 1, None), 0, &mut o)
            .unwrap();
        outbox.client_ack(&ack(wire::PUBREC, 1), 0, &mut o).unwrap();
        outbox.skip(Qos::ExactlyOnce, 1, Skipped::NoLocal, &mut o);
        assert!(!outbox.released(1, o.to_broker), "the first: the client's");
        assert!(outbox.released(1, o.to_broker), "the second: Sluice's");
        o.to_broker.clear();
        outbox
            .client_ack(&ack(wire::PUBCOMP, 1), 0, &mut o)
            .unwrap();
        assert_eq!(
            packets(o.to_broker),
            [(wire::PUBCOMP, 1), (wire::PUBCOMP, 1)]
        );
    }

    #[test]
    fn qos0_deliveries_past_the_cap_are_dropped_and_unnamed_ones_matched_by_topic() {
        let (mut dev, mut brk) = (BytesMut::new(), BytesMut::new());
        let mut subs = Subscriptions::default();
        let mut outbox = Outbox::new(1, None, 4, &mut subs);
        let mut o = out(&mut dev, &mut brk);
        outbox
            .push(ready(1, QoS::AtLeastOnce, 8, None), 0, &mut o)
            .unwrap();
        outbox
            .push(ready(2, QoS::AtLeastOnce, 8, None), 0, &mut o)
            .unwrap();
        outbox
            .push(ready(0, QoS::AtMostOnce, 8, None), 0, &mut o)
            .unwrap();
        assert_eq!(packets(o.to_device), [(wire::PUBLISH, 1)]);
        assert_eq!(
            outbox.held_bytes(),
            HELD_OVERHEAD + 3 + 8,
            "the QoS 1 one waits, the QoS 0 one is dropped"
        );
        // A delivery rumqttd sends before Sluice's identifiers are restored names none: the
        // subscriptions matching its topic decide.
        subs.add(&filter("a/+", true, false, RetainHandling::Never), Some(5));
        let unnamed = delivery(3, QoS::AtLeastOnce, &[], from("me", false), false);
        assert_eq!(
            prepare(unnamed.clone(), &subs, "me", 0).err(),
            Some(Skipped::NoLocal)
        );
        let theirs = prepare(unnamed, &subs, "you", 0)
            .expect("delivered")
            .publish;
        assert_eq!(theirs.properties.unwrap().subscription_identifiers, vec![5]);
    }

    #[test]
    fn stamps_round_trip_and_only_what_subscribers_need_is_stamped() {
        let s = Stamp {
            retained: true,
            origin: "dev 1".into(),
        };
        assert_eq!(Stamp::parse(&s.encode()), Some(s));
        let mut publish = wire::Publish {
            topic: "t".into(),
            qos: Qos::AtLeastOnce,
            dup: false,
            retain: false,
            pkid: 1,
            payload: Bytes::new(),
            content_type: None,
            utf8: false,
            topic_alias: None,
            message_expiry: Some(5),
            user_properties: Vec::new(),
        };
        assert_eq!(Stamp::needed(&publish, false, "d"), None);
        assert!(Stamp::needed(&publish, true, "d").is_some());
        publish.retain = true;
        assert_eq!(Stamp::needed(&publish, false, "d"), from("d", true));
    }
}
