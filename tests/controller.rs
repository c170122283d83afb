//! The real `chainlog controller` binary on loopback, driven by the blocking controller client
//! (`chainlog::controller::client`) and by raw frames: hostile input that must not disturb a
//! good client, and a damaged state file that must stop the controller with a clear error.
//! Each test stops the controller it started, by PID.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use chainlog::controller::client::{Client as ControllerClient, ClientError};
use chainlog::net::{
    decode_response, encode_request, parse_frame, ErrorCode, HelloRequest, Limits, Request,
    Response,
};
use common::{Controller, SOCKET_TIMEOUT};

/// The blocking client's timeout: a guard against hanging, never a timing assertion.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

fn connect(controller: &Controller) -> ControllerClient {
    ControllerClient::connect(controller.addr, CALL_TIMEOUT).expect("connect")
}

/// The code of a server ERROR.
fn code<T: std::fmt::Debug>(result: Result<T, ClientError>) -> ErrorCode {
    match result {
        Err(ClientError::Server(e)) => e.code,
        other => panic!("expected a server error, got {other:?}"),
    }
}

/// A raw connection: bytes in, frames out.
struct Raw {
    stream: TcpStream,
    input: Vec<u8>,
}

impl Raw {
    fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr).expect("connect");
        stream
            .set_read_timeout(Some(SOCKET_TIMEOUT))
            .expect("timeout");
        Raw {
            stream,
            input: Vec::new(),
        }
    }

    fn greeted(addr: SocketAddr) -> Raw {
        let mut raw = Raw::connect(addr);
        let mut hello = Vec::new();
        encode_request(&mut hello, 1, &Request::Hello(HelloRequest::CURRENT));
        raw.send(&hello);
        let (id, answer) = raw.next().expect("a HELLO answer");
        assert_eq!((id, answer.as_str()), (1, "HELLO"));
        raw
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// The next frame as (request id, opcode name or error code name), or `None` once the
    /// controller closed the connection.
    fn next(&mut self) -> Option<(u64, String)> {
        loop {
            let limits = Limits::DEFAULT;
            if let Some(frame) = parse_frame(&self.input, &limits).expect("a valid frame") {
                let len = frame.frame_bytes();
                let id = frame.request_id;
                let what = match decode_response(&frame, &limits).expect("a valid response") {
                    Response::Error(e) => e.code.name().to_string(),
                    other => other.opcode().expect("an opcode").name().to_string(),
                };
                self.input.drain(..len);
                return Some((id, what));
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.input.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                Err(e) => panic!("receive: {e}"),
            }
        }
    }

    /// The connection got `code` as a connection-level error (request id 0) or as the answer
    /// to `request_id`, and was then closed.
    fn expect_refused_and_closed(&mut self, request_id: u64, code: ErrorCode) {
        let (id, what) = self.next().expect("an error before the close");
        assert_eq!((id, what.as_str()), (request_id, code.name()));
        assert_eq!(self.next(), None, "the controller closes the connection");
    }
}

/// A frame with `body`, a correct CRC and the given header fields.
fn frame(opcode: u16, request_id: u64, body: &[u8]) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&(20 + body.len() as u32).to_le_bytes());
    f.extend_from_slice(&opcode.to_le_bytes());
    f.extend_from_slice(&0u16.to_le_bytes());
    f.extend_from_slice(&request_id.to_le_bytes());
    let crc = crc32c::crc32c_append(crc32c::crc32c(&f[4..16]), body);
    f.extend_from_slice(&crc.to_le_bytes());
    f.extend_from_slice(&0u32.to_le_bytes());
    f.extend_from_slice(body);
    f
}

#[test]
fn hostile_input_is_refused_and_a_good_client_keeps_being_served() {
    let dir = tempfile::tempdir().expect("tempdir");
    let controller = Controller::start(&dir.path().join("controller"), &[]);
    let mut good = connect(&controller);
    assert_eq!(good.list_logs().expect("list"), []);

    // Garbage before HELLO: a framing error, answered at connection level.
    let mut raw = Raw::connect(controller.addr);
    raw.send(b"GET / HTTP/1.1\r\nHost: controller\r\n\r\n");
    raw.expect_refused_and_closed(0, ErrorCode::Malformed);
    // A well-formed frame that is not HELLO, first.
    let mut raw = Raw::connect(controller.addr);
    raw.send(&frame(12, 7, &[0; 16]));
    raw.expect_refused_and_closed(7, ErrorCode::Malformed);
    // After HELLO: a bad CRC, a length above the limit, an unknown opcode, a short body, a
    // second HELLO.
    let mut bad_crc = frame(12, 2, &[0; 16]);
    bad_crc[30] ^= 1;
    let too_long = (Limits::DEFAULT.frame_bytes_max).to_le_bytes();
    let mut second_hello = Vec::new();
    encode_request(&mut second_hello, 6, &Request::Hello(HelloRequest::CURRENT));
    for (bytes, id) in [
        (bad_crc, 0),
        (too_long.to_vec(), 0),
        (frame(999, 4, &[]), 4),
        (frame(12, 5, &[0; 3]), 5),
        (second_hello, 6),
    ] {
        let mut raw = Raw::greeted(controller.addr);
        raw.send(&bytes);
        raw.expect_refused_and_closed(id, ErrorCode::Malformed);
        assert_eq!(good.list_logs().expect("still served"), []);
    }
    // A request only nodes serve: refused, the connection stays open.
    let mut raw = Raw::greeted(controller.addr);
    let mut read = Vec::new();
    encode_request(
        &mut read,
        9,
        &Request::CheckTail {
            log_id: chainlog::client::log_id("a"),
        },
    );
    raw.send(&read);
    let (id, _) = raw.next().expect("an answer");
    assert_eq!(id, 9);

    // A log needs live nodes; none has registered.
    assert_eq!(code(good.create_log("a", 1)), ErrorCode::TooLarge);
    assert_eq!(code(good.describe_log("a")), ErrorCode::UnknownLog);
    assert_eq!(code(good.delete_log(1)), ErrorCode::UnknownLog);
    assert!(matches!(
        good.create_log("", 1),
        Err(ClientError::Invalid(_))
    ));
    assert_eq!(good.list_logs().expect("list"), []);
    assert!(controller.terminate().success(), "exit 0 on SIGTERM");
}

#[test]
fn a_damaged_state_file_stops_the_controller_with_an_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("controller");
    let controller = Controller::start(&data, &[]);
    assert!(controller.terminate().success());
    let state = data.join("state");
    std::fs::write(&state, b"not a state file").expect("write");
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_chainlog"))
        .args(["controller", "--listen", "127.0.0.1:0", "--data-dir"])
        .arg(&data)
        .output()
        .expect("run");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&*state.to_string_lossy())
            && stderr.contains("not a chainlog controller state file"),
        "{stderr}"
    );
}
