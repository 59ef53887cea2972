//! `kakehashi publish`.

use crate::cli::{Conn, PublishArgs};
use crate::clients;
use crate::error::{read, CtlError};
use crate::output::emit;
use kakehashi_proto::v1::Event;
use serde_json::json;

/// Publishes one event through the adapter.
pub async fn run(conn: &Conn, json_mode: bool, a: PublishArgs) -> Result<(), CtlError> {
    let data = read(&a.file)?.into_bytes();
    let mut c = clients::publisher(conn).await?;
    let event =
        Event { source: a.source, r#type: a.event_type, subject: a.subject, data, ..Default::default() };
    let ack = c.publish(event).await?.into_inner();
    emit(
        json_mode,
        json!({"event_id": ack.event_id, "stream": ack.stream, "sequence": ack.sequence, "duplicate": ack.duplicate}),
        || {
            format!(
                "published {} as {} #{}{}",
                ack.event_id,
                ack.stream,
                ack.sequence,
                if ack.duplicate { " (duplicate: already accepted)" } else { "" }
            )
        },
    );
    Ok(())
}
