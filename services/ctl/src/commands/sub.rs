//! `kakehashi sub …`.

use crate::cli::{Conn, SubCommand};
use crate::clients;
use crate::error::CtlError;
use crate::output::emit;
use kakehashi_proto::v1::*;
use serde_json::json;
use tokio_stream::StreamExt;

fn to_json(s: &Subscription) -> serde_json::Value {
    json!({"department": s.department, "name": s.name, "type_pattern": s.type_pattern,
           "ack_wait_secs": s.ack_wait.map(|d| d.seconds), "max_deliveries": s.max_deliveries, "from_start": s.deliver_all})
}

/// Runs a sub subcommand.
pub async fn run(conn: &Conn, json_mode: bool, cmd: SubCommand) -> Result<(), CtlError> {
    match cmd {
        SubCommand::Create { department, name, pattern, from_start, content_type } => {
            let mut c = clients::subscriptions(conn).await?;
            let s = c
                .create_subscription(CreateSubscriptionRequest {
                    subscription: Some(Subscription {
                        department,
                        name,
                        type_pattern: pattern,
                        deliver_all: from_start,
                        content_type,
                        ..Default::default()
                    }),
                })
                .await?
                .into_inner();
            emit(json_mode, to_json(&s), || {
                format!("subscription {}/{} on {} created", s.department, s.name, s.type_pattern)
            });
        }
        SubCommand::List { department } => {
            let mut c = clients::subscriptions(conn).await?;
            let r = c
                .list_subscriptions(ListSubscriptionsRequest { department: department.unwrap_or_default() })
                .await?
                .into_inner();
            emit(json_mode, json!(r.subscriptions.iter().map(to_json).collect::<Vec<_>>()), || {
                r.subscriptions
                    .iter()
                    .map(|s| {
                        format!(
                            "{}/{}\t{}\tmax deliveries {}",
                            s.department, s.name, s.type_pattern, s.max_deliveries
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            });
        }
        SubCommand::Delete { department, name } => {
            let mut c = clients::subscriptions(conn).await?;
            c.delete_subscription(DeleteSubscriptionRequest {
                department: department.clone(),
                name: name.clone(),
            })
            .await?;
            emit(json_mode, json!({"deleted": format!("{department}/{name}")}), || {
                format!("subscription {department}/{name} deleted")
            });
        }
        SubCommand::Tail { department, name, count } => {
            tail(conn, json_mode, &department, &name, count).await?
        }
    }
    Ok(())
}

/// Prints deliveries of a subscription, acking each after printing.
pub async fn tail(
    conn: &Conn,
    json_mode: bool,
    department: &str,
    name: &str,
    count: Option<u64>,
) -> Result<(), CtlError> {
    let mut c = clients::delivery(conn).await?;
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let open = SubscribeRequest {
        request: Some(subscribe_request::Request::Open(OpenSubscription {
            subscription: name.to_string(),
            department: department.to_string(),
            max_in_flight: 32,
        })),
    };
    tx.send(open).await.map_err(|_| CtlError::Usage("subscribe stream closed".into()))?;
    let mut stream = c.subscribe(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let mut seen = 0u64;
    while let Some(d) = stream.next().await {
        let d = d?;
        if let Some(e) = &d.event {
            let data: serde_json::Value = serde_json::from_slice(&e.data).unwrap_or(serde_json::Value::Null);
            emit(
                json_mode,
                json!({"delivery_id": d.delivery_id, "attempt": d.attempt, "stream_sequence": d.stream_sequence,
                       "id": e.id, "source": e.source, "type": e.r#type, "subject": e.subject, "data": data}),
                || {
                    format!(
                        "#{} {} from {} (attempt {}, id {})\n{}",
                        d.stream_sequence,
                        e.r#type,
                        e.source,
                        d.attempt,
                        e.id,
                        serde_json::to_string_pretty(&data).unwrap_or_default()
                    )
                },
            );
        }
        let ack = SubscribeRequest {
            request: Some(subscribe_request::Request::Ack(AckDeliveries {
                delivery_ids: vec![d.delivery_id],
            })),
        };
        if tx.send(ack).await.is_err() {
            break;
        }
        seen += 1;
        if count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
