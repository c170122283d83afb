//! Stored records as the wire carries them: each with the header it was stored with (its CRC
//! is the client's, end to end), added to a READ answer or a push ([`push_records`]), or laid
//! out as a run for a REPLICATE or a PULL's answer with the decisions stored with it
//! ([`encode_run`]).

use chainlog_net::{ReadBuilder, RecordHeader};
use chainlog_storage::format::record_bytes;
use chainlog_storage::{ReadRecord, ReplicaState, StoredRun};

/// The header a record read back was stored with (its CRC is the client's: end to end).
fn stored_header(log_id: u64, r: &ReadRecord) -> RecordHeader {
    RecordHeader {
        len: r.payload.len() as u32,
        crc: r.crc,
        log_id,
        lsn: r.lsn,
        epoch: r.epoch,
        timestamp_us: r.timestamp_us,
    }
}

/// Adds stored records to a READ answer or a push, until the frame is full or they would
/// take more than `bytes_max` bytes as they travel (header, payload and padding: a READ's
/// `max_bytes`, PROTOCOL.md 6.3), but always at least one if the frame holds it; returns how
/// many went in. The records' CRCs travel unchanged (end to end).
pub(crate) fn push_records(
    builder: &mut ReadBuilder<'_>,
    log_id: u64,
    records: &[ReadRecord],
    bytes_max: usize,
) -> u64 {
    let mut pushed = 0;
    let mut bytes = 0;
    for r in records {
        bytes += record_bytes(r.payload.len());
        if pushed > 0 && bytes > bytes_max {
            break;
        }
        if builder.push(&stored_header(log_id, r), &r.payload).is_err() {
            break;
        }
        pushed += 1;
    }
    pushed
}

/// Appends a stored run's records to `out` in the stamped layout a REPLICATE or a PULL's
/// answer carries, within `bytes_max`; returns how many went in and the decisions that go
/// with them (none if the run had to be cut: they belong to its end). A keyed batch always
/// fits (it arrived in one APPEND).
pub(crate) fn encode_run(
    out: &mut Vec<u8>,
    log_id: u64,
    run: &StoredRun,
    bytes_max: usize,
) -> (u32, ReplicaState) {
    let start = out.len();
    let mut count = 0;
    for r in &run.records {
        if count > 0 && out.len() - start + record_bytes(r.payload.len()) > bytes_max {
            break;
        }
        out.extend_from_slice(bytemuck::bytes_of(&stored_header(log_id, r)));
        out.extend_from_slice(&r.payload);
        out.resize(
            out.len() + (r.payload.len().next_multiple_of(8) - r.payload.len()),
            0,
        );
        count += 1;
    }
    let whole = count as usize == run.records.len();
    if !whole && run.state.writer.is_some() {
        tracing::warn!(
            log_id,
            first = run.first_lsn(),
            "a keyed batch did not fit one message: it goes without its key"
        );
    }
    (
        count,
        if whole {
            run.state
        } else {
            ReplicaState::default()
        },
    )
}

/// The head's decisions about a run as a REPLICATE or PULL carries them (0 for none) in the
/// store's terms.
pub(crate) fn replica_state(fencing_token: u64, writer: (u64, u64)) -> ReplicaState {
    ReplicaState {
        fencing_token: (fencing_token != 0).then_some(fencing_token),
        writer: (writer.0 != 0).then_some(writer),
    }
}
