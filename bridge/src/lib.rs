//! Sluice: an MQTT ingestion gateway. Devices publish over MQTT; the `ingress` relays them
//! to the embedded rumqttd and, through `mapping` and `decode`, to Kafka (`produce`),
//! acknowledging only what Kafka has; the `writer` puts each reading in the database once.

pub mod ack;
pub mod anomaly;
pub mod api;
pub mod budget;
pub mod dashboard;
pub mod db;
pub mod decode;
pub mod health;
pub mod http;
pub mod ingress;
pub mod kafka_group;
pub mod lease;
pub mod lifecycle;
pub mod mapping;
pub mod produce;
pub mod record;
pub mod security;
pub mod sessions;
pub mod settings;
pub mod wire;
pub mod writer;
