//! `Publisher/PublishCloudEvent`: a CloudEvent in the JSON or the protobuf format, mapped onto
//! the `Event` that `Publish` takes (`kakehashi_proto::cloudevents`). Everything after the
//! mapping — identity (the authenticated department must be the `source`), envelope, payload
//! and type checks — is `Publish`'s own.

use crate::publisher::Refusal;
use kakehashi_proto::cloudevents::{self, CloudEventError};
use kakehashi_proto::v1::{publish_cloud_event_request, Event, PublishCloudEventRequest};
use tonic::Code;

/// Stable reason of a CloudEvent that cannot be mapped onto an `Event`.
pub const REASON: &str = "invalid_cloudevent";

/// The `Event` a `PublishCloudEvent` request carries, or the refusal naming the attribute. A
/// JSON-format document may nest at most `max_json_depth` arrays and objects deep.
pub fn to_event(request: PublishCloudEventRequest, max_json_depth: usize) -> Result<Event, Refusal> {
    let mapped = match request.event {
        Some(publish_cloud_event_request::Event::Json(doc)) => {
            cloudevents::json::from_slice_within(&doc, max_json_depth)
        }
        Some(publish_cloud_event_request::Event::Protobuf(ce)) => cloudevents::protobuf::from_slice(&ce),
        None => {
            return Err(Refusal {
                code: Code::InvalidArgument,
                reason: REASON,
                message: "no CloudEvent: set `json` (application/cloudevents+json) or `protobuf` (io.cloudevents.v1.CloudEvent)".into(),
            })
        }
    };
    mapped.map_err(|e| refusal(&e))
}

fn refusal(e: &CloudEventError) -> Refusal {
    Refusal { code: Code::InvalidArgument, reason: REASON, message: format!("CloudEvent refused: {e}") }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kakehashi_proto::cloudevents_v1::CloudEvent;

    fn event() -> Event {
        Event {
            id: "0193a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            source: "city-shibuya".into(),
            r#type: "health.vaccination.recorded".into(),
            subject: "resident-1".into(),
            time: Some(prost_types::Timestamp { seconds: 1_764_633_600, nanos: 0 }),
            data_content_type: "application/json".into(),
            data: br#"{"dose":1}"#.to_vec(),
            schema: String::new(),
            schema_version: 2,
            extensions: [(
                "traceparent".to_string(),
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string(),
            )]
            .into_iter()
            .collect(),
        }
    }

    #[test]
    fn both_forms_map_back_to_the_same_event() {
        let e = event();
        let json = cloudevents::json::to_vec(&e).expect("writable");
        let req = PublishCloudEventRequest { event: Some(publish_cloud_event_request::Event::Json(json)) };
        assert_eq!(to_event(req, 64), Ok(e.clone()));
        let proto = cloudevents::protobuf::to_vec(&e);
        let req =
            PublishCloudEventRequest { event: Some(publish_cloud_event_request::Event::Protobuf(proto)) };
        assert_eq!(to_event(req, 64), Ok(e));
    }

    #[test]
    fn refusals_are_invalid_argument_and_name_the_attribute() {
        let r = to_event(PublishCloudEventRequest { event: None }, 64).expect_err("empty");
        assert_eq!((r.code, r.reason), (Code::InvalidArgument, REASON));
        let doc = br#"{"specversion":"1.0","source":"city-shibuya","id":"1","data":{},"data_base64":"e30="}"#;
        let r = to_event(
            PublishCloudEventRequest { event: Some(publish_cloud_event_request::Event::Json(doc.to_vec())) },
            64,
        )
        .expect_err("no type");
        assert_eq!(r.code, Code::InvalidArgument);
        assert!(r.message.contains("`type`"), "{}", r.message);
        let ce = CloudEvent {
            id: "1".into(),
            source: "city-shibuya".into(),
            spec_version: "0.3".into(),
            r#type: "a.b".into(),
            ..Default::default()
        };
        let r = to_event(
            PublishCloudEventRequest {
                event: Some(publish_cloud_event_request::Event::Protobuf(prost::Message::encode_to_vec(&ce))),
            },
            64,
        )
        .expect_err("0.3");
        assert!(r.message.contains("specversion"), "{}", r.message);
    }

    #[test]
    fn a_json_document_past_the_configured_depth_is_refused_naming_the_limit() {
        let doc =
            br#"{"specversion":"1.0","type":"a.b","source":"city-shibuya","id":"1","data":{"k":[[1]]}}"#;
        let json = |doc: &[u8]| PublishCloudEventRequest {
            event: Some(publish_cloud_event_request::Event::Json(doc.to_vec())),
        };
        assert!(to_event(json(doc), 4).is_ok(), "four levels");
        let r = to_event(json(doc), 3).expect_err("four levels under a limit of three");
        assert_eq!((r.code, r.reason), (Code::InvalidArgument, REASON));
        assert!(r.message.contains("deeper than 3 levels (max_json_depth)"), "{}", r.message);
    }
}
