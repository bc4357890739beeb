//! Segment-spec messages: the request body parsed once into typed, validated `Message`s, with
//! Segment's limits, batch-level `context`/`integrations` merged in and event time computed.
//! Pure: no I/O, unit-tested here.

use chrono::{DateTime, Utc};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// The six Segment message types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MessageType {
    Identify,
    Track,
    Page,
    Screen,
    Group,
    Alias,
}

impl MessageType {
    pub const ALL: [MessageType; 6] = [
        MessageType::Identify,
        MessageType::Track,
        MessageType::Page,
        MessageType::Screen,
        MessageType::Group,
        MessageType::Alias,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            MessageType::Identify => "identify",
            MessageType::Track => "track",
            MessageType::Page => "page",
            MessageType::Screen => "screen",
            MessageType::Group => "group",
            MessageType::Alias => "alias",
        }
    }

    pub fn parse(s: &str) -> Option<MessageType> {
        MessageType::ALL.into_iter().find(|t| t.as_str() == s)
    }
}

/// Limits applied to a request (Segment's by default; see `config/default.toml`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_message_bytes: usize,
    pub max_request_bytes: usize,
    pub max_batch_messages: usize,
    pub max_message_id_chars: usize,
}

impl Limits {
    pub fn from_settings(s: &crate::config::IngestSettings) -> Self {
        Limits {
            max_message_bytes: s.max_message_bytes,
            max_request_bytes: s.max_request_bytes,
            max_batch_messages: s.max_batch_messages,
            max_message_id_chars: s.max_message_id_chars,
        }
    }
}

/// A validated message, ready to store.
#[derive(Debug, Clone)]
pub struct Message {
    pub message_id: String,
    pub kind: MessageType,
    pub event: Option<String>,
    pub name: Option<String>,
    pub user_id: Option<String>,
    pub anonymous_id: Option<String>,
    pub group_id: Option<String>,
    pub previous_id: Option<String>,
    /// Event time: `timestamp`, else `originalTimestamp` corrected by the `sentAt` clock skew,
    /// else `receivedAt`.
    pub ts: DateTime<Utc>,
    pub original_timestamp: Option<DateTime<Utc>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub properties: Option<Value>,
    pub traits: Option<Value>,
    pub context: Option<Value>,
    pub integrations: Option<Value>,
    /// Any other top-level fields (`channel`, `_metadata`, `version`, …), kept verbatim.
    pub extra: Option<Value>,
}

impl Message {
    /// The message's identifier fields, as resolution reads them, with an alias's `previousId`
    /// read as `previous_kind`.
    pub fn ids<'a>(&'a self, previous_kind: &'a str) -> crate::identity::MessageIds<'a> {
        let context = self.context.as_ref();
        let identify = matches!(self.kind, MessageType::Identify);
        crate::identity::MessageIds {
            user_id: self.user_id.as_deref(),
            anonymous_id: self.anonymous_id.as_deref(),
            previous_id: self.previous_id.as_deref(),
            previous_kind,
            // A group's traits describe the group, not the person.
            traits: self
                .traits
                .as_ref()
                .filter(|_| identify)
                .and_then(Value::as_object),
            context_traits: context
                .and_then(|c| c.get("traits"))
                .and_then(Value::as_object),
            external_ids: context.and_then(|c| c.get("externalIds")),
        }
    }
}

/// What a request carried: an optional write key in the body and its messages.
#[derive(Debug)]
pub struct Request {
    pub write_key: Option<String>,
    pub messages: Vec<Message>,
}

/// Why a request was refused; every variant names what was wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum IngestError {
    #[error("{0}")]
    Malformed(String),
    #[error("{0}")]
    TooLarge(String),
    #[error("{0}")]
    Invalid(String),
}

/// Where a message sits, for error messages: "message 3" in a batch, nothing for a single call.
#[derive(Clone, Copy)]
struct At(Option<usize>);

impl At {
    fn err(self, detail: String) -> IngestError {
        match self.0 {
            Some(i) => IngestError::Invalid(format!("message {i}: {detail}")),
            None => IngestError::Invalid(detail),
        }
    }
}

/// Fields a batch passes down to each of its messages.
#[derive(Default)]
struct BatchDefaults {
    context: Option<Map<String, Value>>,
    integrations: Option<Map<String, Value>>,
    sent_at: Option<DateTime<Utc>>,
}

/// Parses a `/v1/batch` body.
pub fn parse_batch(
    body: &[u8],
    received_at: DateTime<Utc>,
    limits: &Limits,
) -> Result<Request, IngestError> {
    let mut envelope: Map<String, Value> = Map::new();
    let top: std::collections::HashMap<String, Box<RawValue>> = serde_json::from_slice(body)
        .map_err(|e| IngestError::Malformed(format!("the body is not a JSON object: {e}")))?;
    let mut raw_batch = None;
    for (key, raw) in top {
        if key == "batch" {
            raw_batch = Some(raw);
        } else {
            let value = serde_json::from_str(raw.get())
                .map_err(|e| IngestError::Malformed(format!("`{key}` is not valid JSON: {e}")))?;
            reject_inexact_numbers(raw.get().as_bytes(), At(None))?;
            envelope.insert(key, value);
        }
    }
    // The envelope's context is merged into every message: it must be storable too.
    reject_nul(&envelope, At(None))?;
    let raw_batch = raw_batch.ok_or_else(|| {
        IngestError::Invalid("`batch` is missing: send {\"batch\": [messages...]}".into())
    })?;
    let raw_messages: Vec<Box<RawValue>> = serde_json::from_str(raw_batch.get())
        .map_err(|_| IngestError::Invalid("`batch` must be an array of messages".into()))?;
    if raw_messages.len() > limits.max_batch_messages {
        return Err(IngestError::Invalid(format!(
            "the batch has {} messages; the limit is {} a request",
            raw_messages.len(),
            limits.max_batch_messages
        )));
    }
    let write_key = optional_string(&mut envelope, "writeKey", At(None))?;
    let defaults = BatchDefaults {
        context: optional_object(&mut envelope, "context", At(None))?,
        integrations: optional_object(&mut envelope, "integrations", At(None))?,
        sent_at: optional_time(&mut envelope, "sentAt", At(None))?,
    };
    let mut messages = Vec::with_capacity(raw_messages.len());
    for (i, raw) in raw_messages.iter().enumerate() {
        let at = At(Some(i));
        let size = raw.get().len();
        if size > limits.max_message_bytes {
            return Err(IngestError::TooLarge(format!(
                "message {i} is {size} bytes; the limit is {} bytes (32 KiB) a message",
                limits.max_message_bytes
            )));
        }
        let map: Map<String, Value> =
            serde_json::from_str(raw.get()).map_err(|_| at.err("is not a JSON object".into()))?;
        reject_inexact_numbers(raw.get().as_bytes(), at)?;
        messages.push(parse_message(
            map,
            None,
            &defaults,
            received_at,
            limits,
            at,
        )?);
    }
    Ok(Request {
        write_key,
        messages,
    })
}

/// Parses the body of a single-message path (`/v1/track`, …); the path gives the type.
pub fn parse_single(
    body: &[u8],
    kind: MessageType,
    received_at: DateTime<Utc>,
    limits: &Limits,
) -> Result<Request, IngestError> {
    if body.len() > limits.max_message_bytes {
        return Err(IngestError::TooLarge(format!(
            "the message is {} bytes; the limit is {} bytes (32 KiB) a message",
            body.len(),
            limits.max_message_bytes
        )));
    }
    let mut map: Map<String, Value> = serde_json::from_slice(body)
        .map_err(|e| IngestError::Malformed(format!("the body is not a JSON object: {e}")))?;
    reject_inexact_numbers(body, At(None))?;
    let write_key = optional_string(&mut map, "writeKey", At(None))?;
    let message = parse_message(
        map,
        Some(kind),
        &BatchDefaults::default(),
        received_at,
        limits,
        At(None),
    )?;
    Ok(Request {
        write_key,
        messages: vec![message],
    })
}

fn parse_message(
    mut map: Map<String, Value>,
    path_kind: Option<MessageType>,
    defaults: &BatchDefaults,
    received_at: DateTime<Utc>,
    limits: &Limits,
    at: At,
) -> Result<Message, IngestError> {
    reject_nul(&map, at)?;
    let stated_kind = optional_string(&mut map, "type", at)?;
    let kind = match (path_kind, stated_kind) {
        // A single-call path decides the type, as Segment's API does.
        (Some(kind), _) => kind,
        (None, None) => return Err(at.err("`type` is missing".into())),
        (None, Some(t)) => MessageType::parse(&t).ok_or_else(|| {
            at.err(format!(
                "unknown `type` {t:?}; expected one of identify, track, page, screen, group, alias"
            ))
        })?,
    };
    let message_id = match optional_string(&mut map, "messageId", at)? {
        Some(id) if !id.is_empty() => {
            let chars = id.chars().count();
            if chars > limits.max_message_id_chars {
                return Err(at.err(format!(
                    "`messageId` is {chars} characters; the limit is {}",
                    limits.max_message_id_chars
                )));
            }
            id
        }
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let user_id = optional_id(&mut map, "userId", at)?;
    let anonymous_id = optional_id(&mut map, "anonymousId", at)?;
    let previous_id = optional_id(&mut map, "previousId", at)?;
    let group_id = optional_id(&mut map, "groupId", at)?;
    let event = optional_string(&mut map, "event", at)?;
    let name = optional_id(&mut map, "name", at)?;
    match kind {
        MessageType::Alias if previous_id.is_none() || user_id.is_none() => {
            return Err(at.err("an alias needs both `previousId` and `userId`".into()));
        }
        MessageType::Alias => {}
        _ if user_id.is_none() && anonymous_id.is_none() => {
            return Err(at.err("`userId` or `anonymousId` is required".into()));
        }
        _ => {}
    }
    if kind == MessageType::Track && event.as_deref().is_none_or(|e| e.trim().is_empty()) {
        return Err(at.err("a track needs a non-empty `event`".into()));
    }
    if kind == MessageType::Group && group_id.is_none() {
        return Err(at.err("a group needs a `groupId`".into()));
    }
    let timestamp = optional_time(&mut map, "timestamp", at)?;
    let original_timestamp = optional_time(&mut map, "originalTimestamp", at)?;
    let sent_at = optional_time(&mut map, "sentAt", at)?.or(defaults.sent_at);
    let ts = event_time(timestamp, original_timestamp, sent_at, received_at);
    let properties = optional_object(&mut map, "properties", at)?;
    let traits = optional_object(&mut map, "traits", at)?;
    let context = merge_defaults(optional_object(&mut map, "context", at)?, &defaults.context);
    let integrations = merge_defaults(
        optional_object(&mut map, "integrations", at)?,
        &defaults.integrations,
    );
    // Server-side fields a client may echo; never store a client's copy of them.
    map.remove("receivedAt");
    map.remove("writeKey");
    Ok(Message {
        message_id,
        kind,
        event,
        name,
        user_id,
        anonymous_id,
        group_id,
        previous_id,
        ts,
        original_timestamp,
        sent_at,
        properties: properties.map(Value::Object),
        traits: traits.map(Value::Object),
        context: context.map(Value::Object),
        integrations: integrations.map(Value::Object),
        extra: (!map.is_empty()).then_some(Value::Object(map)),
    })
}

/// Segment's rule: `timestamp` wins; else the client's `originalTimestamp` shifted by the skew
/// between the client's `sentAt` and our `receivedAt`; else `receivedAt`.
pub fn event_time(
    timestamp: Option<DateTime<Utc>>,
    original: Option<DateTime<Utc>>,
    sent_at: Option<DateTime<Utc>>,
    received_at: DateTime<Utc>,
) -> DateTime<Utc> {
    if let Some(ts) = timestamp {
        return ts;
    }
    match (original, sent_at) {
        (Some(original), Some(sent)) => original
            .checked_add_signed(received_at - sent)
            .unwrap_or(original),
        (Some(original), None) => original,
        _ => received_at,
    }
}

fn merge_defaults(
    own: Option<Map<String, Value>>,
    defaults: &Option<Map<String, Value>>,
) -> Option<Map<String, Value>> {
    match (own, defaults) {
        (own, None) => own,
        (None, Some(defaults)) => Some(defaults.clone()),
        (Some(mut own), Some(defaults)) => {
            for (key, value) in defaults {
                own.entry(key.clone()).or_insert_with(|| value.clone());
            }
            Some(own)
        }
    }
}

fn optional_string(
    map: &mut Map<String, Value>,
    field: &str,
    at: At,
) -> Result<Option<String>, IngestError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(at.err(format!(
            "`{field}` must be a string, not {}",
            kind_of(&other)
        ))),
    }
}

/// Ids may come as numbers from some clients; they are stored as text. Empty means absent.
fn optional_id(
    map: &mut Map<String, Value>,
    field: &str,
    at: At,
) -> Result<Option<String>, IngestError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.trim().is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) => Ok(Some(n.to_string())),
        Some(other) => Err(at.err(format!(
            "`{field}` must be a string, not {}",
            kind_of(&other)
        ))),
    }
}

fn optional_object(
    map: &mut Map<String, Value>,
    field: &str,
    at: At,
) -> Result<Option<Map<String, Value>>, IngestError> {
    match map.remove(field) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(o)) => Ok(Some(o)),
        Some(other) => Err(at.err(format!(
            "`{field}` must be an object, not {}",
            kind_of(&other)
        ))),
    }
}

fn optional_time(
    map: &mut Map<String, Value>,
    field: &str,
    at: At,
) -> Result<Option<DateTime<Utc>>, IngestError> {
    match optional_string(map, field, at)? {
        None => Ok(None),
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| Some(t.with_timezone(&Utc)))
            .map_err(|_| {
                at.err(format!(
                    "`{field}` is not an RFC 3339 date-time (like 2024-05-01T12:00:00Z): {s:?}"
                ))
            }),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// PostgreSQL text and jsonb cannot hold U+0000; refuse it here with a clear answer rather than
/// failing the whole batch in the database.
fn reject_nul(map: &Map<String, Value>, at: At) -> Result<(), IngestError> {
    fn has_nul(value: &Value) -> bool {
        match value {
            Value::String(s) => s.contains('\0'),
            Value::Array(items) => items.iter().any(has_nul),
            Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
            _ => false,
        }
    }
    for (key, value) in map {
        if key.contains('\0') || has_nul(value) {
            return Err(at.err(format!(
                "`{key}` contains a NUL character (\\u0000), which cannot be stored"
            )));
        }
    }
    Ok(())
}

/// JSON numbers that would not come back as sent: integers beyond 64 bits (serde parses them
/// as doubles, silently rounding order ids) and numbers beyond a double (`1e400`). Scans the raw
/// text of a body already known to be valid JSON, because the parsed value can no longer tell
/// `123456789012345678901` from `1.2345678901234568e20`.
fn reject_inexact_numbers(json: &[u8], at: At) -> Result<(), IngestError> {
    let mut i = 0;
    let mut last_key: &[u8] = b"";
    while i < json.len() {
        match json[i] {
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < json.len() && json[i] != b'"' {
                    i += if json[i] == b'\\' { 2 } else { 1 };
                }
                let end = i.min(json.len());
                i += 1;
                let next = json[i.min(json.len())..]
                    .iter()
                    .find(|b| !b.is_ascii_whitespace());
                if next == Some(&b':') {
                    last_key = &json[start..end];
                }
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < json.len()
                    && matches!(json[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
                {
                    i += 1;
                }
                let token = std::str::from_utf8(&json[start..i]).unwrap_or_default();
                let exact = if token.contains(['.', 'e', 'E']) {
                    let mantissa = token.split(['e', 'E']).next().unwrap_or_default();
                    let underflows = mantissa.bytes().any(|b| matches!(b, b'1'..=b'9'));
                    // Beyond a double's range either way: infinite, or a non-zero that became 0.
                    token
                        .parse::<f64>()
                        .is_ok_and(|v| v.is_finite() && (v != 0.0 || !underflows))
                } else {
                    token.parse::<i64>().is_ok() || token.parse::<u64>().is_ok()
                };
                if !exact {
                    let shown: String = token.chars().take(40).collect();
                    return Err(at.err(format!(
                        "`{}` holds the number {shown}, which cannot be stored exactly (integers \
                         must fit in 64 bits, other numbers in a double); send it as a string",
                        String::from_utf8_lossy(last_key)
                    )));
                }
            }
            _ => i += 1,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    const LIMITS: Limits = Limits {
        max_message_bytes: 32 * 1024,
        max_request_bytes: 500 * 1024,
        max_batch_messages: 2500,
        max_message_id_chars: 100,
    };

    fn now() -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()
    }

    #[test]
    fn original_timestamp_is_corrected_by_the_client_clock_skew() {
        // The client's clock is 10 minutes fast: it says it sent at 12:10, we received at 12:00.
        let body = br#"{"batch":[{"type":"track","event":"A","userId":"u","originalTimestamp":"2024-05-01T12:05:00Z"}],
                        "sentAt":"2024-05-01T12:10:00Z"}"#;
        let req = parse_batch(body, now(), &LIMITS).unwrap();
        assert_eq!(
            req.messages[0].ts,
            Utc.with_ymd_and_hms(2024, 5, 1, 11, 55, 0).unwrap()
        );
    }

    #[test]
    fn timestamp_wins_and_received_at_is_the_fallback() {
        let body = br#"{"batch":[{"type":"page","anonymousId":"a","timestamp":"2024-01-01T00:00:00+02:00"},
                                  {"type":"page","anonymousId":"a"}]}"#;
        let req = parse_batch(body, now(), &LIMITS).unwrap();
        assert_eq!(
            req.messages[0].ts,
            Utc.with_ymd_and_hms(2023, 12, 31, 22, 0, 0).unwrap()
        );
        assert_eq!(req.messages[1].ts, now());
    }

    #[test]
    fn batch_context_is_merged_under_the_message_context() {
        let body = br#"{"batch":[{"type":"identify","userId":"u","context":{"ip":"1.1.1.1"}}],
                        "context":{"ip":"2.2.2.2","library":{"name":"x"}},"writeKey":"k"}"#;
        let req = parse_batch(body, now(), &LIMITS).unwrap();
        assert_eq!(req.write_key.as_deref(), Some("k"));
        let ctx = req.messages[0].context.as_ref().unwrap();
        assert_eq!(ctx["ip"], "1.1.1.1");
        assert_eq!(ctx["library"]["name"], "x");
    }

    #[test]
    fn errors_name_the_message_index_and_field() {
        let body = br#"{"batch":[{"type":"track","event":"A","userId":"u"},{"type":"track","event":"A","userId":"u","timestamp":"yesterday"}]}"#;
        let err = parse_batch(body, now(), &LIMITS).unwrap_err();
        assert!(
            err.to_string().starts_with("message 1: `timestamp`"),
            "{err}"
        );
        let body = br#"{"batch":[{"type":"shout","userId":"u"}]}"#;
        assert!(parse_batch(body, now(), &LIMITS)
            .unwrap_err()
            .to_string()
            .contains("unknown `type`"));
        let body = br#"{"batch":[{"type":"track","event":"A"}]}"#;
        assert!(parse_batch(body, now(), &LIMITS)
            .unwrap_err()
            .to_string()
            .contains("`userId` or `anonymousId`"));
    }

    #[test]
    fn unknown_fields_are_kept_and_ids_may_be_numbers() {
        let body = br#"{"type":"identify","userId":42,"channel":"server","_metadata":{"nodeVersion":"20"}}"#;
        let req = parse_single(body, MessageType::Identify, now(), &LIMITS).unwrap();
        let m = &req.messages[0];
        assert_eq!(m.user_id.as_deref(), Some("42"));
        assert_eq!(m.extra.as_ref().unwrap()["channel"], "server");
        assert_eq!(m.message_id.len(), 36);
    }

    #[test]
    fn nul_characters_are_refused() {
        let body = br#"{"userId":"u","event":"A","properties":{"x":"a\u0000b"}}"#;
        let err = parse_single(body, MessageType::Track, now(), &LIMITS).unwrap_err();
        assert!(err.to_string().contains("NUL"), "{err}");
    }

    #[test]
    fn numbers_are_kept_only_when_they_come_back_exactly() {
        let ok = br#"{"a": 18446744073709551615, "b": -9223372036854775808, "c": 1.5e300, "d": "99999999999999999999999", "e\"": 0, "f": 0.0e-999, "g": 5e-324}"#;
        assert!(reject_inexact_numbers(ok, At(None)).is_ok());
        for (raw, key) in [
            (&br#"{"order_id": 123456789012345678901}"#[..], "order_id"),
            (br#"{"x": [1, {"n": -18446744073709551616}]}"#, "n"),
            (br#"{"big": 1e400}"#, "big"),
            (br#"{"tiny": -1.5e-400}"#, "tiny"),
        ] {
            let err = reject_inexact_numbers(raw, At(Some(3)))
                .unwrap_err()
                .to_string();
            assert!(err.contains(key) && err.contains("message 3"), "{err}");
        }
    }
}
