//! Idempotency keys on the wire: the writers' batches that a replica starting a log at its
//! source's trim point takes over (a TRIM that skips a successor there, a learner's PULL
//! answer at the trim point; PROTOCOL.md 6.11 and 6.13a). Without them a retry of a batch
//! below that point, sent to such a replica once it is the head, would be appended again.
//!
//! A key is 32 bytes: `writer_id`, `writer_seq`, `first_lsn` (u64 each), `count` (u32) and a
//! reserved u32. [`Keys`] is a checked, zero-copy view of a message's keys.

use chainlog_storage::WriterKey;

/// Bytes of one key.
pub const KEY_BYTES: usize = 32;
/// Keys in one message at most (its count is a u16 in a PULL answer): 2 MiB of them, within
/// the replication frame limit.
pub const KEYS_MAX: usize = u16::MAX as usize;

/// A message's idempotency keys, each checked: a writer (nonzero), at least one record, a
/// batch that ends within the LSN space, the reserved field 0.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Keys<'a> {
    bytes: &'a [u8],
}

impl<'a> Keys<'a> {
    /// No keys.
    pub const EMPTY: Keys<'static> = Keys { bytes: &[] };

    /// Checks `bytes` as exactly `count` keys; on failure, the offending field and value.
    pub fn parse(bytes: &'a [u8], count: usize) -> Result<Keys<'a>, (&'static str, u64)> {
        if count > KEYS_MAX || bytes.len() != count * KEY_BYTES {
            return Err(("key_count", count as u64));
        }
        let keys = Keys { bytes };
        for (key, chunk) in keys.iter().zip(bytes.chunks_exact(KEY_BYTES)) {
            let reserved = u32::from_le_bytes(chunk[28..32].try_into().expect("4 bytes"));
            if key.writer_id == 0 {
                return Err(("writer_id", 0));
            }
            if key.count == 0 {
                return Err(("count", 0));
            }
            if key.first_lsn.checked_add(u64::from(key.count)).is_none() {
                return Err(("first_lsn", key.first_lsn));
            }
            if reserved != 0 {
                return Err(("reserved", u64::from(reserved)));
            }
        }
        Ok(keys)
    }

    /// Lays `keys` into `out` (cleared first) in the wire layout and views them: at most
    /// [`KEYS_MAX`], the newest (which come last). Keys a store remembers are valid as they
    /// are; a writer of 0 or an empty batch is a bug.
    pub fn encode(out: &'a mut Vec<u8>, keys: &[WriterKey]) -> Keys<'a> {
        let keys = &keys[keys.len().saturating_sub(KEYS_MAX)..];
        out.clear();
        for key in keys {
            assert!(
                key.writer_id != 0 && key.count > 0,
                "a key names a writer and records"
            );
            out.extend_from_slice(&key.writer_id.to_le_bytes());
            out.extend_from_slice(&key.writer_seq.to_le_bytes());
            out.extend_from_slice(&key.first_lsn.to_le_bytes());
            out.extend_from_slice(&key.count.to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        Keys { bytes: out }
    }

    /// How many.
    pub fn count(&self) -> usize {
        self.bytes.len() / KEY_BYTES
    }

    /// The keys' bytes, as they go on the wire.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The keys, in order.
    pub fn iter(&self) -> impl Iterator<Item = WriterKey> + 'a {
        self.bytes.chunks_exact(KEY_BYTES).map(|c| {
            let u64_at = |at: usize| u64::from_le_bytes(c[at..at + 8].try_into().expect("8"));
            WriterKey {
                writer_id: u64_at(0),
                writer_seq: u64_at(8),
                first_lsn: u64_at(16),
                count: u32::from_le_bytes(c[24..28].try_into().expect("4 bytes")),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(writer_id: u64, first_lsn: u64, count: u32) -> WriterKey {
        WriterKey {
            writer_id,
            writer_seq: 9,
            first_lsn,
            count,
        }
    }

    #[test]
    fn keys_round_trip_and_bad_ones_are_named() {
        let keys = [key(1, 0, 3), key(2, 3, 1)];
        let mut out = Vec::new();
        let mut bytes = Keys::encode(&mut out, &keys).bytes().to_vec();
        let parsed = Keys::parse(&bytes, 2).expect("valid");
        assert_eq!(parsed.iter().collect::<Vec<_>>(), keys);
        assert_eq!(Keys::parse(&bytes, 1), Err(("key_count", 1)));
        let mut bad = bytes.clone();
        bad[..8].fill(0);
        assert_eq!(Keys::parse(&bad, 2), Err(("writer_id", 0)));
        let mut bad = bytes.clone();
        bad[24..28].fill(0);
        assert_eq!(Keys::parse(&bad, 2), Err(("count", 0)));
        let mut bad = bytes.clone();
        bad[16..24].fill(0xff);
        assert_eq!(Keys::parse(&bad, 2), Err(("first_lsn", u64::MAX)));
        bytes[28] = 1;
        assert_eq!(Keys::parse(&bytes, 2), Err(("reserved", 1)));
    }
}
