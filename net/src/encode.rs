//! Encoding: typed requests and responses into whole frames appended to a `Vec<u8>`.
//!
//! Encoders write what they are given. Values the wire cannot represent (a name longer than
//! 65535 bytes) are bugs and panic; values a peer's limits refuse (a name longer than
//! `name_bytes_max`) are the caller's to avoid ([`check_name`](crate::check_name),
//! [`AppendBuilder`](crate::AppendBuilder) check them).

use crate::frame::{begin_frame, finish_frame, finish_frame_before, Flags};
use crate::map::Chain;
use crate::message::{
    padded, AppendRequest, DescribeLogResponse, ErrorResponse, GetMapResponse, HelloResponse,
    LogEntries, LogRef, Opcode, ReadResponse, ReplicateHeader, ReplicateRequest, Request, Response,
    TailResponse,
};
use crate::{ERROR_MESSAGE_BYTES_MAX, HELLO_MAGIC, LABEL_BYTES_MAX};

/// Appends the head of a REPLICATE request frame to `out`: the frame header and the REPLICATE
/// header of `count` records whose bytes, `records`, are **not** copied: the frame's length and
/// CRC cover them, and the caller sends them right after the head (from where they are
/// stored: zero-copy forwarding). `records` must be `count` records in the stamped form
/// PROTOCOL.md 6.11 describes (a receiver checks them; empty for kinds other than RECORDS).
pub fn encode_replicate_head(
    out: &mut Vec<u8>,
    request_id: u64,
    header: &ReplicateHeader,
    count: u32,
    records: &[u8],
) {
    let start = begin_frame(out, Opcode::Replicate as u16, Flags::NONE, request_id);
    replicate_header(out, header, count);
    finish_frame_before(out, start, records);
}

fn replicate_header(out: &mut Vec<u8>, header: &ReplicateHeader, count: u32) {
    for field in [
        header.log_id,
        header.epoch,
        header.first_lsn,
        header.committed_lsn,
        header.fencing_token,
        header.writer_id,
        header.writer_seq,
        header.trim_before,
    ] {
        put_u64(out, field);
    }
    put_u32(out, count);
    out.push(header.kind as u8);
    out.push(0);
    put_u16(out, 0);
}

/// Appends a request frame to `out`.
pub fn encode_request(out: &mut Vec<u8>, request_id: u64, request: &Request<'_>) {
    let start = begin_frame(out, request.opcode() as u16, Flags::NONE, request_id);
    match *request {
        Request::Hello(hello) => {
            put_u32(out, HELLO_MAGIC);
            put_u16(out, hello.min_version);
            put_u16(out, hello.max_version);
        }
        Request::Append(AppendRequest { header, records }) => {
            for field in [
                header.log_id,
                header.epoch,
                header.expected_lsn,
                header.fencing_token,
                header.writer_id,
                header.writer_seq,
            ] {
                put_u64(out, field);
            }
            put_u32(out, records.count());
            put_u32(out, 0);
            out.extend_from_slice(records.bytes());
        }
        Request::Read(read) => {
            put_u64(out, read.log_id);
            put_u64(out, read.from_lsn);
            put_u32(out, read.max_records);
            put_u32(out, read.max_bytes);
        }
        Request::Subscribe(subscribe) => {
            put_u64(out, subscribe.log_id);
            put_u64(out, subscribe.from_lsn);
            put_u32(out, subscribe.credit_records);
            put_u32(out, 0);
        }
        Request::Credit(credit) => {
            put_u64(out, credit.subscription_id);
            put_u32(out, credit.records);
            put_u32(out, 0);
        }
        Request::Unsubscribe(unsubscribe) => put_u64(out, unsubscribe.subscription_id),
        Request::CheckTail { log_id }
        | Request::TailHint { log_id }
        | Request::DeleteLog { log_id } => put_u64(out, log_id),
        Request::Trim(trim) => {
            put_u64(out, trim.log_id);
            put_u64(out, trim.before_lsn);
        }
        Request::CreateLog(create) => {
            out.push(create.replication_factor);
            out.push(0);
            put_u16(out, name_len(create.name));
            out.extend_from_slice(create.name.as_bytes());
        }
        Request::DescribeLog(describe) => {
            let (by, log_id, name) = match describe.by {
                LogRef::Id(log_id) => (0, log_id, ""),
                LogRef::Name(name) => (1, 0, name),
            };
            out.push(by);
            out.push(0);
            put_u16(out, name_len(name));
            put_u64(out, log_id);
            out.extend_from_slice(name.as_bytes());
        }
        Request::ListLogs(list) => {
            put_u64(out, list.after_log_id);
            put_u32(out, list.max);
            put_u32(out, 0);
        }
        Request::Peer(peer) => put_u64(out, peer.node_id),
        Request::Replicate(ReplicateRequest {
            header,
            records,
            keys,
        }) => {
            let count = records.count() + keys.count() as u32;
            replicate_header(out, &header, count);
            out.extend_from_slice(records.bytes());
            out.extend_from_slice(keys.bytes());
        }
        Request::RegisterNode(register) => {
            put_u64(out, register.node_id);
            put_u16(out, register.shard_count);
            put_u16(out, addr_len(register.addr));
            put_u32(out, 0);
            out.extend_from_slice(register.addr.as_bytes());
            // Without labels the body ends here, as before labels existed, so that a node
            // without them still registers with a controller that predates them.
            if !register.zone.is_empty() || !register.rack.is_empty() {
                for label in [register.zone, register.rack] {
                    out.push(label_len(label));
                    out.extend_from_slice(label.as_bytes());
                }
            }
        }
        Request::Heartbeat(heartbeat) => {
            put_u64(out, heartbeat.node_id);
            put_u64(out, heartbeat.applied_version);
            put_u64(out, heartbeat.suspect);
        }
        Request::GetMap(get) => {
            put_u64(out, get.after_log_id);
            put_u32(out, get.max);
            put_u32(out, 0);
        }
        Request::Seal(seal) => {
            put_u64(out, seal.log_id);
            put_u64(out, seal.epoch);
        }
        Request::ReconfigureLog(reconfigure) => {
            put_u64(out, reconfigure.log_id);
            put_u64(out, reconfigure.epoch);
            chain_body(out, reconfigure.chain);
        }
        Request::DrainNode(drain) => {
            put_u64(out, drain.node_id);
            out.push(u8::from(drain.drained));
            out.extend_from_slice(&[0; 7]);
        }
        Request::Pull(pull) => {
            put_u64(out, pull.log_id);
            put_u64(out, pull.epoch);
            put_u64(out, pull.from_lsn);
            put_u32(out, pull.max_records);
            out.push(u8::from(pull.learner));
            out.extend_from_slice(&[0; 3]);
        }
    }
    finish_frame(out, start);
}

/// Appends a response (or push) frame answering `request_id`, a request with `opcode`, to
/// `out`. Panics if the response is not one to `opcode` (a bug).
pub fn encode_response(
    out: &mut Vec<u8>,
    request_id: u64,
    opcode: Opcode,
    response: &Response<'_>,
) {
    if let Some(answers) = response.opcode() {
        assert_eq!(
            answers, opcode,
            "a {answers} response to a {opcode} request"
        );
    }
    let start = begin_frame(out, opcode as u16, response.flags(), request_id);
    match *response {
        Response::Hello(hello) => hello_body(out, &hello),
        Response::Append(append) => {
            put_u64(out, append.first_lsn);
            put_u32(out, append.count);
            put_u32(out, 0);
        }
        Response::Read(read) => read_body(out, &read),
        Response::Push(push) => read_body(out, &push.batch),
        Response::Subscribe(subscribe) => put_u64(out, subscribe.start_lsn),
        Response::Credit
        | Response::Unsubscribe
        | Response::Trim
        | Response::DeleteLog
        | Response::Peer => {}
        Response::CheckTail(tail) | Response::TailHint(tail) => tail_body(out, &tail),
        Response::CreateLog(create) => {
            put_u64(out, create.log_id);
            put_u16(out, create.shard);
            put_u16(out, 0);
            put_u32(out, 0);
        }
        Response::DescribeLog(describe) => describe_body(out, &describe),
        Response::ListLogs(list) => list_body(out, list.entries),
        Response::Replicate(replicate) => {
            put_u64(out, replicate.log_id);
            put_u64(out, replicate.durable_lsn);
            put_u64(out, replicate.trim_point);
            put_u64(out, replicate.next_lsn);
        }
        Response::RegisterNode(version)
        | Response::Heartbeat(version)
        | Response::DrainNode(version) => {
            put_u64(out, version.map_version);
        }
        Response::ReconfigureLog(epoch) => {
            put_u64(out, epoch.log_id);
            put_u64(out, epoch.epoch);
            put_u64(out, epoch.start_lsn);
            chain_body(out, epoch.chain);
        }
        Response::GetMap(map) => map_body(out, &map),
        Response::Seal(seal) => {
            for field in [seal.log_id, seal.epoch, seal.end_lsn, seal.trim_point] {
                put_u64(out, field);
            }
        }
        Response::Pull(pull) => {
            for field in [
                pull.log_id,
                pull.epoch,
                pull.first_lsn,
                pull.next_lsn,
                pull.fencing_token,
                pull.writer_id,
                pull.writer_seq,
            ] {
                put_u64(out, field);
            }
            put_u32(out, pull.records.count());
            out.push(u8::from(pull.more));
            out.push(0);
            put_u16(out, pull.keys.count() as u16);
            out.extend_from_slice(pull.records.bytes());
            out.extend_from_slice(pull.keys.bytes());
        }
        Response::Error(error) | Response::PushError(error) => error_body(out, &error),
    }
    finish_frame(out, start);
}

/// Appends an ERROR frame answering `request_id`, a request with `opcode`; `None` for a
/// connection-level error (opcode 0: the request could not be identified). A message longer
/// than 1024 bytes is cut at the last character boundary before it.
pub fn encode_error(
    out: &mut Vec<u8>,
    request_id: u64,
    opcode: Option<Opcode>,
    error: &ErrorResponse<'_>,
) {
    let opcode = opcode.map_or(0, |opcode| opcode as u16);
    let start = begin_frame(out, opcode, Flags::RESPONSE | Flags::ERROR, request_id);
    error_body(out, error);
    finish_frame(out, start);
}

fn hello_body(out: &mut Vec<u8>, hello: &HelloResponse) {
    put_u16(out, hello.version);
    put_u16(out, hello.shard_index);
    put_u16(out, hello.shard_count);
    put_u16(out, hello.role as u16);
    put_u32(out, hello.frame_bytes_max);
    put_u32(out, hello.record_bytes_max);
    put_u32(out, hello.batch_records_max);
    put_u32(out, 0);
    put_u64(out, hello.node_id);
}

fn read_body(out: &mut Vec<u8>, read: &ReadResponse<'_>) {
    put_u64(out, read.tail);
    put_u32(out, read.records.count());
    put_u32(out, 0);
    out.extend_from_slice(read.records.bytes());
}

fn tail_body(out: &mut Vec<u8>, tail: &TailResponse) {
    put_u64(out, tail.tail);
    put_u64(out, tail.trim_point);
    put_u64(out, tail.epoch);
}

fn describe_body(out: &mut Vec<u8>, describe: &DescribeLogResponse<'_>) {
    put_u64(out, describe.log_id);
    put_u64(out, describe.tail);
    put_u64(out, describe.trim_point);
    put_u64(out, describe.epoch);
    put_u16(out, describe.shard);
    out.push(describe.replication_factor);
    out.push(0);
    put_u16(out, name_len(describe.name));
    put_u16(out, 0);
    out.extend_from_slice(describe.name.as_bytes());
}

fn list_body(out: &mut Vec<u8>, entries: LogEntries<'_>) {
    put_u32(out, entry_count(entries.len()));
    put_u32(out, 0);
    for entry in entries {
        put_u64(out, entry.log_id);
        put_u16(out, name_len(entry.name));
        put_u16(out, 0);
        put_u32(out, 0);
        put_padded(out, entry.name.as_bytes());
    }
}

fn map_body(out: &mut Vec<u8>, map: &GetMapResponse<'_>) {
    put_u64(out, map.version);
    put_u32(out, entry_count(map.nodes.len()));
    put_u32(out, entry_count(map.logs.len()));
    put_u64(out, 0);
    for node in map.nodes {
        put_u64(out, node.node_id);
        put_u16(out, node.shard_count);
        put_u16(out, addr_len(node.addr));
        out.push(u8::from(node.alive));
        out.push(u8::from(node.drained));
        out.push(label_len(node.zone));
        out.push(label_len(node.rack));
        put_u64(out, node.last_heartbeat_ms);
        let strings = [node.addr, node.zone, node.rack];
        strings
            .iter()
            .for_each(|s| out.extend_from_slice(s.as_bytes()));
        put_padding(out, strings.iter().map(|s| s.len()).sum());
    }
    for log in map.logs {
        put_u64(out, log.log_id);
        put_u64(out, log.epoch);
        put_u64(out, log.start_lsn);
        out.push(log.replication_factor);
        out.push(u8::try_from(log.chain.len()).expect("a chain has at most 255 nodes"));
        put_u16(out, name_len(log.name));
        out.push(u8::try_from(log.learners.len()).expect("at most 255 learners"));
        out.extend_from_slice(&[0; 3]);
        put_u64(out, log.created_version);
        put_u64(out, log.trim_lsn);
        for node_id in log.chain.iter().chain(log.learners.iter()) {
            put_u64(out, node_id);
        }
        put_padded(out, log.name.as_bytes());
    }
}

/// `chain_len` (u8), 7 reserved bytes, then the chain's node ids.
fn chain_body(out: &mut Vec<u8>, chain: Chain<'_>) {
    out.push(u8::try_from(chain.len()).expect("a chain has at most 255 nodes"));
    out.extend_from_slice(&[0; 7]);
    for node_id in chain {
        put_u64(out, node_id);
    }
}

fn error_body(out: &mut Vec<u8>, error: &ErrorResponse<'_>) {
    let message = truncate_message(error.message);
    put_u16(out, error.code as u16);
    out.push(u8::from(error.code.is_retryable()));
    out.push(0);
    put_u32(out, message.len() as u32); // at most 1024
    put_u64(out, error.arg0);
    put_u64(out, error.arg1);
    out.extend_from_slice(message.as_bytes());
}

/// `message` cut to at most [`ERROR_MESSAGE_BYTES_MAX`] bytes, at a character boundary.
fn truncate_message(message: &str) -> &str {
    if message.len() <= ERROR_MESSAGE_BYTES_MAX {
        return message;
    }
    let mut end = ERROR_MESSAGE_BYTES_MAX;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    &message[..end]
}

fn name_len(name: &str) -> u16 {
    u16::try_from(name.len()).expect("a log name is at most 65535 bytes")
}

fn addr_len(addr: &str) -> u16 {
    u16::try_from(addr.len()).expect("a node address is at most 65535 bytes")
}

fn label_len(label: &str) -> u8 {
    assert!(
        label.len() <= usize::from(LABEL_BYTES_MAX),
        "a label of {} bytes, above {LABEL_BYTES_MAX}",
        label.len()
    );
    label.len() as u8
}

fn entry_count(len: usize) -> u32 {
    u32::try_from(len).expect("entries fit a u32")
}

/// `bytes`, then zeros up to a multiple of 8.
fn put_padded(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(bytes);
    put_padding(out, bytes.len());
}

/// Zeros after `len` bytes, up to a multiple of 8.
fn put_padding(out: &mut Vec<u8>, len: usize) {
    out.extend_from_slice(&[0; 7][..padded(len) - len]);
}

fn put_u16(out: &mut Vec<u8>, value: u16) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_at_a_character_boundary() {
        let ascii = "a".repeat(2000);
        assert_eq!(truncate_message(&ascii).len(), 1024);
        // 'é' is two bytes: 1023 'a' then 'é' straddles the limit.
        let straddling = format!("{}é", "a".repeat(1023));
        assert_eq!(truncate_message(&straddling).len(), 1023);
        assert_eq!(truncate_message("short"), "short");
    }
}
