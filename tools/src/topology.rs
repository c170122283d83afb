//! What a load run ran against, as its reports describe it: a standalone node (its address
//! and shards), or a cluster reached through its controller (every node of the map, alive or
//! not, and the chain of each log the run appends to). It also says where the appends land
//! (the heads' shards: what a per-shard figure divides by) and where each node involved
//! serves its metrics (for the stage breakdown, [`crate::stages`]).

use std::net::SocketAddr;

use chainlog::client::{log_id, Client};
use serde::Serialize;

/// The target of a run.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct Topology {
    /// `"node"` (a standalone node) or `"cluster"` (through its controller).
    pub(crate) kind: &'static str,
    /// The address the client was given: the node's shard 0, or the controller.
    pub(crate) target: String,
    /// The nodes: the standalone node, or every node of the cluster map.
    pub(crate) nodes: Vec<NodeInfo>,
    /// The logs the run appends to.
    pub(crate) logs: Vec<LogChain>,
}

/// One node.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct NodeInfo {
    /// Its id in the cluster map; `null` for a standalone node.
    pub(crate) node_id: Option<u64>,
    /// Its shard 0's address (shard `i` listens on port + `i`).
    pub(crate) addr: String,
    /// Its shards.
    pub(crate) shard_count: u16,
    /// Whether the controller counted it alive when the map was fetched (a standalone node
    /// answered, so it is).
    pub(crate) alive: bool,
    /// Where it serves `/metrics`, if known: `--metrics` for a standalone node, else the
    /// port after its last shard's (the node's default and the dev cluster's).
    pub(crate) metrics: Option<String>,
}

/// A log of the run and where it lives.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct LogChain {
    /// Its name.
    pub(crate) name: String,
    /// Its id.
    pub(crate) log_id: u64,
    /// Its chain, head first, by node id (a standalone node's log: `[]`, the node alone).
    pub(crate) chain: Vec<u64>,
    /// The shard of its head that owns it.
    pub(crate) head_shard: u16,
}

/// The port after the last shard's, on the host of `addr` (`HOST:PORT` of shard 0).
fn default_metrics(addr: &str, shard_count: u16) -> Option<String> {
    let (host, port) = addr.rsplit_once(':')?;
    let port = port.parse::<u16>().ok()?.checked_add(shard_count)?;
    Some(format!("{host}:{port}"))
}

impl Topology {
    /// Describes what `client` (connected to `target`) reaches, for the logs `log_names`
    /// (which must exist); `metrics` overrides where a standalone node serves its metrics.
    /// A cluster client's map is brought up to date first (a TAIL_HINT of each log routes by
    /// a map that holds it).
    pub(crate) async fn describe(
        client: &Client,
        target: SocketAddr,
        log_names: &[String],
        metrics: Option<&str>,
    ) -> Result<Topology, String> {
        for name in log_names {
            client
                .tail_hint(log_id(name))
                .await
                .map_err(|e| format!("TAIL_HINT of {name}: {e}"))?;
        }
        let Some(map) = client.map() else {
            let addr = target.to_string();
            let shard_count = client.shard_count();
            return Ok(Topology {
                kind: "node",
                target: addr.clone(),
                nodes: vec![NodeInfo {
                    node_id: None,
                    metrics: metrics
                        .map(str::to_string)
                        .or_else(|| default_metrics(&addr, shard_count)),
                    addr,
                    shard_count,
                    alive: true,
                }],
                logs: log_names
                    .iter()
                    .map(|name| LogChain {
                        name: name.clone(),
                        log_id: log_id(name),
                        chain: Vec::new(),
                        head_shard: client.shard_of(log_id(name)),
                    })
                    .collect(),
            });
        };
        let nodes = map
            .nodes()
            .iter()
            .map(|node| NodeInfo {
                node_id: Some(node.node_id),
                addr: node.addr.clone(),
                shard_count: node.shard_count,
                alive: node.alive,
                metrics: default_metrics(&node.addr, node.shard_count),
            })
            .collect();
        let mut logs = Vec::new();
        for name in log_names {
            let id = log_id(name);
            let log = map
                .log(id)
                .ok_or_else(|| format!("the cluster map has no log {name}"))?;
            logs.push(LogChain {
                name: name.clone(),
                log_id: id,
                chain: log.chain.clone(),
                head_shard: client.shard_of(id),
            });
        }
        Ok(Topology {
            kind: "cluster",
            target: target.to_string(),
            nodes,
            logs,
        })
    }

    /// The node with id `node_id` (`None`: the standalone node).
    fn node(&self, node_id: Option<u64>) -> Option<&NodeInfo> {
        self.nodes.iter().find(|n| n.node_id == node_id)
    }

    /// The nodes that hold the run's logs, each once, heads first then by chain position,
    /// with its role (`"head"`, `"middle"`, `"tail"`, or a mix for nodes in several chains).
    pub(crate) fn involved(&self) -> Vec<(&NodeInfo, String)> {
        if self.kind == "node" {
            return self.nodes.iter().map(|n| (n, "node".to_string())).collect();
        }
        let mut involved: Vec<(u64, Vec<&'static str>)> = Vec::new();
        let depth = self.logs.iter().map(|l| l.chain.len()).max().unwrap_or(0);
        for position in 0..depth {
            for log in &self.logs {
                let Some(&node) = log.chain.get(position) else {
                    continue;
                };
                let role = match position {
                    0 => "head",
                    p if p + 1 == log.chain.len() => "tail",
                    _ => "middle",
                };
                match involved.iter_mut().find(|(id, _)| *id == node) {
                    Some((_, roles)) if !roles.contains(&role) => roles.push(role),
                    Some(_) => {}
                    None => involved.push((node, vec![role])),
                }
            }
        }
        involved
            .into_iter()
            .filter_map(|(id, roles)| Some((self.node(Some(id))?, roles.join("+"))))
            .collect()
    }

    /// Shards that take the run's appends (each log's head shard, counted once): what a
    /// per-shard figure divides by.
    pub(crate) fn head_shards(&self) -> usize {
        let mut heads: Vec<(Option<u64>, u16)> = self
            .logs
            .iter()
            .map(|l| (l.chain.first().copied(), l.head_shard))
            .collect();
        heads.sort_unstable();
        heads.dedup();
        heads.len().max(1)
    }

    /// The target in a phrase: `127.0.0.1:7400, 2 shards` or `controller 127.0.0.1:7000, 3
    /// nodes`.
    pub(crate) fn phrase(&self) -> String {
        match self.kind {
            "node" => {
                let n = self.nodes[0].shard_count;
                format!(
                    "{}, {n} shard{}",
                    self.target,
                    if n == 1 { "" } else { "s" }
                )
            }
            _ => format!(
                "controller {}, {} node{}",
                self.target,
                self.nodes.len(),
                if self.nodes.len() == 1 { "" } else { "s" }
            ),
        }
    }

    /// The human-readable lines: the target, its nodes and the logs' chains.
    pub(crate) fn human(&self, out: &mut String) {
        use std::fmt::Write as _;
        let shards = |n: u16| format!("{n} shard{}", if n == 1 { "" } else { "s" });
        if self.kind == "node" {
            let node = &self.nodes[0];
            let _ = writeln!(
                out,
                "  node           {}, {}; {}",
                node.addr,
                shards(node.shard_count),
                self.logs
                    .iter()
                    .map(|l| format!("{} on shard {}", l.name, l.head_shard))
                    .collect::<Vec<_>>()
                    .join(", "),
            );
            return;
        }
        let nodes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                format!(
                    "node {} at {} ({}{})",
                    n.node_id.unwrap_or_default(),
                    n.addr,
                    shards(n.shard_count),
                    if n.alive { "" } else { ", not alive" }
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "  cluster        controller {}; {} node{}: {}",
            self.target,
            self.nodes.len(),
            if self.nodes.len() == 1 { "" } else { "s" },
            nodes.join(", "),
        );
        for log in &self.logs {
            let chain: Vec<String> = log.chain.iter().map(u64::to_string).collect();
            let _ = writeln!(
                out,
                "  chain          {} (rf {}): {} (head's shard {})",
                log.name,
                log.chain.len(),
                chain.join(" -> "),
                log.head_shard,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(id: u64, port: u16) -> NodeInfo {
        NodeInfo {
            node_id: Some(id),
            addr: format!("127.0.0.1:{port}"),
            shard_count: 2,
            alive: id != 3,
            metrics: default_metrics(&format!("127.0.0.1:{port}"), 2),
        }
    }

    fn log(name: &str, chain: &[u64], head_shard: u16) -> LogChain {
        LogChain {
            name: name.into(),
            log_id: log_id(name),
            chain: chain.to_vec(),
            head_shard,
        }
    }

    #[test]
    fn a_cluster_names_its_nodes_chains_and_the_shards_that_take_the_appends() {
        let t = Topology {
            kind: "cluster",
            target: "127.0.0.1:7000".into(),
            nodes: vec![node(1, 7100), node(2, 7200), node(3, 7300)],
            logs: vec![
                log("bench-0", &[1, 2, 3], 0),
                log("bench-1", &[2, 3, 1], 1),
                log("bench-2", &[1, 3, 2], 0),
            ],
        };
        let roles: Vec<(Option<u64>, String)> = t
            .involved()
            .into_iter()
            .map(|(n, role)| (n.node_id, role))
            .collect();
        assert_eq!(
            roles,
            [
                (Some(1), "head+tail".to_string()),
                (Some(2), "head+middle+tail".to_string()),
                (Some(3), "middle+tail".to_string()),
            ]
        );
        // bench-0 and bench-2 share node 1's shard 0.
        assert_eq!(t.head_shards(), 2);
        assert_eq!(t.nodes[0].metrics.as_deref(), Some("127.0.0.1:7102"));
        let mut out = String::new();
        t.human(&mut out);
        assert!(out.contains("controller 127.0.0.1:7000; 3 nodes"), "{out}");
        assert!(
            out.contains("node 3 at 127.0.0.1:7300 (2 shards, not alive)"),
            "{out}"
        );
        assert!(out.contains("bench-1 (rf 3): 2 -> 3 -> 1"), "{out}");
    }

    #[test]
    fn a_standalone_node_is_one_node_of_its_shards() {
        let t = Topology {
            kind: "node",
            target: "127.0.0.1:7400".into(),
            nodes: vec![NodeInfo {
                node_id: None,
                addr: "127.0.0.1:7400".into(),
                shard_count: 4,
                alive: true,
                metrics: default_metrics("127.0.0.1:7400", 4),
            }],
            logs: vec![log("a", &[], 1), log("b", &[], 1), log("c", &[], 3)],
        };
        assert_eq!(t.head_shards(), 2);
        assert_eq!(t.nodes[0].metrics.as_deref(), Some("127.0.0.1:7404"));
        assert_eq!(t.involved().len(), 1);
        let mut out = String::new();
        t.human(&mut out);
        assert_eq!(
            out,
            "  node           127.0.0.1:7400, 4 shards; a on shard 1, b on shard 1, c on shard 3\n"
        );
    }
}
