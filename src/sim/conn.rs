//! A simulated client's connection to one node's shard, over the world's TCP-like streams:
//! connect (after a pause when the last attempt failed), HELLO, requests with ids, and the
//! whole answer frames that arrived. Every client of the workload (writers, readers,
//! subscribers, the trimmer) talks to nodes through one of these; what a lost connection
//! means for its requests is the client's to decide.

use std::net::SocketAddr;

use chainlog_net::{
    decode_response, encode_request, parse_frame, ErrorCode, HelloRequest, Request, Response,
};

use super::world::{EndpointId, HostId, World};
use crate::node::env::Sock;
use crate::node::ops::{NetOp, NetToken};

/// Pause before connecting again after a connection failed or was dropped.
pub(crate) const RETRY_US: u64 = 20_000;

/// Whether a node's ERROR means: sent again unchanged, later, perhaps elsewhere, the request
/// can succeed. It did not take effect (an ERROR never does). Besides the retryable codes,
/// those that say the client's map is stale (`crate::client` fetches a newer one and
/// routes again; a simulated client is given the newest chain at once): UNKNOWN_LOG (a node
/// that does not have the log yet, or no more), WRONG_EPOCH and SEALED (an epoch that the
/// controller is reconfiguring, or that ended).
pub(crate) fn try_again(code: ErrorCode) -> bool {
    code.is_retryable()
        || matches!(
            code,
            ErrorCode::UnknownLog | ErrorCode::WrongEpoch | ErrorCode::Sealed
        )
}

#[derive(Clone, Copy, Debug)]
enum State {
    /// No connection; connect at `at_us` (when wanted).
    Idle {
        at_us: u64,
    },
    Connecting {
        sock: Sock,
        to: SocketAddr,
    },
    /// Connected and greeted (HELLO sent: answers are matched by request id).
    Up {
        sock: Sock,
        to: SocketAddr,
    },
}

/// What [`ClientConn::poll`] found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Link {
    /// No connection (none wanted, connecting, or waiting to retry).
    Down,
    /// Connected just now: nothing sent before is outstanding on it.
    Fresh,
    /// Connected, as before.
    Up,
    /// The connection ended just now (reset, closed by the node, or failed to connect):
    /// whatever was outstanding on it has an unknown outcome.
    Lost,
}

/// A client's connection. See the module documentation.
#[derive(Debug)]
pub(crate) struct ClientConn {
    endpoint: EndpointId,
    host: HostId,
    state: State,
    /// Bytes received and not yet taken as whole frames.
    inbox: Vec<u8>,
    next_request: u64,
}

impl ClientConn {
    /// A client (its own process on its own host) with no connection.
    pub(crate) fn new(world: &mut World, host: HostId) -> ClientConn {
        ClientConn {
            endpoint: world.endpoint(),
            host,
            state: State::Idle { at_us: 0 },
            inbox: Vec::new(),
            next_request: 1,
        }
    }

    /// Whether a connection is up.
    pub(crate) fn is_up(&self) -> bool {
        matches!(self.state, State::Up { .. })
    }

    /// Moves the connection along: connects to `to` if `want` and it is time, completes a
    /// connect (greeting the node), notices a connection that ended. A connection that is up
    /// or being made to another address than `to` (the map moved the shard) is dropped.
    pub(crate) fn poll(&mut self, world: &mut World, to: SocketAddr, want: bool) -> Link {
        let now = world.now_us();
        match self.state {
            State::Idle { at_us } if want && at_us <= now => {
                let token = NetToken::of(NetOp::LinkConnect);
                let sock = world.connect(self.endpoint, self.host, to, token, true);
                self.state = State::Connecting { sock, to };
                Link::Down
            }
            State::Idle { .. } => Link::Down,
            State::Connecting { sock, to: at } => match world.client_connected(sock) {
                _ if at != to => {
                    self.drop_conn(world);
                    Link::Lost
                }
                Some(true) => {
                    let mut out = Vec::new();
                    encode_request(&mut out, 0, &Request::Hello(HelloRequest::CURRENT));
                    world.client_send(sock, out);
                    self.state = State::Up { sock, to };
                    self.inbox.clear();
                    Link::Fresh
                }
                Some(false) => {
                    self.drop_conn(world);
                    Link::Lost
                }
                None => Link::Down,
            },
            State::Up { to: at, .. } if at != to => {
                self.drop_conn(world);
                Link::Lost
            }
            State::Up { .. } => Link::Up,
        }
    }

    /// Sends `request` on the connection (which must be up); returns its request id.
    pub(crate) fn send(&mut self, world: &mut World, request: &Request<'_>) -> u64 {
        let id = self.next_id();
        let mut out = Vec::new();
        encode_request(&mut out, id, request);
        self.send_bytes(world, out);
        id
    }

    /// A request id for a request the caller encodes itself.
    pub(crate) fn next_id(&mut self) -> u64 {
        let id = self.next_request;
        self.next_request += 1;
        id
    }

    /// Sends encoded requests on the connection (which must be up).
    pub(crate) fn send_bytes(&mut self, world: &mut World, bytes: Vec<u8>) {
        let State::Up { sock, .. } = self.state else {
            unreachable!("a client sends only on a connection that is up");
        };
        world.client_send(sock, bytes);
    }

    /// Hands every whole answer that arrived to `each` (request id, answer), in order; an
    /// answer that does not decode is handed over as an `Err` with what is wrong. Returns
    /// whether the connection ended (then it is dropped: [`Link::Lost`] is the caller's to
    /// act on).
    pub(crate) fn receive(
        &mut self,
        world: &mut World,
        each: &mut dyn FnMut(u64, Result<Response<'_>, String>),
    ) -> bool {
        let State::Up { sock, .. } = self.state else {
            return false;
        };
        let ended = world.client_take(sock, &mut self.inbox);
        let limits = super::node::limits();
        let mut consumed = 0;
        loop {
            match parse_frame(&self.inbox[consumed..], &limits) {
                Ok(Some(frame)) => {
                    consumed += frame.frame_bytes();
                    let answer = decode_response(&frame, &limits)
                        .map_err(|e| format!("a bad answer from the node: {e}"));
                    each(frame.request_id, answer);
                }
                Ok(None) => break,
                Err(e) => {
                    each(0, Err(format!("a bad frame from the node: {e}")));
                    consumed = self.inbox.len();
                    break;
                }
            }
        }
        self.inbox.drain(..consumed);
        if ended {
            self.drop_conn(world);
        }
        ended
    }

    /// Closes the connection (if any); the next connect waits [`RETRY_US`].
    pub(crate) fn drop_conn(&mut self, world: &mut World) {
        if let State::Up { sock, .. } | State::Connecting { sock, .. } = self.state {
            world.close(sock);
        }
        self.state = State::Idle {
            at_us: world.now_us() + RETRY_US,
        };
        self.inbox.clear();
    }
}
