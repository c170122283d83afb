//! The client's errors: what the server refused (with its code and arguments), what happened
//! to the connection, and what the client itself refused to send. A timeout and a lost
//! connection mean "outcome unknown", never "failed".

use std::net::SocketAddr;
use std::time::Duration;

use chainlog_net::{ErrorCode, Opcode, ServerError};

/// Why a client call did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an ERROR: the request did not take effect.
    #[error("{0}")]
    Server(ServerError),
    /// No connection could be made (nothing was sent).
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The connection closed or failed before the answer came: the request's outcome is
    /// unknown (an APPEND may have been appended).
    #[error("connection to shard {shard} lost ({reason}): the outcome of the request is unknown")]
    ConnectionLost {
        /// The shard the connection was to.
        shard: u16,
        /// What happened.
        reason: String,
    },
    /// No answer within the configured time: the outcome is unknown, not failed.
    #[error("no answer to {opcode} within {after:?}: the outcome of the request is unknown")]
    Timeout {
        /// The request.
        opcode: Opcode,
        /// The time waited.
        after: Duration,
    },
    /// The server broke the protocol (bad frame, wrong handshake, unexpected response); the
    /// connection was closed.
    #[error("protocol violation by the server: {0}")]
    Protocol(String),
    /// The client refused the request before sending it (an empty batch, a record over the
    /// server's limits, a bad name).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The cluster map changed between the GET_MAP pages of every read, more than
    /// [`MAP_RESTARTS_MAX`](chainlog_net::pages::MAP_RESTARTS_MAX) times; try again.
    #[error("the cluster map kept changing while it was read; try again")]
    MapUnsettled,
}

impl ClientError {
    /// The server's error code, if the server answered with an ERROR.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Server(e) => Some(e.code),
            _ => None,
        }
    }

    /// The server's error, if the server answered with an ERROR.
    pub fn server(&self) -> Option<&ServerError> {
        match self {
            ClientError::Server(e) => Some(e),
            _ => None,
        }
    }

    /// True if sending the same request again can succeed without changing it: a retryable
    /// server code ([`ErrorCode::is_retryable`]) or a failed connect. Timeouts and lost
    /// connections are not: their outcome is unknown, and resending an APPEND could append it
    /// twice.
    pub fn is_retryable(&self) -> bool {
        match self {
            ClientError::Server(e) => e.code.is_retryable(),
            ClientError::Connect { .. } => true,
            _ => false,
        }
    }

    /// True if the request may or may not have taken effect (timeout, lost connection).
    pub fn outcome_unknown(&self) -> bool {
        matches!(
            self,
            ClientError::Timeout { .. } | ClientError::ConnectionLost { .. }
        )
    }
}
