//! The cluster map as a GET_MAP response carries it: every node ([`MapNodes`] of
//! [`MapNode`]), a page of logs ([`MapLogs`] of [`MapLog`]) and each log's chain ([`Chain`]).
//! Each is either a validated view of a decoded frame's bytes or, for the controller to
//! encode, a slice. Iterating a decoded view reads the entries again with the decoder's own
//! functions, so the layout is written down once and the iterators cannot panic.

use crate::decode::{map_log, map_node, Reader};
use crate::message::Opcode;
use crate::{Error, Limits};

/// Size of a GET_MAP response before its entries.
pub const MAP_HEADER_BYTES: usize = 24;
/// Size of a node entry before its address, zone and rack.
pub const NODE_ENTRY_HEADER_BYTES: usize = 24;
/// Size of a log entry before its chain.
pub const LOG_ENTRY_HEADER_BYTES: usize = 48;

/// One node of the cluster map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapNode<'a> {
    /// The node's id (nonzero).
    pub node_id: u64,
    /// Its shards (at least 1); shard `i` listens on the port of `addr` plus `i`.
    pub shard_count: u16,
    /// True if it heartbeated within the controller's liveness timeout.
    pub alive: bool,
    /// True if an operator drained it: it gets no new chain.
    pub drained: bool,
    /// Milliseconds since its last heartbeat, or [`HEARTBEAT_MS_NEVER`](crate::HEARTBEAT_MS_NEVER).
    pub last_heartbeat_ms: u64,
    /// `"host:port"` of its shard 0 (1..=[`ADDR_BYTES_MAX`](crate::ADDR_BYTES_MAX) bytes of
    /// UTF-8).
    pub addr: &'a str,
    /// Its failure zone, as registered (0..=[`LABEL_BYTES_MAX`](crate::LABEL_BYTES_MAX) bytes
    /// of UTF-8; empty: none).
    pub zone: &'a str,
    /// Its rack within the zone, as registered (the same bounds; empty: none).
    pub rack: &'a str,
}

/// One log of the cluster map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapLog<'a> {
    /// The log's id.
    pub log_id: u64,
    /// Its current epoch.
    pub epoch: u64,
    /// The first LSN of the current epoch.
    pub start_lsn: u64,
    /// The log's trim point when the current epoch began: every replica of the epoch has
    /// trimmed at least to it, so no acknowledged trim goes back.
    pub trim_lsn: u64,
    /// Replicas per chain (at least 1).
    pub replication_factor: u8,
    /// The map version that created the log.
    pub created_version: u64,
    /// The current epoch's chain, head first (1..=255 nonzero node ids).
    pub chain: Chain<'a>,
    /// Learners: nodes copying the log's committed records from the chain's tail before
    /// they join it (0..=255 nonzero node ids, none of them in the chain).
    pub learners: Chain<'a>,
    /// The log's name (checked like every log name).
    pub name: &'a str,
}

/// A log's chain: node ids, head first. Decoded (a view of the frame's bytes) or given as a
/// slice, to encode.
#[derive(Clone, Copy, Debug)]
pub struct Chain<'a>(ChainRepr<'a>);

#[derive(Clone, Copy, Debug)]
enum ChainRepr<'a> {
    /// Little-endian u64s; the length is a multiple of 8.
    Encoded(&'a [u8]),
    Slice(&'a [u64]),
}

impl<'a> Chain<'a> {
    /// A chain to encode (at most 255 nodes: the wire's `chain_len` is a u8).
    pub fn from_slice(node_ids: &'a [u64]) -> Chain<'a> {
        Chain(ChainRepr::Slice(node_ids))
    }

    /// A chain already checked by the decoder.
    pub(crate) fn encoded(bytes: &'a [u8]) -> Chain<'a> {
        Chain(ChainRepr::Encoded(bytes))
    }

    /// How many nodes.
    pub fn len(&self) -> usize {
        match self.0 {
            ChainRepr::Encoded(bytes) => bytes.len() / 8,
            ChainRepr::Slice(node_ids) => node_ids.len(),
        }
    }

    /// True if there are none (never for a decoded chain).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The node ids, head first.
    pub fn iter(&self) -> ChainIter<'a> {
        ChainIter(match self.0 {
            ChainRepr::Encoded(bytes) => ChainIterRepr::Encoded(bytes.chunks_exact(8)),
            ChainRepr::Slice(node_ids) => ChainIterRepr::Slice(node_ids.iter()),
        })
    }
}

impl PartialEq for Chain<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl Eq for Chain<'_> {}

impl<'a> IntoIterator for Chain<'a> {
    type Item = u64;
    type IntoIter = ChainIter<'a>;

    fn into_iter(self) -> ChainIter<'a> {
        self.iter()
    }
}

/// Iterator over a [`Chain`]'s node ids.
#[derive(Clone, Debug)]
pub struct ChainIter<'a>(ChainIterRepr<'a>);

#[derive(Clone, Debug)]
enum ChainIterRepr<'a> {
    Encoded(std::slice::ChunksExact<'a, u8>),
    Slice(std::slice::Iter<'a, u64>),
}

impl Iterator for ChainIter<'_> {
    type Item = u64;

    fn next(&mut self) -> Option<u64> {
        match &mut self.0 {
            ChainIterRepr::Encoded(chunks) => chunks
                .next()
                .and_then(|chunk| chunk.first_chunk::<8>())
                .map(|id| u64::from_le_bytes(*id)),
            ChainIterRepr::Slice(node_ids) => node_ids.next().copied(),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        match &self.0 {
            ChainIterRepr::Encoded(chunks) => chunks.size_hint(),
            ChainIterRepr::Slice(node_ids) => node_ids.size_hint(),
        }
    }
}

impl ExactSizeIterator for ChainIter<'_> {}

/// Reads one entry at the reader's position (`index` names it in errors): the decoder's own
/// function, [`map_node`] or [`map_log`].
type ReadEntry<'a, E> = fn(&mut Reader<'a>, u32, &Limits) -> Result<E, Error>;

/// The node entries of a GET_MAP response: every node, ascending by id.
pub type MapNodes<'a> = MapEntries<'a, MapNode<'a>>;
/// The log entries of a GET_MAP response: one page, ascending by id.
pub type MapLogs<'a> = MapEntries<'a, MapLog<'a>>;

/// Entries of a GET_MAP response ([`MapNodes`] or [`MapLogs`]): decoded (a validated view of
/// the frame's bytes) or given as a slice, to encode.
#[derive(Clone, Copy, Debug)]
pub struct MapEntries<'a, E>(ListRepr<'a, E>);

#[derive(Clone, Copy, Debug)]
enum ListRepr<'a, E> {
    Encoded {
        bytes: &'a [u8],
        count: u32,
        limits: Limits,
        read: ReadEntry<'a, E>,
    },
    Slice(&'a [E]),
}

impl<'a> MapNodes<'a> {
    /// `count` node entries in `bytes`, already checked by the decoder.
    pub(crate) fn encoded(bytes: &'a [u8], count: u32, limits: Limits) -> MapNodes<'a> {
        MapEntries(ListRepr::Encoded {
            bytes,
            count,
            limits,
            read: |r, index, _| map_node(r, index),
        })
    }
}

impl<'a> MapLogs<'a> {
    /// `count` log entries in `bytes`, already checked by the decoder under `limits`.
    pub(crate) fn encoded(bytes: &'a [u8], count: u32, limits: Limits) -> MapLogs<'a> {
        MapEntries(ListRepr::Encoded {
            bytes,
            count,
            limits,
            read: map_log,
        })
    }
}

impl<'a, E: Copy> MapEntries<'a, E> {
    /// Entries to encode.
    pub fn from_slice(entries: &'a [E]) -> MapEntries<'a, E> {
        MapEntries(ListRepr::Slice(entries))
    }

    /// How many entries.
    pub fn len(&self) -> usize {
        match self.0 {
            ListRepr::Encoded { count, .. } => count as usize,
            ListRepr::Slice(entries) => entries.len(),
        }
    }

    /// True if there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entries, in order.
    pub fn iter(&self) -> MapEntriesIter<'a, E> {
        MapEntriesIter(match self.0 {
            ListRepr::Encoded {
                bytes,
                count,
                limits,
                read,
            } => IterRepr::Encoded {
                rest: bytes,
                remaining: count,
                limits,
                read,
            },
            ListRepr::Slice(entries) => IterRepr::Slice(entries.iter()),
        })
    }
}

impl<E: Copy + PartialEq> PartialEq for MapEntries<'_, E> {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().eq(other.iter())
    }
}

impl<E: Copy + Eq> Eq for MapEntries<'_, E> {}

impl<'a, E: Copy> IntoIterator for MapEntries<'a, E> {
    type Item = E;
    type IntoIter = MapEntriesIter<'a, E>;

    fn into_iter(self) -> MapEntriesIter<'a, E> {
        self.iter()
    }
}

/// Iterator over [`MapEntries`].
#[derive(Clone, Debug)]
pub struct MapEntriesIter<'a, E>(IterRepr<'a, E>);

#[derive(Clone, Debug)]
enum IterRepr<'a, E> {
    Encoded {
        rest: &'a [u8],
        remaining: u32,
        limits: Limits,
        read: ReadEntry<'a, E>,
    },
    Slice(std::slice::Iter<'a, E>),
}

impl<E: Copy> Iterator for MapEntriesIter<'_, E> {
    type Item = E;

    fn next(&mut self) -> Option<E> {
        match &mut self.0 {
            IterRepr::Slice(entries) => entries.next().copied(),
            IterRepr::Encoded {
                rest,
                remaining,
                limits,
                read,
            } => {
                if *remaining == 0 {
                    return None;
                }
                let mut r = Reader::new(rest, Opcode::GetMap as u16);
                // The decoder accepted these bytes, so reading them again succeeds; were it
                // to fail, the list would end here rather than panic.
                let Ok(entry) = (*read)(&mut r, 0, limits) else {
                    *remaining = 0;
                    return None;
                };
                *remaining -= 1;
                *rest = r.rest();
                Some(entry)
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let len = match &self.0 {
            IterRepr::Slice(entries) => entries.len(),
            IterRepr::Encoded { remaining, .. } => *remaining as usize,
        };
        (len, Some(len))
    }
}

impl<E: Copy> ExactSizeIterator for MapEntriesIter<'_, E> {}
