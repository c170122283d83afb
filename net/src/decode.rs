//! Decoding: a parsed [`Frame`] into a typed [`Request`] or [`Response`] that borrows from
//! it. Bodies are read with a bounds-checked cursor; every field the protocol constrains is
//! checked (reserved fields zero, names well-formed, records intact), bodies must end exactly
//! where their fields say, and nothing is allocated.

use crate::error::ErrorCode;
use crate::frame::{Flags, Frame};
use crate::keys::Keys;
use crate::map::{
    Chain, MapLog, MapLogs, MapNode, MapNodes, LOG_ENTRY_HEADER_BYTES, MAP_HEADER_BYTES,
    NODE_ENTRY_HEADER_BYTES,
};
use crate::message::{
    padded, AppendHeader, AppendRequest, AppendResponse, CreateLogRequest, CreateLogResponse,
    CreditRequest, DescribeLogRequest, DescribeLogResponse, DrainNodeRequest, ErrorResponse,
    GetMapRequest, GetMapResponse, HeartbeatRequest, HelloRequest, HelloResponse, ListLogsRequest,
    ListLogsResponse, LogEntries, LogRef, MapVersionResponse, Opcode, PeerRequest, PullRequest,
    PullResponse, Push, ReadRequest, ReadResponse, ReconfigureLogRequest, ReconfigureLogResponse,
    RegisterNodeRequest, ReplicateHeader, ReplicateKind, ReplicateRequest, ReplicateResponse,
    Request, Response, Role, SealRequest, SealResponse, SubscribeRequest, SubscribeResponse,
    TailResponse, TrimRequest, UnsubscribeRequest, ENTRY_HEADER_BYTES, PULL_REQUEST_BYTES,
    PULL_RESPONSE_HEADER_BYTES, RECONFIGURE_REQUEST_HEADER_BYTES,
    RECONFIGURE_RESPONSE_HEADER_BYTES, REPLICATE_HEADER_BYTES,
};
use crate::records::{RecordForm, Records};
use crate::{
    Error, Limits, ADDR_BYTES_MAX, ERROR_MESSAGE_BYTES_MAX, HELLO_MAGIC, LABEL_BYTES_MAX,
    PROTOCOL_VERSION, WRITER_NONE,
};

/// Decodes a request frame (flags must be 0). The caller answers an error with
/// [`Error::response`]; MALFORMED ones close the connection.
pub fn decode_request<'a>(frame: &Frame<'a>, limits: &Limits) -> Result<Request<'a>, Error> {
    let Some(opcode) = Opcode::from_u16(frame.opcode) else {
        return Err(Error::UnknownOpcode {
            opcode: frame.opcode,
        });
    };
    if frame.flags != Flags::NONE {
        return Err(Error::UnexpectedFlags {
            opcode: frame.opcode,
            flags: frame.flags.bits(),
        });
    }
    let mut r = Reader::new(frame.body, frame.opcode);
    let request = match opcode {
        Opcode::Hello => Request::Hello(hello_request(&mut r)?),
        Opcode::Append => Request::Append(append_request(&mut r, limits)?),
        Opcode::Read => {
            r.need(24)?;
            Request::Read(ReadRequest {
                log_id: r.u64()?,
                from_lsn: r.u64()?,
                max_records: r.u32()?,
                max_bytes: r.u32()?,
            })
        }
        Opcode::Subscribe => {
            r.need(24)?;
            let request = SubscribeRequest {
                log_id: r.u64()?,
                from_lsn: r.u64()?,
                credit_records: r.u32()?,
            };
            r.reserved_u32("reserved")?;
            Request::Subscribe(request)
        }
        Opcode::Credit => {
            r.need(16)?;
            let request = CreditRequest {
                subscription_id: r.u64()?,
                records: r.u32()?,
            };
            r.reserved_u32("reserved")?;
            Request::Credit(request)
        }
        Opcode::Unsubscribe => Request::Unsubscribe(UnsubscribeRequest {
            subscription_id: r.u64()?,
        }),
        Opcode::CheckTail => Request::CheckTail { log_id: r.u64()? },
        Opcode::TailHint => Request::TailHint { log_id: r.u64()? },
        Opcode::Trim => {
            r.need(16)?;
            Request::Trim(TrimRequest {
                log_id: r.u64()?,
                before_lsn: r.u64()?,
            })
        }
        Opcode::CreateLog => {
            r.need(4)?;
            let replication_factor = r.u8()?;
            r.reserved_u8("reserved")?;
            let name = r.name(limits)?;
            Request::CreateLog(CreateLogRequest {
                replication_factor,
                name,
            })
        }
        Opcode::DescribeLog => Request::DescribeLog(describe_request(&mut r, limits)?),
        Opcode::ListLogs => {
            r.need(16)?;
            let request = ListLogsRequest {
                after_log_id: r.u64()?,
                max: r.u32()?,
            };
            r.reserved_u32("reserved")?;
            Request::ListLogs(request)
        }
        Opcode::DeleteLog => Request::DeleteLog { log_id: r.u64()? },
        Opcode::Peer => Request::Peer(PeerRequest {
            node_id: r.node_id("node_id")?,
        }),
        Opcode::Replicate => Request::Replicate(replicate_request(&mut r, limits)?),
        Opcode::Pull => Request::Pull(pull_request(&mut r, limits)?),
        Opcode::Seal => {
            r.need(16)?;
            Request::Seal(SealRequest {
                log_id: r.u64()?,
                epoch: r.u64()?,
            })
        }
        Opcode::RegisterNode => {
            r.need(16)?;
            let node_id = r.node_id("node_id")?;
            let shard_count = r.u16()?;
            let addr_len = r.u16()?;
            r.reserved_u32("reserved")?;
            if shard_count == 0 {
                return Err(r.invalid("shard_count", 0));
            }
            let addr = r.addr(addr_len, "addr_len")?;
            // The labels came later: a body that ends after the address has none.
            let (zone, rack) = if r.pos == r.body.len() {
                ("", "")
            } else {
                let zone_len = r.u8()?;
                let zone = r.label(zone_len, "zone_len")?;
                let rack_len = r.u8()?;
                (zone, r.label(rack_len, "rack_len")?)
            };
            Request::RegisterNode(RegisterNodeRequest {
                node_id,
                shard_count,
                addr,
                zone,
                rack,
            })
        }
        Opcode::Heartbeat => {
            r.need(24)?;
            Request::Heartbeat(HeartbeatRequest {
                node_id: r.node_id("node_id")?,
                applied_version: r.u64()?,
                suspect: r.u64()?,
            })
        }
        Opcode::GetMap => {
            r.need(16)?;
            let request = GetMapRequest {
                after_log_id: r.u64()?,
                max: r.u32()?,
            };
            r.reserved_u32("reserved")?;
            Request::GetMap(request)
        }
        Opcode::ReconfigureLog => {
            r.need(RECONFIGURE_REQUEST_HEADER_BYTES)?;
            let log_id = r.u64()?;
            let epoch = r.u64()?;
            let chain = chain(&mut r, true)?;
            Request::ReconfigureLog(ReconfigureLogRequest {
                log_id,
                epoch,
                chain,
            })
        }
        Opcode::DrainNode => {
            r.need(16)?;
            let node_id = r.node_id("node_id")?;
            let drained = match r.u8()? {
                0 => false,
                1 => true,
                other => return Err(r.invalid("drain", u64::from(other))),
            };
            r.reserved_u8("reserved0")?;
            r.reserved_u16("reserved1")?;
            r.reserved_u32("reserved2")?;
            Request::DrainNode(DrainNodeRequest { node_id, drained })
        }
    };
    r.finish()?;
    Ok(request)
}

fn hello_request(r: &mut Reader<'_>) -> Result<HelloRequest, Error> {
    r.need(8)?;
    let magic = r.u32()?;
    if magic != HELLO_MAGIC {
        return Err(Error::BadMagic { magic });
    }
    let min_version = r.u16()?;
    let max_version = r.u16()?;
    if min_version > max_version {
        return Err(r.invalid("min_version", u64::from(min_version)));
    }
    if !(min_version..=max_version).contains(&PROTOCOL_VERSION) {
        return Err(Error::UnsupportedVersion {
            min: min_version,
            max: max_version,
        });
    }
    Ok(HelloRequest {
        min_version,
        max_version,
    })
}

fn append_request<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<AppendRequest<'a>, Error> {
    r.need(crate::message::APPEND_HEADER_BYTES)?;
    let header = AppendHeader {
        log_id: r.u64()?,
        epoch: r.u64()?,
        expected_lsn: r.u64()?,
        fencing_token: r.u64()?,
        writer_id: r.u64()?,
        writer_seq: r.u64()?,
    };
    let count = r.u32()?;
    r.reserved_u32("reserved")?;
    if header.writer_id == WRITER_NONE && header.writer_seq != 0 {
        return Err(r.invalid("writer_seq", header.writer_seq));
    }
    if count == 0 {
        return Err(r.invalid("count", 0));
    }
    let records = Records::parse(r.rest(), count, RecordForm::Unstamped, limits)?;
    Ok(AppendRequest { header, records })
}

fn replicate_request<'a>(
    r: &mut Reader<'a>,
    limits: &Limits,
) -> Result<ReplicateRequest<'a>, Error> {
    r.need(REPLICATE_HEADER_BYTES)?;
    let log_id = r.u64()?;
    let epoch = r.u64()?;
    let first_lsn = r.u64()?;
    let committed_lsn = r.u64()?;
    let fencing_token = r.u64()?;
    let writer_id = r.u64()?;
    let writer_seq = r.u64()?;
    let trim_before = r.u64()?;
    let count = r.u32()?;
    let kind = r.u8()?;
    r.reserved_u8("reserved0")?;
    r.reserved_u16("reserved1")?;
    let Some(kind) = ReplicateKind::from_u8(kind) else {
        return Err(r.invalid("kind", u64::from(kind)));
    };
    if writer_id == WRITER_NONE && writer_seq != 0 {
        return Err(r.invalid("writer_seq", writer_seq));
    }
    if kind != ReplicateKind::Trim && trim_before != 0 {
        return Err(r.invalid("trim_before", trim_before));
    }
    let (records, keys) = if kind == ReplicateKind::Records {
        if count == 0 {
            return Err(r.invalid("count", 0));
        }
        let form = RecordForm::Replicated {
            log_id,
            epoch,
            first_lsn,
        };
        (Records::parse(r.rest(), count, form, limits)?, Keys::EMPTY)
    } else {
        // Only a batch of records carries the head's decisions about it, and a trim the
        // log's fencing token and idempotency keys (for a replica that skips to the trim
        // point).
        let trim = kind == ReplicateKind::Trim;
        let (token, key_count) = if trim { (0, 0) } else { (fencing_token, count) };
        for (field, value) in [
            ("fencing_token", token),
            ("writer_id", writer_id),
            ("count", u64::from(key_count)),
        ] {
            if value != 0 {
                return Err(r.invalid(field, value));
            }
        }
        let keys = if trim {
            keys(r, count as usize)?
        } else {
            Keys::EMPTY
        };
        (Records::EMPTY, keys)
    };
    Ok(ReplicateRequest {
        header: ReplicateHeader {
            log_id,
            epoch,
            first_lsn,
            committed_lsn,
            fencing_token,
            writer_id,
            writer_seq,
            trim_before,
            kind,
        },
        records,
        keys,
    })
}

/// The rest of the body as exactly `count` idempotency keys.
fn keys<'a>(r: &mut Reader<'a>, count: usize) -> Result<Keys<'a>, Error> {
    Keys::parse(r.rest(), count).map_err(|(field, value)| r.invalid(field, value))
}

fn pull_request(r: &mut Reader<'_>, limits: &Limits) -> Result<PullRequest, Error> {
    r.need(PULL_REQUEST_BYTES)?;
    let (log_id, epoch, from_lsn, max_records) = (r.u64()?, r.u64()?, r.u64()?, r.u32()?);
    let learner = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(r.invalid("learner", u64::from(other))),
    };
    let request = PullRequest {
        log_id,
        epoch,
        from_lsn,
        max_records,
        learner,
    };
    r.reserved_u8("reserved")?;
    r.reserved_u16("reserved")?;
    if request.max_records == 0 || request.max_records > limits.batch_records_max {
        return Err(r.invalid("max_records", u64::from(request.max_records)));
    }
    Ok(request)
}

fn pull_response<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<PullResponse<'a>, Error> {
    r.need(PULL_RESPONSE_HEADER_BYTES)?;
    let log_id = r.u64()?;
    let epoch = r.u64()?;
    let first_lsn = r.u64()?;
    let next_lsn = r.u64()?;
    let fencing_token = r.u64()?;
    let writer_id = r.u64()?;
    let writer_seq = r.u64()?;
    let count = r.u32()?;
    let more = match r.u8()? {
        0 => false,
        1 => true,
        other => return Err(r.invalid("more", u64::from(other))),
    };
    r.reserved_u8("reserved")?;
    let key_count = r.u16()?;
    if writer_id == WRITER_NONE && writer_seq != 0 {
        return Err(r.invalid("writer_seq", writer_seq));
    }
    // An empty answer has no key of its own; it has a fencing token and idempotency keys
    // only as a learner's at the trim point (the log's token and keys there).
    if count == 0 && (writer_id != 0 || more) {
        return Err(r.invalid("count", 0));
    }
    if count != 0 && key_count != 0 {
        return Err(r.invalid("key_count", u64::from(key_count)));
    }
    let form = RecordForm::Replicated {
        log_id,
        epoch,
        first_lsn,
    };
    let (records, keys) = if count == 0 {
        (Records::EMPTY, keys(r, usize::from(key_count))?)
    } else {
        (Records::parse(r.rest(), count, form, limits)?, Keys::EMPTY)
    };
    Ok(PullResponse {
        log_id,
        epoch,
        first_lsn,
        next_lsn,
        fencing_token,
        writer_id,
        writer_seq,
        more,
        records,
        keys,
    })
}

fn describe_request<'a>(
    r: &mut Reader<'a>,
    limits: &Limits,
) -> Result<DescribeLogRequest<'a>, Error> {
    r.need(12)?;
    let by = r.u8()?;
    r.reserved_u8("reserved")?;
    let name_len = r.u16()?;
    let log_id = r.u64()?;
    let by = match by {
        0 => {
            if name_len != 0 {
                return Err(r.invalid("name_len", u64::from(name_len)));
            }
            LogRef::Id(log_id)
        }
        1 => {
            if log_id != 0 {
                return Err(r.invalid("log_id", log_id));
            }
            LogRef::Name(r.name_of_len(name_len, limits)?)
        }
        other => return Err(r.invalid("by", u64::from(other))),
    };
    Ok(DescribeLogRequest { by })
}

/// Decodes a response or push frame (flags must include RESPONSE). `limits` are the server's
/// ([`HelloResponse::limits`]; the defaults before the HELLO response).
pub fn decode_response<'a>(frame: &Frame<'a>, limits: &Limits) -> Result<Response<'a>, Error> {
    let flags = frame.flags;
    let unexpected = || Error::UnexpectedFlags {
        opcode: frame.opcode,
        flags: flags.bits(),
    };
    let opcode = Opcode::from_u16(frame.opcode);
    if !flags.contains(Flags::RESPONSE) {
        return Err(unexpected());
    }
    let push = flags.contains(Flags::PUSH);
    let end = flags.contains(Flags::END);
    let error = flags.contains(Flags::ERROR);
    if end && !push {
        return Err(unexpected());
    }
    if push && opcode != Some(Opcode::Subscribe) {
        return Err(unexpected());
    }
    if error {
        if push && !end {
            return Err(unexpected());
        }
        if opcode.is_none() && frame.opcode != 0 {
            return Err(Error::UnknownOpcode {
                opcode: frame.opcode,
            });
        }
        // Opcode 0: a connection-level error (the request could not be identified).
        let mut r = Reader::new(frame.body, frame.opcode);
        let body = error_body(&mut r)?;
        r.finish()?;
        return Ok(if push {
            Response::PushError(body)
        } else {
            Response::Error(body)
        });
    }
    let Some(opcode) = opcode else {
        return Err(Error::UnknownOpcode {
            opcode: frame.opcode,
        });
    };
    let mut r = Reader::new(frame.body, frame.opcode);
    let response = match opcode {
        Opcode::Hello => Response::Hello(hello_response(&mut r)?),
        Opcode::Append => {
            r.need(16)?;
            let response = AppendResponse {
                first_lsn: r.u64()?,
                count: r.u32()?,
            };
            r.reserved_u32("reserved")?;
            if response.count == 0 {
                return Err(r.invalid("count", 0));
            }
            Response::Append(response)
        }
        Opcode::Read => Response::Read(read_body(&mut r, limits)?),
        Opcode::Subscribe if push => Response::Push(Push {
            batch: read_body(&mut r, limits)?,
            end,
        }),
        Opcode::Subscribe => Response::Subscribe(SubscribeResponse {
            start_lsn: r.u64()?,
        }),
        Opcode::Credit => Response::Credit,
        Opcode::Unsubscribe => Response::Unsubscribe,
        Opcode::CheckTail => Response::CheckTail(tail_body(&mut r)?),
        Opcode::TailHint => Response::TailHint(tail_body(&mut r)?),
        Opcode::Trim => Response::Trim,
        Opcode::CreateLog => {
            r.need(16)?;
            let response = CreateLogResponse {
                log_id: r.u64()?,
                shard: r.u16()?,
            };
            r.reserved_u16("reserved0")?;
            r.reserved_u32("reserved1")?;
            Response::CreateLog(response)
        }
        Opcode::DescribeLog => Response::DescribeLog(describe_response(&mut r, limits)?),
        Opcode::ListLogs => Response::ListLogs(list_response(&mut r, limits)?),
        Opcode::DeleteLog => Response::DeleteLog,
        Opcode::Peer => Response::Peer,
        Opcode::Replicate => {
            r.need(32)?;
            Response::Replicate(ReplicateResponse {
                log_id: r.u64()?,
                durable_lsn: r.u64()?,
                trim_point: r.u64()?,
                next_lsn: r.u64()?,
            })
        }
        Opcode::RegisterNode => Response::RegisterNode(MapVersionResponse {
            map_version: r.u64()?,
        }),
        Opcode::Heartbeat => Response::Heartbeat(MapVersionResponse {
            map_version: r.u64()?,
        }),
        Opcode::GetMap => Response::GetMap(map_response(&mut r, limits)?),
        Opcode::Pull => Response::Pull(pull_response(&mut r, limits)?),
        Opcode::ReconfigureLog => {
            r.need(RECONFIGURE_RESPONSE_HEADER_BYTES)?;
            let log_id = r.u64()?;
            let epoch = r.u64()?;
            let start_lsn = r.u64()?;
            let chain = chain(&mut r, false)?;
            Response::ReconfigureLog(ReconfigureLogResponse {
                log_id,
                epoch,
                start_lsn,
                chain,
            })
        }
        Opcode::DrainNode => Response::DrainNode(MapVersionResponse {
            map_version: r.u64()?,
        }),
        Opcode::Seal => {
            r.need(32)?;
            Response::Seal(SealResponse {
                log_id: r.u64()?,
                epoch: r.u64()?,
                end_lsn: r.u64()?,
                trim_point: r.u64()?,
            })
        }
    };
    r.finish()?;
    Ok(response)
}

fn hello_response(r: &mut Reader<'_>) -> Result<HelloResponse, Error> {
    r.need(32)?;
    let version = r.u16()?;
    let shard_index = r.u16()?;
    let shard_count = r.u16()?;
    let role = r.u16()?;
    let frame_bytes_max = r.u32()?;
    let record_bytes_max = r.u32()?;
    let batch_records_max = r.u32()?;
    r.reserved_u32("reserved")?;
    let node_id = r.u64()?;
    let Some(role) = Role::from_u16(role) else {
        return Err(r.invalid("role", u64::from(role)));
    };
    if version != PROTOCOL_VERSION {
        return Err(r.invalid("version", u64::from(version)));
    }
    if shard_count == 0 {
        return Err(r.invalid("shard_count", 0));
    }
    if shard_index >= shard_count {
        return Err(r.invalid("shard_index", u64::from(shard_index)));
    }
    let response = HelloResponse {
        version,
        shard_index,
        shard_count,
        frame_bytes_max,
        record_bytes_max,
        batch_records_max,
        node_id,
        role,
    };
    if !response.limits().is_consistent() {
        return Err(r.invalid("frame_bytes_max", u64::from(frame_bytes_max)));
    }
    Ok(response)
}

fn read_body<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<ReadResponse<'a>, Error> {
    r.need(16)?;
    let tail = r.u64()?;
    let count = r.u32()?;
    r.reserved_u32("reserved")?;
    let records = Records::parse(r.rest(), count, RecordForm::Stamped, limits)?;
    if records.last().is_some_and(|last| last.lsn >= tail) {
        return Err(Error::RecordOutOfSequence { index: count - 1 });
    }
    Ok(ReadResponse { tail, records })
}

fn tail_body(r: &mut Reader<'_>) -> Result<TailResponse, Error> {
    r.need(24)?;
    Ok(TailResponse {
        tail: r.u64()?,
        trim_point: r.u64()?,
        epoch: r.u64()?,
    })
}

fn describe_response<'a>(
    r: &mut Reader<'a>,
    limits: &Limits,
) -> Result<DescribeLogResponse<'a>, Error> {
    r.need(40)?;
    let log_id = r.u64()?;
    let tail = r.u64()?;
    let trim_point = r.u64()?;
    let epoch = r.u64()?;
    let shard = r.u16()?;
    let replication_factor = r.u8()?;
    r.reserved_u8("reserved0")?;
    let name_len = r.u16()?;
    r.reserved_u16("reserved1")?;
    let name = r.name_of_len(name_len, limits)?;
    Ok(DescribeLogResponse {
        log_id,
        tail,
        trim_point,
        epoch,
        shard,
        replication_factor,
        name,
    })
}

fn list_response<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<ListLogsResponse<'a>, Error> {
    r.need(8)?;
    let count = r.u32()?;
    r.reserved_u32("reserved")?;
    if count > limits.list_max {
        return Err(Error::TooManyEntries {
            count,
            max: limits.list_max,
        });
    }
    let start = r.pos;
    let mut previous: Option<u64> = None;
    for index in 0..count {
        r.need(r.pos + ENTRY_HEADER_BYTES)?;
        let log_id = r.u64()?;
        let name_len = r.u16()?;
        r.reserved_u16("entry.reserved0")?;
        r.reserved_u32("entry.reserved1")?;
        if previous.is_some_and(|p| log_id <= p) {
            return Err(Error::EntryOutOfOrder { index });
        }
        previous = Some(log_id);
        r.name_of_len(name_len, limits)?;
        r.padding(name_len, "entry.padding", index)?;
    }
    let bytes = &r.body[start..r.pos];
    Ok(ListLogsResponse {
        entries: LogEntries::encoded(bytes, count),
    })
}

fn map_response<'a>(r: &mut Reader<'a>, limits: &Limits) -> Result<GetMapResponse<'a>, Error> {
    r.need(MAP_HEADER_BYTES)?;
    let version = r.u64()?;
    let node_count = r.u32()?;
    let log_count = r.u32()?;
    r.reserved_u64("reserved")?;
    if log_count > limits.list_max {
        return Err(Error::TooManyEntries {
            count: log_count,
            max: limits.list_max,
        });
    }
    let start = r.pos;
    let mut previous: Option<u64> = None;
    for index in 0..node_count {
        let node = map_node(r, index)?;
        if previous.is_some_and(|p| node.node_id <= p) {
            return Err(Error::NodeOutOfOrder { index });
        }
        previous = Some(node.node_id);
    }
    let nodes = MapNodes::encoded(&r.body[start..r.pos], node_count, *limits);
    let start = r.pos;
    let mut previous: Option<u64> = None;
    for index in 0..log_count {
        let log = map_log(r, index, limits)?;
        if previous.is_some_and(|p| log.log_id <= p) {
            return Err(Error::EntryOutOfOrder { index });
        }
        previous = Some(log.log_id);
    }
    let logs = MapLogs::encoded(&r.body[start..r.pos], log_count, *limits);
    Ok(GetMapResponse {
        version,
        nodes,
        logs,
    })
}

/// Reads and checks one GET_MAP node entry at the reader's position; `index` names it in
/// errors. [`MapNodes`] iterates with it too.
pub(crate) fn map_node<'a>(r: &mut Reader<'a>, index: u32) -> Result<MapNode<'a>, Error> {
    r.need(r.pos.saturating_add(NODE_ENTRY_HEADER_BYTES))?;
    let node_id = r.node_id("node.node_id")?;
    let shard_count = r.u16()?;
    let addr_len = r.u16()?;
    let alive = r.u8()?;
    let drained = r.u8()?;
    let zone_len = r.u8()?;
    let rack_len = r.u8()?;
    let last_heartbeat_ms = r.u64()?;
    if shard_count == 0 {
        return Err(r.invalid("node.shard_count", 0));
    }
    let alive = match alive {
        0 => false,
        1 => true,
        other => return Err(r.invalid("node.alive", u64::from(other))),
    };
    let drained = match drained {
        0 => false,
        1 => true,
        other => return Err(r.invalid("node.drained", u64::from(other))),
    };
    let addr = r.addr(addr_len, "node.addr_len")?;
    let zone = r.label(zone_len, "node.zone_len")?;
    let rack = r.label(rack_len, "node.rack_len")?;
    let strings_len = addr_len + u16::from(zone_len) + u16::from(rack_len);
    r.padding(strings_len, "node.padding", index)?;
    Ok(MapNode {
        node_id,
        shard_count,
        alive,
        drained,
        last_heartbeat_ms,
        addr,
        zone,
        rack,
    })
}

/// Reads and checks one GET_MAP log entry at the reader's position (its name under
/// `limits`); `index` names it in errors. [`MapLogs`] iterates with it too.
pub(crate) fn map_log<'a>(
    r: &mut Reader<'a>,
    index: u32,
    limits: &Limits,
) -> Result<MapLog<'a>, Error> {
    r.need(r.pos.saturating_add(LOG_ENTRY_HEADER_BYTES))?;
    let log_id = r.u64()?;
    let epoch = r.u64()?;
    let start_lsn = r.u64()?;
    let replication_factor = r.u8()?;
    let chain_len = r.u8()?;
    let name_len = r.u16()?;
    let learner_len = r.u8()?;
    r.reserved_u8("log.reserved")?;
    r.reserved_u16("log.reserved")?;
    let created_version = r.u64()?;
    let trim_lsn = r.u64()?;
    if replication_factor == 0 {
        return Err(r.invalid("log.replication_factor", 0));
    }
    if chain_len == 0 {
        return Err(r.invalid("log.chain_len", 0));
    }
    let chain = r.take(8 * usize::from(chain_len))?;
    if chain.chunks_exact(8).any(|id| id.iter().all(|&b| b == 0)) {
        return Err(r.invalid("log.chain", 0));
    }
    let learners = r.take(8 * usize::from(learner_len))?;
    if learners
        .chunks_exact(8)
        .any(|id| id.iter().all(|&b| b == 0) || chain.chunks_exact(8).any(|c| c == id))
    {
        return Err(r.invalid("log.learners", 0));
    }
    let name = r.name_of_len(name_len, limits)?;
    r.padding(name_len, "log.padding", index)?;
    Ok(MapLog {
        log_id,
        epoch,
        start_lsn,
        trim_lsn,
        replication_factor,
        created_version,
        chain: Chain::encoded(chain),
        learners: Chain::encoded(learners),
        name,
    })
}

/// A RECONFIGURE_LOG chain at the reader's position: `chain_len` (u8), 7 reserved bytes,
/// then that many nonzero node ids; empty only where `empty_ok`.
fn chain<'a>(r: &mut Reader<'a>, empty_ok: bool) -> Result<Chain<'a>, Error> {
    let chain_len = r.u8()?;
    r.reserved_u8("reserved0")?;
    r.reserved_u16("reserved1")?;
    r.reserved_u32("reserved2")?;
    if chain_len == 0 && !empty_ok {
        return Err(r.invalid("chain_len", 0));
    }
    let chain = r.take(8 * usize::from(chain_len))?;
    if chain.chunks_exact(8).any(|id| id.iter().all(|&b| b == 0)) {
        return Err(r.invalid("chain", 0));
    }
    Ok(Chain::encoded(chain))
}

fn error_body<'a>(r: &mut Reader<'a>) -> Result<ErrorResponse<'a>, Error> {
    r.need(24)?;
    let code = r.u16()?;
    let retryable = r.u8()?;
    r.reserved_u8("reserved")?;
    let message_len = r.u32()?;
    let arg0 = r.u64()?;
    let arg1 = r.u64()?;
    let Some(code) = ErrorCode::from_u16(code) else {
        return Err(Error::UnknownErrorCode { code });
    };
    if u8::from(code.is_retryable()) != retryable {
        return Err(r.invalid("retryable", u64::from(retryable)));
    }
    if message_len as usize > ERROR_MESSAGE_BYTES_MAX {
        return Err(Error::MessageTooLong { len: message_len });
    }
    let message =
        std::str::from_utf8(r.take(message_len as usize)?).map_err(|_| Error::MessageNotUtf8)?;
    Ok(ErrorResponse {
        code,
        arg0,
        arg1,
        message,
    })
}

/// Checks a log name: 1..=`name_bytes_max` bytes of UTF-8 without NUL. Clients can use it to
/// refuse a bad name before sending it.
pub fn check_name<'a>(name: &'a [u8], limits: &Limits) -> Result<&'a str, Error> {
    if name.is_empty() {
        return Err(Error::EmptyName);
    }
    if name.len() > usize::from(limits.name_bytes_max) {
        return Err(Error::NameTooLong {
            len: u16::try_from(name.len()).unwrap_or(u16::MAX),
            max: limits.name_bytes_max,
        });
    }
    let name = std::str::from_utf8(name).map_err(|_| Error::NameNotUtf8)?;
    if name.contains('\0') {
        return Err(Error::NameContainsNul);
    }
    Ok(name)
}

/// A bounds-checked little-endian cursor over a body.
pub(crate) struct Reader<'a> {
    body: &'a [u8],
    pos: usize,
    opcode: u16,
}

impl<'a> Reader<'a> {
    pub(crate) fn new(body: &'a [u8], opcode: u16) -> Reader<'a> {
        Reader {
            body,
            pos: 0,
            opcode,
        }
    }

    /// Fails unless the body holds at least `bytes` (the fixed part of a message), so a short
    /// body is reported with the size it needs rather than the first field missing.
    fn need(&self, bytes: usize) -> Result<(), Error> {
        if self.body.len() < bytes {
            return Err(self.truncated(bytes));
        }
        Ok(())
    }

    fn truncated(&self, needed_bytes: usize) -> Error {
        Error::BodyTruncated {
            opcode: self.opcode,
            body_bytes: self.body.len(),
            needed_bytes,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        let end = self.pos.saturating_add(n);
        let Some(bytes) = self.body.get(self.pos..end) else {
            return Err(self.truncated(end));
        };
        self.pos = end;
        Ok(bytes)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], Error> {
        let mut array = [0; N];
        array.copy_from_slice(self.take(N)?);
        Ok(array)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.array::<1>()?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        self.array().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Result<u32, Error> {
        self.array().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Result<u64, Error> {
        self.array().map(u64::from_le_bytes)
    }

    fn reserved(&self, value: u64, field: &'static str) -> Result<(), Error> {
        if value != 0 {
            return Err(Error::ReservedNonzero {
                opcode: self.opcode,
                field,
            });
        }
        Ok(())
    }

    fn reserved_u8(&mut self, field: &'static str) -> Result<(), Error> {
        let value = self.u8()?;
        self.reserved(value.into(), field)
    }

    fn reserved_u16(&mut self, field: &'static str) -> Result<(), Error> {
        let value = self.u16()?;
        self.reserved(value.into(), field)
    }

    fn reserved_u32(&mut self, field: &'static str) -> Result<(), Error> {
        let value = self.u32()?;
        self.reserved(value.into(), field)
    }

    fn reserved_u64(&mut self, field: &'static str) -> Result<(), Error> {
        let value = self.u64()?;
        self.reserved(value, field)
    }

    /// A node id: nonzero (0 names the controller in a HELLO response, never a node).
    fn node_id(&mut self, field: &'static str) -> Result<u64, Error> {
        let node_id = self.u64()?;
        if node_id == 0 {
            return Err(self.invalid(field, 0));
        }
        Ok(node_id)
    }

    /// A node address of `len` bytes (its length field is `field`): 1..=`ADDR_BYTES_MAX`
    /// bytes of UTF-8.
    fn addr(&mut self, len: u16, field: &'static str) -> Result<&'a str, Error> {
        if len == 0 || len > ADDR_BYTES_MAX {
            return Err(self.invalid(field, u64::from(len)));
        }
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| Error::AddrNotUtf8)
    }

    /// A node's zone or rack label of `len` bytes (its length field is `field`):
    /// 0..=`LABEL_BYTES_MAX` bytes of UTF-8.
    fn label(&mut self, len: u8, field: &'static str) -> Result<&'a str, Error> {
        if len > LABEL_BYTES_MAX {
            return Err(self.invalid(field, u64::from(len)));
        }
        std::str::from_utf8(self.take(usize::from(len))?).map_err(|_| Error::LabelNotUtf8)
    }

    /// The zero padding after `len` bytes of a name or address, up to a multiple of 8; a
    /// nonzero byte is an invalid `field` whose value is the entry's `index`.
    fn padding(&mut self, len: u16, field: &'static str, index: u32) -> Result<(), Error> {
        let len = usize::from(len);
        if self.take(padded(len) - len)?.iter().any(|&b| b != 0) {
            return Err(self.invalid(field, u64::from(index)));
        }
        Ok(())
    }

    fn invalid(&self, field: &'static str, value: u64) -> Error {
        Error::InvalidField {
            opcode: self.opcode,
            field,
            value,
        }
    }

    /// A `name_len` u16 and the name after it.
    fn name(&mut self, limits: &Limits) -> Result<&'a str, Error> {
        let len = self.u16()?;
        self.name_of_len(len, limits)
    }

    /// A name of `len` bytes. The length is checked against the limit before the body's size,
    /// so an overlong name is TOO_LARGE whatever follows.
    fn name_of_len(&mut self, len: u16, limits: &Limits) -> Result<&'a str, Error> {
        if len > limits.name_bytes_max {
            return Err(Error::NameTooLong {
                len,
                max: limits.name_bytes_max,
            });
        }
        let bytes = self.take(usize::from(len))?;
        check_name(bytes, limits)
    }

    /// Everything not read yet.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        let rest = &self.body[self.pos..];
        self.pos = self.body.len();
        rest
    }

    /// Fails if bytes remain after the message.
    fn finish(self) -> Result<(), Error> {
        if self.pos != self.body.len() {
            return Err(Error::TrailingBytes {
                opcode: self.opcode,
                extra_bytes: self.body.len() - self.pos,
            });
        }
        Ok(())
    }
}
