//! A raw protocol connection for tests that send bad bytes on purpose: frames built by hand
//! (any field can be wrong), a connection that sends anything and reads the server's frames
//! one by one, or to EOF (a node's or the controller's: both speak PROTOCOL.md).

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};

use chainlog::net::{
    decode_response, encode_request, parse_frame, ErrorCode, HelloRequest, Limits, Opcode, Request,
    Response,
};

use super::SOCKET_TIMEOUT;

/// A frame with a correct CRC.
pub(crate) fn frame(opcode: u16, flags: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(24 + body.len());
    f.extend_from_slice(&(20 + body.len() as u32).to_le_bytes());
    f.extend_from_slice(&opcode.to_le_bytes());
    f.extend_from_slice(&flags.to_le_bytes());
    f.extend_from_slice(&request_id.to_le_bytes());
    f.extend_from_slice(&[0; 8]);
    f.extend_from_slice(body);
    fix_crc(&mut f);
    f
}

/// Recomputes a frame's CRC after its bytes were changed.
pub(crate) fn fix_crc(f: &mut [u8]) {
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f[4..16]), &f[24..]);
    f[16..20].copy_from_slice(&crc.to_le_bytes());
}

/// The encoder's frame for `request`.
pub(crate) fn request(request_id: u64, request: &Request<'_>) -> Vec<u8> {
    let mut out = Vec::new();
    encode_request(&mut out, request_id, request);
    out
}

/// A frame the server sent, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Answer {
    /// An ERROR (flags RESPONSE|ERROR).
    Error {
        opcode: u16,
        request_id: u64,
        code: ErrorCode,
        arg0: u64,
        arg1: u64,
        message: String,
    },
    /// Any other response, summarized.
    Ok {
        opcode: u16,
        request_id: u64,
        what: String,
    },
}

pub(crate) struct Raw {
    pub(crate) stream: TcpStream,
    pub(crate) input: Vec<u8>,
}

impl Raw {
    pub(crate) fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(SOCKET_TIMEOUT))
            .expect("read timeout");
        stream
            .set_write_timeout(Some(SOCKET_TIMEOUT))
            .expect("write timeout");
        stream.set_nodelay(true).expect("nodelay");
        Raw {
            stream,
            input: Vec::new(),
        }
    }

    /// Connected and past the handshake.
    pub(crate) fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        raw.send(&request(1, &Request::Hello(HelloRequest::CURRENT)));
        match raw.next() {
            Some(Answer::Ok {
                opcode,
                request_id: 1,
                ..
            }) if opcode == Opcode::Hello as u16 => raw,
            other => panic!("HELLO answered with {other:?}"),
        }
    }

    /// Sends `bytes`; a node that already closed the connection may refuse them, which is
    /// not an error here (what it answered before closing is still read).
    pub(crate) fn send(&mut self, bytes: &[u8]) {
        match self.stream.write_all(bytes) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset) => {}
            Err(e) => panic!("send: {e}"),
        }
    }

    /// The next frame, or None at EOF (or a reset: the node closed with our bytes unread).
    pub(crate) fn next(&mut self) -> Option<Answer> {
        self.next_frame(false)
    }

    /// As [`Raw::next`], and None also when the node sends nothing for the socket's read
    /// timeout (it keeps silent; the caller chose how long to listen).
    pub(crate) fn next_or_silent(&mut self) -> Option<Answer> {
        self.next_frame(true)
    }

    fn next_frame(&mut self, silence_ends: bool) -> Option<Answer> {
        loop {
            if let Some(frame) =
                parse_frame(&self.input, &Limits::DEFAULT).expect("the node sends valid frames")
            {
                let len = frame.frame_bytes();
                let response =
                    decode_response(&frame, &Limits::DEFAULT).expect("a decodable response");
                let answer = match response {
                    Response::Error(e) => Answer::Error {
                        opcode: frame.opcode,
                        request_id: frame.request_id,
                        code: e.code,
                        arg0: e.arg0,
                        arg1: e.arg1,
                        message: e.message.to_string(),
                    },
                    other => Answer::Ok {
                        opcode: frame.opcode,
                        request_id: frame.request_id,
                        what: summarize(&other),
                    },
                };
                self.input.drain(..len);
                return Some(answer);
            }
            let mut chunk = [0u8; 64 << 10];
            match self.stream.read(&mut chunk) {
                Ok(0) => {
                    assert!(self.input.is_empty(), "EOF inside a frame");
                    return None;
                }
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => {
                    assert!(self.input.is_empty(), "reset inside a frame");
                    return None;
                }
                Err(e)
                    if silence_ends
                        && matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) =>
                {
                    return None;
                }
                Err(e) => panic!("receive (the node did not answer or close): {e}"),
            }
        }
    }

    /// Expects an ERROR with exactly these fields; returns it for the record.
    pub(crate) fn expect_error(
        &mut self,
        opcode: u16,
        request_id: u64,
        code: ErrorCode,
        arg0: u64,
        arg1: u64,
    ) -> String {
        match self.next() {
            Some(Answer::Error {
                opcode: o,
                request_id: r,
                code: c,
                arg0: a0,
                arg1: a1,
                message,
            }) => {
                assert_eq!(
                    (o, r, c, a0, a1),
                    (opcode, request_id, code, arg0, arg1),
                    "ERROR fields (opcode, request_id, code, arg0, arg1); message {message:?}"
                );
                format!(
                    "{} (opcode {o}, request_id {r}, arg0 {}, arg1 {}) {message:?}",
                    c.name(),
                    arg(a0),
                    arg(a1)
                )
            }
            other => panic!("expected {} (opcode {opcode}), got {other:?}", code.name()),
        }
    }

    /// Expects the node to close the connection, having sent nothing more.
    pub(crate) fn expect_closed(&mut self) -> &'static str {
        if let Some(extra) = self.next() {
            panic!("the connection must close, but the node sent {extra:?}");
        }
        "closed"
    }
}

pub(crate) fn arg(v: u64) -> String {
    if v == u64::MAX {
        "MAX".to_string()
    } else {
        v.to_string()
    }
}

pub(crate) fn summarize(r: &Response<'_>) -> String {
    match r {
        Response::Append(a) => format!("APPEND ok first_lsn {} count {}", a.first_lsn, a.count),
        Response::Read(r) => format!("READ ok tail {} count {}", r.tail, r.records.count()),
        Response::Hello(h) => format!("HELLO ok shard {}/{}", h.shard_index, h.shard_count),
        Response::CheckTail(t) => format!("CHECK_TAIL ok tail {}", t.tail),
        Response::ListLogs(l) => format!("LIST_LOGS ok {} entries", l.entries.len()),
        Response::Push(p) => format!(
            "PUSH{} count {}",
            if p.end { " END" } else { "" },
            p.batch.records.count()
        ),
        other => format!("{:?} ok", other.opcode()),
    }
}
