//! `writer.coordination = "kafka"`: Kafka's consumer-group protocol deals the writers' shares
//! instead of the lease. A consumer of its own joins the group `writer.group_id`, takes no
//! records, and hands each assignment to the writer, which reads its share from the offsets
//! in the database as it does with the lease.

use std::sync::Mutex;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{oneshot, watch};

use crate::lease::{publish, Partition, Share};
use crate::settings::WriterSettings;

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("kafka group member: {0}")]
    Kafka(#[from] KafkaError),
    #[error("the Kafka group member's thread ended: {0}")]
    MemberEnded(String),
}

/// The group member, made with the writer so that a setting librdkafka refuses stops the
/// start; it joins once `follow` subscribes it.
pub struct KafkaGroup {
    member: BaseConsumer<GroupMember>,
    session: Duration,
    /// For the logs: this writer's name and its group.
    name: String,
    group: String,
}

impl KafkaGroup {
    pub fn new(
        settings: &WriterSettings,
        mut config: ClientConfig,
        name: &str,
        out: Share,
    ) -> Result<KafkaGroup, KafkaError> {
        let session = settings.lease_ms;
        config
            .set("group.id", &settings.group_id)
            .set("session.timeout.ms", session.to_string())
            // Eager rebalances stop every member's writing until each has heard of them at
            // its next heartbeat: hear every second, whatever the session (at least 6 s).
            .set("heartbeat.interval.ms", "1000")
            // Partitions added to a topic are dealt once the member's metadata shows them.
            .set(
                "topic.metadata.refresh.interval.ms",
                (session / 2).to_string(),
            )
            .set("partition.assignment.strategy", "roundrobin")
            .set("enable.auto.commit", "false")
            .set("client.id", format!("sluice-writer:{name}"))
            // A static member sends no LeaveGroup when it stops, and writers sharing one
            // configuration file would fence each other.
            .remove("group.instance.id");
        let context = GroupMember {
            out,
            failed: Mutex::new(None),
        };
        Ok(KafkaGroup {
            member: config.create_with_context(context)?,
            session: Duration::from_millis(session),
            name: name.to_owned(),
            group: settings.group_id.clone(),
        })
    }

    /// Follows the group's assignments until `stop`, then leaves the group so the others
    /// are dealt this writer's share at once instead of after the session. Ends early,
    /// ending the writer, when the member cannot go on.
    pub async fn follow(self, topics: Vec<String>, stop: watch::Receiver<bool>) {
        tracing::info!(member = %self.name, group = %self.group, "writer joining its Kafka group");
        if let Err(e) = self.serve(&topics, stop).await {
            tracing::error!(error = %e, "writer's Kafka group member ended");
        }
    }

    async fn serve(
        self,
        topics: &[String],
        mut stop: watch::Receiver<bool>,
    ) -> Result<(), GroupError> {
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        self.member.subscribe(&topics)?;
        let (done, mut ended) = oneshot::channel();
        let (member, stopping) = (self.member, stop.clone());
        // A thread of its own, not the runtime's blocking pool: closing a consumer whose
        // Kafka is away can take a socket timeout, and a runtime waits for its pool.
        std::thread::Builder::new()
            .name("sluice-kafka-group".into())
            .spawn(move || {
                let outcome = poll(&member, &stopping);
                // Dropping the consumer closes it: its share is revoked and it leaves.
                drop(member);
                let _ = done.send(outcome);
            })
            .map_err(|e| GroupError::MemberEnded(format!("no thread: {e}")))?;
        tokio::select! {
            biased;
            _ = stop.wait_for(|s| *s) => {}
            outcome = &mut ended => return Err(match outcome {
                Ok(Err(e)) => e,
                Ok(Ok(())) => GroupError::MemberEnded("it stopped".into()),
                Err(_) => GroupError::MemberEnded("its thread panicked".into()),
            }),
        }
        // Bounded: a Kafka that does not answer costs the others the session, not this
        // process its stop.
        let within = (self.session / 2).min(Duration::from_secs(10));
        match tokio::time::timeout(within, ended).await {
            Ok(_) => tracing::info!("writer left its Kafka group"),
            Err(_) => tracing::warn!(
                "writer did not leave its Kafka group in time; the others wait out its session"
            ),
        }
        Ok(())
    }
}

/// Serves the member's rebalances until `stop`; Err on a fatal Kafka error or an
/// assignment that could not be taken.
fn poll(
    member: &BaseConsumer<GroupMember>,
    stop: &watch::Receiver<bool>,
) -> Result<(), GroupError> {
    let mut said: Option<String> = None;
    // A writer that ended without a stop drops the sender: leave then too.
    while !*stop.borrow() && stop.has_changed().is_ok() {
        if let Some(why) = member
            .context()
            .failed
            .lock()
            .ok()
            .and_then(|mut f| f.take())
        {
            return Err(GroupError::MemberEnded(why));
        }
        // Records are dropped: the few fetched between an assign and its pause.
        if let Some(Err(e)) = member.poll(Duration::from_millis(100)) {
            if let Some((_, why)) = member.client().fatal_error() {
                publish(&member.context().out, Vec::new(), None);
                return Err(GroupError::MemberEnded(format!("fatal kafka error: {why}")));
            }
            // Said once per spell, not every poll.
            let e = e.to_string();
            if said.as_ref() != Some(&e) {
                tracing::warn!(error = %e, "kafka group member");
                said = Some(e);
            }
        }
    }
    Ok(())
}

/// Each assignment goes to the writer as its share; the member itself assigns it at the
/// partitions' end and pauses it, since the writer fetches it from the database's offsets.
struct GroupMember {
    out: Share,
    /// Why the member cannot go on, for `poll` to end it.
    failed: Mutex<Option<String>>,
}

impl ClientContext for GroupMember {}

impl ConsumerContext for GroupMember {
    fn rebalance(
        &self,
        member: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        if err == RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS {
            let mut mine: Vec<Partition> = tpl
                .elements()
                .iter()
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            mine.sort();
            match tpl
                .set_all_offsets(Offset::End)
                .and_then(|()| member.assign(tpl))
            {
                Ok(()) => {
                    if let Err(e) = member.pause(tpl) {
                        tracing::warn!(error = %e, "kafka group member's partitions not paused; what it fetches is dropped");
                    }
                    publish(&self.out, mine, None);
                }
                // The group takes this writer for the owner: end it, so the process is
                // restarted and the group deals again, rather than leave the share unwritten.
                Err(e) => {
                    publish(&self.out, Vec::new(), None);
                    if let Ok(mut failed) = self.failed.lock() {
                        *failed = Some(format!("assignment not taken: {e}"));
                    }
                }
            }
        } else {
            // Revoked, also when the assignment is lost with the session: the writer stops
            // writing it.
            if let Err(e) = member.unassign() {
                tracing::warn!(error = %e, "kafka group member's partitions not unassigned");
            }
            publish(&self.out, Vec::new(), None);
        }
    }
}
