//! Binding a node's listening sockets, in the main thread before any shard starts: shard `i`
//! at the base port + `i` and, when the metrics port is derived from the listen address, the
//! port after the last shard's. With base port 0 the node finds a run of consecutive free
//! ports by binding them, and hands the bound sockets to the shards: a port is never chosen,
//! released and bound again later, so nothing (an outgoing connection taking an ephemeral
//! port, say) can take it in between (ARCHITECTURE.md, "Ports"). Once every shard serves, the
//! node says where on stdout, one [`Serving`] line, which scripts and tests read.

use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::str::FromStr;

/// The start of the line a node prints on stdout once every shard serves.
const SERVING_PREFIX: &str = "chainlog node: serving at ";

/// Where a node serves, as it says on stdout once every shard serves:
/// `chainlog node: serving at 127.0.0.1:7400, shards 2, metrics at 127.0.0.1:7402` (or
/// `metrics off`). Shard `i` serves at `addr`'s port + `i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Serving {
    /// Shard 0's address.
    pub addr: SocketAddr,
    /// How many shards.
    pub shards: u16,
    /// Where `GET /metrics` is served, if anywhere.
    pub metrics: Option<SocketAddr>,
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SERVING_PREFIX}{}, shards {}, ", self.addr, self.shards)?;
        match self.metrics {
            Some(metrics) => write!(f, "metrics at {metrics}"),
            None => write!(f, "metrics off"),
        }
    }
}

impl FromStr for Serving {
    type Err = String;

    fn from_str(line: &str) -> Result<Serving, String> {
        let bad = || format!("not a node's serving line: {line:?}");
        let rest = line.trim().strip_prefix(SERVING_PREFIX).ok_or_else(bad)?;
        let mut parts = rest.split(", ");
        let mut next = || parts.next().ok_or_else(bad);
        let addr = next()?.parse().map_err(|_| bad())?;
        let shards = next()?
            .strip_prefix("shards ")
            .and_then(|n| n.parse().ok())
            .ok_or_else(bad)?;
        let metrics = match next()? {
            "metrics off" => None,
            at => Some(
                at.strip_prefix("metrics at ")
                    .and_then(|a| a.parse().ok())
                    .ok_or_else(bad)?,
            ),
        };
        Ok(Serving {
            addr,
            shards,
            metrics,
        })
    }
}

/// Tries at finding a run of free consecutive ports (each starts at a port the kernel picks)
/// before giving up.
pub const RUN_TRIES_MAX: usize = 64;

/// Why [`bind_run`] failed.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The `index`-th port of the run could not be bound.
    #[error("listening on {addr}: {source}")]
    Port {
        /// Its place in the run (0: the base port).
        index: usize,
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// Every try at a run from a port the kernel picked met a port in use.
    #[error("no {count} consecutive free ports on {host} in {RUN_TRIES_MAX} tries")]
    NoRun {
        /// The host.
        host: std::net::IpAddr,
        /// The length of the run.
        count: usize,
    },
}

/// `count` listening sockets (at least one) on `addr`'s host at consecutive ports: from
/// `addr`'s port, or, if that is 0, from a port the kernel picks such that the whole run is
/// free (retried from another base when one of them is in use).
pub fn bind_run(addr: SocketAddr, count: usize) -> Result<Vec<TcpListener>, BindError> {
    assert!(count > 0, "a run has at least one port");
    if addr.port() != 0 {
        return (0..count).map(|index| bind_at(addr, index)).collect();
    }
    for _ in 0..RUN_TRIES_MAX {
        let first = bind_at(addr, 0)?;
        let base = local_port(&first, addr)?;
        if usize::from(base) + count - 1 > usize::from(u16::MAX) {
            continue;
        }
        let mut run = vec![first];
        let mut base_addr = addr;
        base_addr.set_port(base);
        for index in 1..count {
            match bind_at(base_addr, index) {
                Ok(listener) => run.push(listener),
                Err(BindError::Port { source, .. })
                    if source.kind() == io::ErrorKind::AddrInUse =>
                {
                    break
                }
                Err(e) => return Err(e),
            }
        }
        if run.len() == count {
            return Ok(run);
        }
    }
    Err(BindError::NoRun {
        host: addr.ip(),
        count,
    })
}

/// A listener on `base`'s host at its port + `index`.
fn bind_at(base: SocketAddr, index: usize) -> Result<TcpListener, BindError> {
    let mut addr = base;
    let port = usize::from(base.port()) + index;
    let fail = |addr, source| BindError::Port {
        index,
        addr,
        source,
    };
    let port = u16::try_from(port).map_err(|_| {
        fail(
            addr,
            io::Error::new(io::ErrorKind::InvalidInput, "the port is above 65535"),
        )
    })?;
    addr.set_port(port);
    TcpListener::bind(addr).map_err(|source| fail(addr, source))
}

fn local_port(listener: &TcpListener, addr: SocketAddr) -> Result<u16, BindError> {
    listener
        .local_addr()
        .map(|a| a.port())
        .map_err(|source| BindError::Port {
            index: 0,
            addr,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn ports(run: &[TcpListener]) -> Vec<u16> {
        run.iter()
            .map(|l| l.local_addr().expect("addr").port())
            .collect()
    }

    #[test]
    fn port_0_binds_a_run_of_consecutive_ports_and_holds_it() {
        let run = bind_run(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 3).expect("a run");
        let got = ports(&run);
        assert_eq!(got, [got[0], got[0] + 1, got[0] + 2]);
        // Held: nobody else can bind them while the run lives.
        for port in got {
            let e = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).expect_err("held");
            assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        }
    }

    #[test]
    fn a_port_in_use_is_an_error_naming_its_place_in_the_run() {
        let held = bind_run(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)), 2).expect("a run");
        let second = held[1].local_addr().expect("addr");
        let e = bind_run(second, 2).expect_err("taken");
        match e {
            BindError::Port {
                index,
                addr,
                source,
            } => {
                assert_eq!((index, addr), (0, second));
                assert_eq!(source.kind(), io::ErrorKind::AddrInUse);
            }
            other => panic!("{other}"),
        }
    }

    #[test]
    fn the_serving_line_reads_back_as_written() {
        for metrics in [Some(SocketAddr::from((Ipv4Addr::LOCALHOST, 7402))), None] {
            let serving = Serving {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 7400)),
                shards: 2,
                metrics,
            };
            let line = serving.to_string();
            assert!(line.starts_with("chainlog node: serving at 127.0.0.1:7400, shards 2"));
            assert_eq!(line.parse::<Serving>(), Ok(serving));
        }
        assert!("chainlog controller: serving at 127.0.0.1:1"
            .parse::<Serving>()
            .is_err());
    }
}
