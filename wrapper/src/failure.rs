//! Why a client request got an error from the wrapper instead of an answer from the
//! server, and how that becomes a JSON-RPC error: the message says what happened (for
//! the person reading the client's log), `data.kind` names it (for code), the code
//! follows the MCP SDKs (-32000 connection closed, -32001 request timeout, -32603 for
//! an unusable answer).

use std::fmt;
use std::time::Duration;

use hyper::StatusCode;
use serde_json::{Value, json};

use crate::jsonrpc;
use crate::transport::TransportError;

/// Why a request got an error from the wrapper instead of an answer from the server.
#[derive(Debug, Clone)]
pub(crate) enum Failure {
    Timeout { timeout: Duration },
    Unreachable { detail: String },
    ConnectionLost { detail: String },
    Http { status: StatusCode, detail: String },
    SessionLost { reason: String, reinitialize: bool },
    NoSession { reason: String },
    NoAnswer { detail: String },
    InvalidAnswer { detail: String },
    Shutdown { grace: Duration },
}

impl Failure {
    pub(crate) fn from_transport(error: &TransportError) -> Self {
        match error {
            TransportError::Connect { .. } => Self::Unreachable {
                detail: error.to_string(),
            },
            TransportError::TooLarge { .. } => Self::InvalidAnswer {
                detail: error.to_string(),
            },
            TransportError::Request { .. } | TransportError::Body { .. } => Self::ConnectionLost {
                detail: error.to_string(),
            },
        }
    }

    fn code(&self) -> i32 {
        match self {
            Self::Timeout { .. } => jsonrpc::REQUEST_TIMEOUT,
            Self::NoAnswer { .. } | Self::InvalidAnswer { .. } => jsonrpc::INTERNAL_ERROR,
            _ => jsonrpc::CONNECTION_CLOSED,
        }
    }

    /// A stable name for the `data.kind` of the error.
    fn kind(&self) -> &'static str {
        match self {
            Self::Timeout { .. } => "timeout",
            Self::Unreachable { .. } => "unreachable",
            Self::ConnectionLost { .. } => "connection_lost",
            Self::Http { .. } => "http_status",
            Self::SessionLost { .. } | Self::NoSession { .. } => "session_lost",
            Self::NoAnswer { .. } => "no_answer",
            Self::InvalidAnswer { .. } => "invalid_answer",
            Self::Shutdown { .. } => "shutdown",
        }
    }

    /// The JSON-RPC error answering request `id`.
    pub(crate) fn to_response(&self, id: &Value) -> Value {
        let mut data = json!({"source": "mcpgw wrapper", "kind": self.kind()});
        if let (Self::Http { status, .. }, Some(obj)) = (self, data.as_object_mut()) {
            obj.insert("httpStatus".to_owned(), json!(status.as_u16()));
        }
        jsonrpc::error_response(
            id,
            self.code(),
            &format!("mcpgw wrapper: {self}"),
            Some(data),
        )
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Timeout { timeout } => write!(
                f,
                "no answer from the MCP server within {} s (--timeout); the request was cancelled",
                timeout.as_secs_f64()
            ),
            Self::Unreachable { detail } => write!(f, "the MCP server is unreachable: {detail}"),
            Self::ConnectionLost { detail } => {
                write!(f, "lost the connection to the MCP server: {detail}")
            }
            Self::Http { status, detail } if detail.is_empty() => {
                write!(f, "the MCP server answered HTTP {status}")
            }
            Self::Http { status, detail } => {
                write!(f, "the MCP server answered HTTP {status}: {detail}")
            }
            Self::SessionLost {
                reason,
                reinitialize: true,
            } => write!(
                f,
                "{reason}; requests in flight on it were abandoned and a new session is being started: retry the request"
            ),
            Self::SessionLost {
                reason,
                reinitialize: false,
            } => write!(
                f,
                "{reason}; requests in flight on it were abandoned. Restart the client to start a new session (or run the wrapper with --reinitialize)"
            ),
            Self::NoSession { reason } => write!(f, "not sent: {reason}"),
            Self::NoAnswer { detail } => f.write_str(detail),
            Self::InvalidAnswer { detail } => {
                write!(f, "the MCP server sent an unreadable answer: {detail}")
            }
            Self::Shutdown { grace } => write!(
                f,
                "stdin was closed and the request was still unanswered {} s later",
                grace.as_secs_f64()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_their_kind_and_code() {
        let timeout = Failure::Timeout {
            timeout: Duration::from_millis(1500),
        }
        .to_response(&json!(3));
        assert_eq!(timeout["id"], 3);
        assert_eq!(timeout["error"]["code"], jsonrpc::REQUEST_TIMEOUT);
        assert_eq!(timeout["error"]["data"]["kind"], "timeout");
        let message = timeout["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.starts_with("mcpgw wrapper: ") && message.contains("1.5 s"),
            "{message}"
        );

        let http = Failure::Http {
            status: StatusCode::BAD_GATEWAY,
            detail: "upstream down".into(),
        }
        .to_response(&json!("a"));
        assert_eq!(http["error"]["code"], jsonrpc::CONNECTION_CLOSED);
        assert_eq!(http["error"]["data"]["httpStatus"], 502);
        assert!(
            http["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("HTTP 502 Bad Gateway: upstream down"))
        );

        let lost = Failure::SessionLost {
            reason: "gone".into(),
            reinitialize: false,
        };
        assert!(lost.to_string().contains("--reinitialize"));
        assert_eq!(
            lost.to_response(&json!(1))["error"]["data"]["kind"],
            "session_lost"
        );
        let bad = Failure::InvalidAnswer { detail: "x".into() };
        assert_eq!(
            bad.to_response(&json!(1))["error"]["code"],
            jsonrpc::INTERNAL_ERROR
        );
    }
}
