//! JetStream publish acknowledgements read off a subscription of one's own: a publisher that
//! sends many messages with reply subjects under one inbox reads their acknowledgements there,
//! without the request, inbox, oneshot channel and timers `jetstream::Context::send_publish`
//! makes for every message.

/// The stream sequence `msg`, a reply to a JetStream publish, says the message is stored at
/// (for a duplicate, that of the copy stored first); none when it was not stored: a status (a
/// 503 says no stream listens), an `error`, or no `seq`.
pub fn stored_seq(msg: &async_nats::Message) -> Option<u64> {
    #[derive(serde::Deserialize)]
    struct PubAck {
        #[serde(default)]
        error: Option<serde::de::IgnoredAny>,
        #[serde(default)]
        seq: Option<u64>,
    }
    if msg.status.is_some() {
        return None;
    }
    serde_json::from_slice::<PubAck>(&msg.payload).ok().filter(|a| a.error.is_none()).and_then(|a| a.seq)
}

/// The number `n` of a reply subject `<inbox>.<n>`: which of the publisher's messages a reply
/// answers.
pub fn reply_number(msg: &async_nats::Message) -> Option<u64> {
    msg.subject.as_str().rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(payload: &'static str, status: Option<async_nats::StatusCode>) -> async_nats::Message {
        async_nats::Message {
            subject: "_INBOX.x.1".into(),
            reply: None,
            payload: payload.into(),
            headers: None,
            status,
            description: None,
            length: payload.len(),
        }
    }

    #[test]
    fn only_an_acknowledgement_with_a_sequence_and_no_error_or_status_says_stored() {
        assert_eq!(stored_seq(&reply(r#"{"stream":"KH_EVENTS","seq":42}"#, None)), Some(42));
        assert_eq!(stored_seq(&reply(r#"{"stream":"KH_EVENTS","seq":7,"duplicate":true}"#, None)), Some(7));
        let refused = r#"{"error":{"code":503,"err_code":10077,"description":"resource limits exceeded"}}"#;
        assert_eq!(stored_seq(&reply(refused, None)), None);
        assert_eq!(stored_seq(&reply("", Some(async_nats::StatusCode::NO_RESPONDERS))), None);
        assert_eq!(stored_seq(&reply("not json", None)), None);
        assert_eq!(stored_seq(&reply(r#"{"stream":"KH_EVENTS"}"#, None)), None);
        assert_eq!(reply_number(&reply("", None)), Some(1));
    }
}
