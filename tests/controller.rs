//! The real `chainlog controller` binary on loopback, driven by the blocking controller client
//! (`chainlog::controller::client`) and by raw frames (`common::raw`): hostile input that must not disturb a
//! good client, and a damaged state file that must stop the controller with a clear error.
//! Each test stops the controller it started, by PID.

mod common;

use std::time::Duration;

use chainlog::controller::client::{Client as ControllerClient, ClientError};
use chainlog::net::{ErrorCode, HelloRequest, Limits, Opcode, Request};
use common::raw::{frame, request, Answer, Raw};
use common::Controller;

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

/// Expects `raw` to get `code` as the answer to `request_id` (0: a connection-level error),
/// then to be closed.
fn expect_refused_and_closed(raw: &mut Raw, request_id: u64, code: ErrorCode) {
    match raw.next() {
        Some(Answer::Error {
            request_id: r,
            code: c,
            ..
        }) if (r, c) == (request_id, code) => {}
        other => panic!("expected {code} for request {request_id}, got {other:?}"),
    }
    raw.expect_closed();
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
    expect_refused_and_closed(&mut raw, 0, ErrorCode::Malformed);
    // A well-formed frame that is not HELLO, first.
    let mut raw = Raw::connect(controller.addr);
    raw.send(&frame(Opcode::ListLogs as u16, 0, 7, &[0; 16]));
    expect_refused_and_closed(&mut raw, 7, ErrorCode::Malformed);
    // After HELLO: a bad CRC, a length above the limit, an unknown opcode, a short body, a
    // second HELLO.
    let list = Opcode::ListLogs as u16;
    let mut bad_crc = frame(list, 0, 2, &[0; 16]);
    bad_crc[30] ^= 1;
    let too_long = (Limits::DEFAULT.frame_bytes_max).to_le_bytes();
    for (bytes, id) in [
        (bad_crc, 0),
        (too_long.to_vec(), 0),
        (frame(999, 0, 4, &[]), 4),
        (frame(list, 0, 5, &[0; 3]), 5),
        (request(6, &Request::Hello(HelloRequest::CURRENT)), 6),
    ] {
        let mut raw = Raw::greeted(controller.addr);
        raw.send(&bytes);
        expect_refused_and_closed(&mut raw, id, ErrorCode::Malformed);
        assert_eq!(good.list_logs().expect("still served"), []);
    }
    // A request only nodes serve: refused, the connection stays open.
    let mut raw = Raw::greeted(controller.addr);
    let log_id = chainlog::client::log_id("a");
    raw.send(&request(9, &Request::CheckTail { log_id }));
    raw.expect_error(
        Opcode::CheckTail as u16,
        9,
        ErrorCode::Malformed,
        u64::MAX,
        0,
    );

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
