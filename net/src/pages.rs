//! Reading the whole cluster map from GET_MAP pages (PROTOCOL.md section 6.12), without I/O:
//! [`MapPages`] says which page to ask for next and assembles the pages into a
//! [`ClusterMap`], starting again from the first page when the map's version changes between
//! two pages. Both clients of the controller drive it, each with its own I/O: the blocking
//! one (a node's control thread, tools) and the async client library.

use crate::cluster::{ClusterMap, MapLog, MapNode};
use crate::message::{GetMapRequest, GetMapResponse};

/// How many times the map may change while it is read before the reader gives up (each
/// change starts the reading again; a controller changing its map faster than a reader can
/// page through it is not a map anyone can route by).
pub const MAP_RESTARTS_MAX: u32 = 16;

/// One GET_MAP page, owned (decoded from a response and copied out of its frame).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MapPage {
    /// The map's version when the page was served.
    pub version: u64,
    /// Every node (each page carries them all).
    pub nodes: Vec<MapNode>,
    /// This page's logs, ascending by id.
    pub logs: Vec<MapLog>,
}

impl From<&GetMapResponse<'_>> for MapPage {
    fn from(page: &GetMapResponse<'_>) -> MapPage {
        MapPage {
            version: page.version,
            nodes: page.nodes.iter().map(MapNode::from).collect(),
            logs: page.logs.iter().map(MapLog::from).collect(),
        }
    }
}

/// Why GET_MAP pages did not make a map.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum MapPagesError {
    /// The version changed between pages more than [`MAP_RESTARTS_MAX`] times.
    #[error("the cluster map changed {restarts} times while it was being read")]
    Unstable {
        /// The restarts.
        restarts: u32,
    },
    /// A page's first log is not above the last log of the previous page.
    #[error("a GET_MAP page asked for logs after {after} starts at log {log_id}")]
    OutOfOrder {
        /// What the page was asked for.
        after: u64,
        /// Its first log.
        log_id: u64,
    },
}

/// The reading of the whole map, page by page: ask for [`MapPages::request`], give its answer
/// to [`MapPages::add`], until `add` returns the map.
#[derive(Debug)]
pub struct MapPages {
    /// Logs asked for per page.
    page_max: u32,
    /// The version of the pages read so far (`None` before the first).
    version: Option<u64>,
    nodes: Vec<MapNode>,
    logs: Vec<MapLog>,
    restarts: u32,
}

impl MapPages {
    /// A reading that asks for `page_max` logs per page (the server's `list_max`, usually).
    pub fn new(page_max: u32) -> MapPages {
        MapPages {
            page_max: page_max.max(1),
            version: None,
            nodes: Vec::new(),
            logs: Vec::new(),
            restarts: 0,
        }
    }

    /// The GET_MAP to send next.
    pub fn request(&self) -> GetMapRequest {
        GetMapRequest {
            after_log_id: self.after(),
            max: self.page_max,
        }
    }

    /// Takes the answer to [`MapPages::request`]: the whole map once a page holds no log,
    /// else `None` (ask for the next request).
    pub fn add(&mut self, page: MapPage) -> Result<Option<ClusterMap>, MapPagesError> {
        if self.version.is_some_and(|version| version != page.version) {
            // The earlier pages are of another map: read this one from its first page.
            self.restarts += 1;
            if self.restarts > MAP_RESTARTS_MAX {
                return Err(MapPagesError::Unstable {
                    restarts: self.restarts,
                });
            }
            self.version = None;
            self.logs.clear();
            return Ok(None);
        }
        let after = self.after();
        if let Some(first) = page.logs.first().filter(|log| log.log_id <= after) {
            return Err(MapPagesError::OutOfOrder {
                after,
                log_id: first.log_id,
            });
        }
        self.version = Some(page.version);
        self.nodes = page.nodes;
        if page.logs.is_empty() {
            let logs = std::mem::take(&mut self.logs);
            return Ok(Some(ClusterMap::new(
                page.version,
                std::mem::take(&mut self.nodes),
                logs,
            )));
        }
        self.logs.extend(page.logs);
        Ok(None)
    }

    /// The last log read so far (0 before any).
    fn after(&self) -> u64 {
        self.logs.last().map_or(0, |log| log.log_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(log_id: u64) -> MapLog {
        MapLog {
            log_id,
            name: format!("log-{log_id}"),
            replication_factor: 1,
            epoch: 1,
            start_lsn: 0,
            trim_lsn: 0,
            chain: vec![1],
            learners: Vec::new(),
            created_version: 1,
        }
    }

    fn node() -> MapNode {
        MapNode {
            node_id: 1,
            addr: "127.0.0.1:7400".into(),
            shard_count: 1,
            alive: true,
            drained: false,
            last_heartbeat_ms: 5,
            zone: String::new(),
            rack: String::new(),
        }
    }

    fn page(version: u64, logs: &[u64]) -> MapPage {
        MapPage {
            version,
            nodes: vec![node()],
            logs: logs.iter().map(|&id| log(id)).collect(),
        }
    }

    #[test]
    fn pages_are_asked_after_the_last_log_and_assembled() {
        let mut pages = MapPages::new(2);
        assert_eq!(pages.request().after_log_id, 0);
        assert_eq!(pages.request().max, 2);
        assert_eq!(pages.add(page(3, &[10, 20])), Ok(None));
        assert_eq!(pages.request().after_log_id, 20);
        assert_eq!(pages.add(page(3, &[30])), Ok(None));
        let map = pages.add(page(3, &[])).expect("pages").expect("the map");
        assert_eq!(map.version(), 3);
        assert_eq!(map.nodes(), [node()]);
        let ids: Vec<u64> = map.logs().iter().map(|l| l.log_id).collect();
        assert_eq!(ids, [10, 20, 30]);
    }

    #[test]
    fn a_version_change_between_pages_starts_again_and_is_bounded() {
        let mut pages = MapPages::new(2);
        assert_eq!(pages.add(page(3, &[10, 20])), Ok(None));
        // Version 4 while reading version 3: what was read is dropped.
        assert_eq!(pages.add(page(4, &[30])), Ok(None));
        assert_eq!(pages.request().after_log_id, 0);
        assert_eq!(pages.add(page(4, &[20])), Ok(None));
        let map = pages.add(page(4, &[])).expect("pages").expect("the map");
        assert_eq!((map.version(), map.logs().len()), (4, 1));

        let mut unstable = MapPages::new(1);
        for version in 0..u64::from(MAP_RESTARTS_MAX) {
            assert_eq!(unstable.add(page(version, &[1])), Ok(None));
            assert_eq!(unstable.add(page(version + 1, &[2])), Ok(None));
        }
        assert_eq!(
            unstable.add(page(100, &[1])),
            Ok(None),
            "a first page is always taken"
        );
        assert!(matches!(
            unstable.add(page(101, &[2])),
            Err(MapPagesError::Unstable { .. })
        ));
    }

    #[test]
    fn a_page_that_does_not_continue_the_last_is_refused() {
        let mut pages = MapPages::new(2);
        assert_eq!(pages.add(page(1, &[10, 20])), Ok(None));
        assert_eq!(
            pages.add(page(1, &[15])),
            Err(MapPagesError::OutOfOrder {
                after: 20,
                log_id: 15
            })
        );
    }
}
