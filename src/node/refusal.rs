//! A refused request's answer before it is encoded ([`Refusal`]): the code, its arguments and
//! a message, made from the protocol's own checks, from a decoding error, or from a store
//! error. Handlers return one; the protocol turns it into the ERROR answer in one place
//! (`super::protocol`), which counts it, closes the connection when the code says so, and
//! keeps APPEND and TRIM answers in request order. [`Refusal::encode`] is the only encoder of
//! those answers.

use chainlog_net::{encode_error, ErrorCode, ErrorResponse, Opcode, ARG_NONE};
use chainlog_storage::Error;

/// A failed request's answer, before encoding.
#[derive(Debug)]
pub(crate) struct Refusal {
    pub(crate) code: ErrorCode,
    pub(crate) arg0: u64,
    pub(crate) arg1: u64,
    pub(crate) message: String,
}

/// A refusal with `code`, `arg0` and `message`; `arg1` as PROTOCOL.md section 8 sets it for
/// an answer about no one record.
pub(crate) fn refuse(code: ErrorCode, arg0: u64, message: impl Into<String>) -> Refusal {
    // TOO_LARGE's arg1 names the offending record; none does here (PROTOCOL.md 8).
    let arg1 = if code == ErrorCode::TooLarge {
        ARG_NONE
    } else {
        0
    };
    Refusal {
        code,
        arg0,
        arg1,
        message: message.into(),
    }
}

impl Refusal {
    /// The answer to bytes that did not decode (a frame, or a request's body).
    pub(crate) fn of_decoding(e: &chainlog_net::Error) -> Refusal {
        Refusal {
            code: e.code(),
            arg0: e.arg0(),
            arg1: e.arg1(),
            message: e.to_string(),
        }
    }

    /// The answer to a store error.
    pub(crate) fn of_store(e: &Error) -> Refusal {
        match *e {
            Error::Overloaded => refuse(ErrorCode::Overloaded, 1, e.to_string()),
            Error::ConditionFailed { tail } => {
                refuse(ErrorCode::ConditionFailed, tail, e.to_string())
            }
            Error::Fenced { token } => refuse(ErrorCode::Fenced, token, e.to_string()),
            Error::WriterSeq { last, .. } => refuse(ErrorCode::WriterSeq, last, e.to_string()),
            Error::TrimBeyondTail { tail, .. } => {
                refuse(ErrorCode::ConditionFailed, tail, e.to_string())
            }
            Error::TooLarge { max, .. } => refuse(ErrorCode::TooLarge, max as u64, e.to_string()),
            Error::TooManyLogs { max } => refuse(ErrorCode::TooLarge, max as u64, e.to_string()),
            Error::Trimmed { trim_point } => refuse(ErrorCode::Trimmed, trim_point, e.to_string()),
            Error::Gap { expected } => refuse(ErrorCode::Gap, expected, e.to_string()),
            Error::UnknownLog(_) => refuse(ErrorCode::UnknownLog, ARG_NONE, e.to_string()),
            Error::Checksum { index } => refuse(ErrorCode::Malformed, index as u64, e.to_string()),
            Error::Malformed(_) | Error::EmptyBatch => {
                refuse(ErrorCode::Malformed, ARG_NONE, e.to_string())
            }
            _ => {
                tracing::error!(error = %e, "storage error while serving a request");
                refuse(ErrorCode::Unavailable, ARG_NONE, e.to_string())
            }
        }
    }

    /// The ERROR frame of this refusal, appended to `out`.
    pub(crate) fn encode(&self, out: &mut Vec<u8>, request_id: u64, opcode: Option<Opcode>) {
        let response = ErrorResponse {
            code: self.code,
            arg0: self.arg0,
            arg1: self.arg1,
            message: &self.message,
        };
        encode_error(out, request_id, opcode, &response);
    }
}
