//! The DPS topic and user-name grammar on top of MQTT (`device-protocol.md` §5).

use std::borrow::Cow;

/// The filter every device subscribes to.
pub const RESPONSE_FILTER: &str = "$dps/registrations/res/#";
/// Every DPS topic starts with this; a PUBLISH to any other topic ends the session.
pub const NAMESPACE: &str = "$dps/registrations/";
const REGISTER_PATH: &str = "$dps/registrations/PUT/iotdps-register";
const STATUS_PATH: &str = "$dps/registrations/GET/iotdps-get-operationstatus";

/// Why a topic or user name is not one DPS knows.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Outside `$dps/registrations/`: not DPS at all, so there is nothing to answer.
    #[error("the topic {0:?} is not a DPS topic")]
    UnknownTopic(String),
    /// Inside `$dps/registrations/` but no operation DPS has; answered on `$rid`.
    #[error("the topic {topic:?} names no DPS operation")]
    UnknownOperation { topic: String, rid: String },
    #[error("the operation-status topic has no operationId")]
    MissingOperationId { rid: String },
    #[error("the query parameter {name:?} appears more than once")]
    DuplicateParameter { name: String, rid: String },
    #[error(
        "the user name {0:?} is not of the form {{idScope}}/registrations/{{registrationId}}/api-version=…"
    )]
    BadUsername(String),
}

impl TopicError {
    /// The `$rid` to answer this refusal on (empty when the topic had none, as DPS answers), or
    /// `None` when the topic is not DPS's and the session is to end.
    pub fn rid(&self) -> Option<&str> {
        match self {
            Self::UnknownOperation { rid, .. }
            | Self::MissingOperationId { rid }
            | Self::DuplicateParameter { rid, .. } => Some(rid),
            Self::UnknownTopic(_) | Self::BadUsername(_) => None,
        }
    }
}

/// A device request, from the PUBLISH topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// `$dps/registrations/PUT/iotdps-register/?$rid={rid}`.
    Register { rid: String },
    /// `$dps/registrations/GET/iotdps-get-operationstatus/?$rid={rid}&operationId={id}`.
    OperationStatus { rid: String, operation_id: String },
}

impl Request {
    /// The request ID, exactly as the device sent it, to be echoed byte for byte; empty when the
    /// topic had no `$rid`.
    pub fn rid(&self) -> &str {
        match self {
            Self::Register { rid } | Self::OperationStatus { rid, .. } => rid,
        }
    }
}

/// Parses a request topic. `$rid` is kept verbatim and may be absent: DPS answers a request without
/// one (`…/iotdps-register/?rid=1`, `…/iotdps-register/` or `…/iotdps-register`, as hand-written
/// firmware sends) on `…/?$rid=` with an empty `$rid`. `operationId` is percent-decoded (Python
/// encodes it, Node and C send it raw).
pub fn parse_request(topic: &str) -> Result<Request, TopicError> {
    if !topic.starts_with(NAMESPACE) {
        return Err(TopicError::UnknownTopic(topic.chars().take(100).collect()));
    }
    let (path, query) = topic.split_once('?').unwrap_or((topic, ""));
    let path = path.strip_suffix('/').unwrap_or(path);
    let mut rid = None;
    let mut operation_id = None;
    let mut duplicate = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let slot = match key {
            "$rid" => &mut rid,
            "operationId" => &mut operation_id,
            _ => continue,
        };
        if slot.is_some() {
            duplicate.get_or_insert(key);
        } else {
            *slot = Some(value);
        }
    }
    let rid = rid.unwrap_or("").to_owned();
    if let Some(name) = duplicate {
        return Err(TopicError::DuplicateParameter {
            name: name.to_owned(),
            rid,
        });
    }
    if path == REGISTER_PATH {
        return Ok(Request::Register { rid });
    }
    if path != STATUS_PATH {
        return Err(TopicError::UnknownOperation {
            topic: topic.chars().take(100).collect(),
            rid,
        });
    }
    let Some(operation_id) = operation_id.filter(|o| !o.is_empty()) else {
        return Err(TopicError::MissingOperationId { rid });
    };
    Ok(Request::OperationStatus {
        rid,
        operation_id: decode(operation_id).into_owned(),
    })
}

/// The response topic: `$rid` first (Python loses anything after a misplaced parameter), then
/// `retry-after` when given.
pub fn response_topic(status: u16, rid: &str, retry_after: Option<u32>) -> String {
    match retry_after {
        Some(secs) => format!("$dps/registrations/res/{status}/?$rid={rid}&retry-after={secs}"),
        None => format!("$dps/registrations/res/{status}/?$rid={rid}"),
    }
}

/// A parsed response topic, as a device reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub rid: String,
    pub retry_after: Option<u32>,
}

/// Parses `$dps/registrations/res/{status}/?$rid={rid}[&retry-after={n}]` (the device side).
pub fn parse_response(topic: &str) -> Option<Response> {
    let rest = topic.strip_prefix("$dps/registrations/res/")?;
    let (status, query) = rest.split_once("/?")?;
    let status = status.parse().ok()?;
    let mut rid = None;
    let mut retry_after = None;
    for pair in query.split('&') {
        match pair.split_once('=') {
            Some(("$rid", v)) => rid = Some(v.to_owned()),
            Some(("retry-after", v)) => retry_after = v.parse().ok(),
            _ => {}
        }
    }
    Some(Response {
        status,
        rid: rid?,
        retry_after,
    })
}

/// What a device's CONNECT user name says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Username {
    pub id_scope: String,
    pub registration_id: String,
    pub api_version: Option<String>,
    pub client_version: Option<String>,
}

/// Parses `{idScope}/registrations/{registrationId}/api-version=…[&ClientVersion=…]`. The query part
/// is optional and may itself contain `/` (embedded SDKs put a free-form user agent there).
pub fn parse_username(text: &str) -> Result<Username, TopicError> {
    let bad = || TopicError::BadUsername(text.chars().take(200).collect());
    let mut parts = text.splitn(4, '/');
    let (Some(scope), Some(literal), Some(id)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(bad());
    };
    if scope.is_empty() || id.is_empty() || !literal.eq_ignore_ascii_case("registrations") {
        return Err(bad());
    }
    let (mut api_version, mut client_version) = (None, None);
    for pair in parts.next().unwrap_or("").split('&') {
        match pair.split_once('=') {
            Some(("api-version", v)) => api_version = Some(decode(v).into_owned()),
            Some(("ClientVersion", v)) => client_version = Some(decode(v).into_owned()),
            _ => {}
        }
    }
    Ok(Username {
        id_scope: scope.to_owned(),
        registration_id: decode(id).into_owned(),
        api_version,
        client_version,
    })
}

/// Percent-decodes when the text is valid percent-encoded UTF-8; otherwise keeps it as it is.
fn decode(text: &str) -> Cow<'_, str> {
    if !text.contains('%') {
        return Cow::Borrowed(text);
    }
    percent_encoding::percent_decode_str(text)
        .decode_utf8()
        .unwrap_or(Cow::Borrowed(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_topics_of_every_sdk() {
        for rid in ["1", "42", "a3b1c2d4-0000-4000-8000-000000000000"] {
            let topic = format!("$dps/registrations/PUT/iotdps-register/?$rid={rid}");
            assert_eq!(
                parse_request(&topic),
                Ok(Request::Register { rid: rid.into() })
            );
        }
    }

    #[test]
    fn status_topics_decode_the_operation_id_but_keep_the_rid() {
        let raw =
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=7&operationId=5.abc.def-1";
        assert_eq!(
            parse_request(raw),
            Ok(Request::OperationStatus {
                rid: "7".into(),
                operation_id: "5.abc.def-1".into()
            })
        );
        let python =
            "$dps/registrations/GET/iotdps-get-operationstatus/?$rid=x%2Fy&operationId=5%2Eabc";
        assert_eq!(
            parse_request(python),
            Ok(Request::OperationStatus {
                rid: "x%2Fy".into(),
                operation_id: "5.abc".into()
            })
        );
    }

    #[test]
    fn requests_without_a_rid_are_answered_on_an_empty_one() {
        for topic in [
            "$dps/registrations/PUT/iotdps-register/?rid=1",
            "$dps/registrations/PUT/iotdps-register/?",
            "$dps/registrations/PUT/iotdps-register/?$rid=",
            "$dps/registrations/PUT/iotdps-register/",
            "$dps/registrations/PUT/iotdps-register",
        ] {
            assert_eq!(
                parse_request(topic),
                Ok(Request::Register { rid: String::new() }),
                "{topic}"
            );
        }
        assert_eq!(
            parse_request("$dps/registrations/GET/iotdps-get-operationstatus/?operationId=5.a"),
            Ok(Request::OperationStatus {
                rid: String::new(),
                operation_id: "5.a".into()
            })
        );
    }

    #[test]
    fn bad_topics() {
        let outside = parse_request("devices/x/messages").unwrap_err();
        assert!(matches!(outside, TopicError::UnknownTopic(_)));
        assert_eq!(outside.rid(), None, "not DPS: the session ends");
        let unknown = parse_request("$dps/registrations/PUT/iotdps-unknown/?$rid=9").unwrap_err();
        assert!(matches!(unknown, TopicError::UnknownOperation { .. }));
        assert_eq!(unknown.rid(), Some("9"));
        assert_eq!(
            parse_request("$dps/registrations/GET/iotdps-get-operationstatus/?$rid=1"),
            Err(TopicError::MissingOperationId { rid: "1".into() })
        );
        assert_eq!(
            parse_request("$dps/registrations/PUT/iotdps-register/?$rid=1&$rid=2"),
            Err(TopicError::DuplicateParameter {
                name: "$rid".into(),
                rid: "1".into()
            })
        );
    }

    #[test]
    fn response_topic_puts_rid_first() {
        assert_eq!(
            response_topic(200, "abc", None),
            "$dps/registrations/res/200/?$rid=abc"
        );
        assert_eq!(
            response_topic(202, "1", Some(3)),
            "$dps/registrations/res/202/?$rid=1&retry-after=3"
        );
    }

    #[test]
    fn response_topics_parse_back() {
        assert_eq!(
            parse_response(&response_topic(202, "abc-1", Some(3))),
            Some(Response {
                status: 202,
                rid: "abc-1".into(),
                retry_after: Some(3)
            })
        );
        assert_eq!(
            parse_response(&response_topic(401, "7", None)),
            Some(Response {
                status: 401,
                rid: "7".into(),
                retry_after: None
            })
        );
        assert_eq!(parse_response("$dps/registrations/res/xx/?$rid=1"), None);
        assert_eq!(
            parse_response("$dps/registrations/res/200/?retry-after=1"),
            None
        );
    }

    #[test]
    fn usernames_of_every_sdk() {
        let py = "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=azure-iot-device-provisioning-py%2F2.14.0%283.11%29";
        let u = parse_username(py).unwrap();
        assert_eq!(u.id_scope, "0ne00000001");
        assert_eq!(u.registration_id, "dev-1");
        assert_eq!(u.api_version.as_deref(), Some("2019-03-31"));
        assert_eq!(
            u.client_version.as_deref(),
            Some("azure-iot-device-provisioning-py/2.14.0(3.11)")
        );
        let c = parse_username(
            "0ne00000001/registrations/dev-1/api-version=2021-06-01&ClientVersion=1.15.0",
        )
        .unwrap();
        assert_eq!(c.client_version.as_deref(), Some("1.15.0"));
        let emb = parse_username(
            "0ne00000001/registrations/dev-1/api-version=2019-03-31&ClientVersion=my/agent 1.0",
        )
        .unwrap();
        assert_eq!(emb.client_version.as_deref(), Some("my/agent 1.0"));
        let bare = parse_username("0ne00000001/registrations/dev-1").unwrap();
        assert_eq!(bare.api_version, None);
        for bad in [
            "",
            "0ne/devices/x",
            "0ne/registrations/",
            "/registrations/x",
        ] {
            assert!(parse_username(bad).is_err(), "{bad}");
        }
    }
}
