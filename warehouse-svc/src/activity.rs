//! Activity: a consumer group on the domain-event log
//! (`warehouse.activity_group`) stores every domain event as a record of
//! source `domain.<service>` (`users-svc` → `domain.users`), so what
//! happens on the platform can be queried, aggregated and tailed like any
//! other source. The record id is the event's id, so a redelivery stores
//! nothing new.

use std::sync::Arc;

use munity_bus::{ConsumerLoop, DomainEvent, EventLog};
use munity_platform::shutdown::ShutdownToken;
use munity_proto::warehouse::v1::{Record, record::Payload};
use munity_store::now_millis;

use crate::{
    domain::{MAX_ATTRIBUTE_VALUE_BYTES, RESERVED_SOURCE_PREFIX, timestamp_of},
    ingest::Ingestor,
    store::Batch,
};

/// The source an event of `service` is stored in.
pub fn source_of(service: &str) -> String {
    let service = service.to_ascii_lowercase();
    let name: String = service
        .strip_suffix("-svc")
        .unwrap_or(&service)
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
        .take(100)
        .collect();
    let name = if name.is_empty() {
        "unknown".to_owned()
    } else {
        name
    };
    format!("{RESERVED_SOURCE_PREFIX}{name}")
}

/// The record of a domain event.
pub fn record_of(event: &DomainEvent) -> Record {
    let time = if event.occurred_at_ms > 0 {
        event.occurred_at_ms
    } else {
        now_millis()
    };
    let mut attributes = std::collections::HashMap::new();
    attributes.insert("type".to_owned(), truncated(&event.r#type));
    attributes.insert("aggregate_id".to_owned(), truncated(&event.aggregate_id));
    if !event.subject_ids.is_empty() {
        attributes.insert(
            "subject_ids".to_owned(),
            truncated(&event.subject_ids.join(",")),
        );
    }
    Record {
        id: event.id.clone(),
        source: source_of(&event.source),
        time: Some(timestamp_of(time)),
        attributes,
        payload: Some(Payload::Data(event.payload.clone())),
        content_type: truncated_to(
            &format!("application/x-protobuf; proto={}", event.r#type),
            128,
        ),
        stored_at: None,
    }
}

fn truncated(text: &str) -> String {
    truncated_to(text, MAX_ATTRIBUTE_VALUE_BYTES)
}

fn truncated_to(text: &str, bytes: usize) -> String {
    let mut end = text.len().min(bytes);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text[..end].to_owned()
}

/// Stores what the log brings until `shutdown`.
pub async fn follow(
    log: Arc<dyn EventLog>,
    ingestor: Ingestor,
    group: String,
    shutdown: ShutdownToken,
) {
    // A read of the log is stored in one write.
    ConsumerLoop::member(log, group, "warehouse-svc")
        .run_batches(shutdown, move |events| {
            let ingestor = ingestor.clone();
            async move {
                let mut batch = Batch {
                    stored_at: now_millis(),
                    records: Vec::with_capacity(events.len()),
                };
                for event in &events {
                    match ingestor.prepare(vec![record_of(event)]) {
                        Ok(prepared) => batch.records.extend(prepared.records),
                        // An event no record can hold (an id of another
                        // shape, an oversized payload) is logged and
                        // skipped: retrying cannot fix it.
                        Err(error) => {
                            tracing::warn!(event = %event.id, %error, "domain event not stored as activity")
                        }
                    }
                }
                if !batch.records.is_empty() {
                    ingestor
                        .store_all(batch)
                        .await
                        .map_err(|e| anyhow::anyhow!("{e}"))?;
                }
                Ok(())
            }
        })
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_map_to_domain_sources() {
        assert_eq!(source_of("users-svc"), "domain.users");
        assert_eq!(source_of("Events-Svc"), "domain.events");
        assert_eq!(source_of(""), "domain.unknown");
        assert!(crate::domain::valid_source(&source_of("weird name!")));
    }
}
