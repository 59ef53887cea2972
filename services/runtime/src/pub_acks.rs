//! JetStream publish acknowledgements read off a subscription of one's own: a publisher that
//! sends many messages with reply subjects under one inbox reads their acknowledgements there,
//! without the request, inbox, oneshot channel and timers `jetstream::Context::send_publish`
//! makes for every message.

/// The stream sequence `msg`, a reply to a JetStream publish, says the message is stored at
/// (for a duplicate, that of the copy stored first); none when it was not stored: a status (a
/// 503 says no stream listens), an `error`, or no `seq`.
pub fn stored_seq(msg: &async_nats::Message) -> Option<u64> {
    acknowledged(msg).ok()
}

/// JetStream's `err_code` for a message over a stream's `max_message_size` ("message size
/// exceeds maximum allowed"): a refusal no retry overcomes.
pub const ERR_MESSAGE_TOO_LARGE: u64 = 10054;

/// JetStream's `err_code` for a message whose `Nats-Msg-Id` the stream leader has staged but not
/// stored ("duplicate message id is in process"): an earlier copy still being stored, or one a
/// leader lost when it stepped down, whose id it may keep until the duplicate window ends.
pub const ERR_ID_IN_PROCESS: u64 = 10158;

/// Why JetStream did not store a published message, as its reply said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{description} (JetStream {})", self.codes())]
pub struct Refusal {
    /// The reply's NATS status (503: no stream listens on the subject), when it carried one.
    pub status: Option<u16>,
    /// The error's HTTP-like `code` (400, 503, …), when it carried an `error`.
    pub code: Option<u16>,
    /// JetStream's own `err_code` (e.g. [`ERR_MESSAGE_TOO_LARGE`]), when given.
    pub err_code: Option<u64>,
    /// What the reply said (or what was wrong with it).
    pub description: String,
}

impl Refusal {
    /// Whether the message is over the stream's `max_message_size`: refused again at every
    /// retry, whatever the retry waits for.
    pub fn is_too_large(&self) -> bool {
        self.err_code == Some(ERR_MESSAGE_TOO_LARGE)
    }

    /// Whether its id is staged by the stream leader, not stored ([`ERR_ID_IN_PROCESS`]).
    pub fn is_id_in_process(&self) -> bool {
        self.err_code == Some(ERR_ID_IN_PROCESS)
    }

    fn codes(&self) -> String {
        let mut parts = Vec::new();
        if let Some(s) = self.status {
            parts.push(format!("status {s}"));
        }
        if let Some(c) = self.code {
            parts.push(format!("code {c}"));
        }
        if let Some(e) = self.err_code {
            parts.push(format!("err_code {e}"));
        }
        if parts.is_empty() {
            "reply".to_string()
        } else {
            parts.join(", ")
        }
    }
}

/// Whether a `jetstream::Context` publish failed because the message is too large (the
/// stream's `max_message_size`, JetStream's [`ERR_MESSAGE_TOO_LARGE`], or the server's
/// `max_payload`): refused again at every retry. [`Refusal::is_too_large`] is the same for a
/// reply read off one's own subscription.
pub fn publish_error_is_too_large(e: &async_nats::jetstream::context::PublishError) -> bool {
    use async_nats::jetstream::{self, context::PublishErrorKind};
    e.kind() == PublishErrorKind::MaxPayloadExceeded
        || std::error::Error::source(e)
            .and_then(|s| s.downcast_ref::<jetstream::Error>())
            .is_some_and(|j| j.error_code().0 == ERR_MESSAGE_TOO_LARGE)
}

/// What `msg`, a reply to a JetStream publish, says: the stream sequence the message is stored
/// at (for a duplicate, that of the copy stored first), or why it is not stored, with
/// JetStream's code and description.
pub fn acknowledged(msg: &async_nats::Message) -> Result<u64, Refusal> {
    #[derive(serde::Deserialize)]
    struct PubAck {
        #[serde(default)]
        error: Option<ApiError>,
        #[serde(default)]
        seq: Option<u64>,
    }
    #[derive(serde::Deserialize)]
    struct ApiError {
        #[serde(default)]
        code: Option<u16>,
        #[serde(default)]
        err_code: Option<u64>,
        #[serde(default)]
        description: Option<String>,
    }
    let refusal = |code, err_code, description: String| Refusal {
        status: msg.status.map(|s| s.as_u16()),
        code,
        err_code,
        description,
    };
    if let Some(status) = msg.status {
        let description = msg.description.clone().unwrap_or_else(|| {
            if status.as_u16() == 503 {
                "no responders".into()
            } else {
                String::new()
            }
        });
        return Err(refusal(None, None, description));
    }
    match serde_json::from_slice::<PubAck>(&msg.payload) {
        Ok(PubAck { error: Some(e), .. }) => {
            Err(refusal(e.code, e.err_code, e.description.unwrap_or_else(|| "refused".into())))
        }
        Ok(PubAck { seq: Some(seq), .. }) => Ok(seq),
        Ok(_) => Err(refusal(None, None, "acknowledgement without a sequence".into())),
        Err(e) => Err(refusal(None, None, format!("unreadable acknowledgement: {e}"))),
    }
}

/// The number `n` of a reply subject `<inbox>.<n>`: which of the publisher's messages a reply
/// answers.
pub fn reply_number(msg: &async_nats::Message) -> Option<u64> {
    msg.subject.as_str().rsplit('.').next()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use async_nats::jetstream::context::{PublishError, PublishErrorKind};

    /// The error `send_publish`'s acknowledgement gives for JetStream's reply `error`.
    fn refused(error: &str) -> PublishError {
        let e: async_nats::jetstream::Error = serde_json::from_str(error).expect("a JetStream error");
        PublishError::with_source(PublishErrorKind::Other, e)
    }

    #[test]
    fn only_a_size_refusal_is_too_large_and_the_log_has_jetstreams_code_and_description() {
        let size =
            refused(r#"{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}"#);
        assert!(publish_error_is_too_large(&size));
        let text = size.to_string();
        assert!(text.contains("message size exceeds maximum allowed") && text.contains("10054"), "{text}");
        assert!(publish_error_is_too_large(&PublishError::new(PublishErrorKind::MaxPayloadExceeded)));
        let busy = refused(
            r#"{"code":503,"err_code":10008,"description":"JetStream system temporarily unavailable"}"#,
        );
        assert!(!publish_error_is_too_large(&busy));
        assert!(!publish_error_is_too_large(&PublishError::new(PublishErrorKind::TimedOut)));
        assert!(!publish_error_is_too_large(&PublishError::new(PublishErrorKind::StreamNotFound)));
    }

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

    #[test]
    fn a_refusal_carries_jetstream_s_code_and_description() {
        let too_large =
            r#"{"error":{"code":400,"err_code":10054,"description":"message size exceeds maximum allowed"}}"#;
        let refusal = acknowledged(&reply(too_large, None)).expect_err("refused");
        assert!(refusal.is_too_large());
        assert_eq!((refusal.code, refusal.err_code), (Some(400), Some(10054)));
        let text = refusal.to_string();
        assert!(text.contains("message size exceeds maximum allowed") && text.contains("10054"), "{text}");
        let limits = r#"{"error":{"code":503,"err_code":10077,"description":"resource limits exceeded"}}"#;
        assert!(!acknowledged(&reply(limits, None)).expect_err("refused").is_too_large());
        let none =
            acknowledged(&reply("", Some(async_nats::StatusCode::NO_RESPONDERS))).expect_err("no stream");
        assert_eq!(none.status, Some(503));
        assert!(none.to_string().contains("status 503"), "{none}");
        assert_eq!(acknowledged(&reply(r#"{"stream":"KH_EVENTS","seq":42}"#, None)), Ok(42));
    }
}
