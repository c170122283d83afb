//! A subscription's client side: a `Stream` of the records the server pushes, with credit-based
//! flow control (PROTOCOL.md section 7). The server may push at most `credit` records that the
//! consumer has not taken yet; each time half of that has been consumed, a CREDIT for it goes
//! out, so a consumer that stops consuming stops the server, and one that keeps up never waits
//! for credit.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use chainlog_net::{CreditRequest, Request, UnsubscribeRequest};
use tokio::sync::mpsc;

use super::conn::{Conn, SubEvent};
use super::{ClientError, Record};

/// A live subscription (see [`Client::subscribe`](super::Client::subscribe)). Yields records in
/// LSN order; ends (`None`) after the server's END, or after one error item. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct Subscription {
    conn: Arc<Conn>,
    id: u64,
    start_lsn: u64,
    credit: u32,
    /// Records consumed since the last CREDIT.
    consumed: u32,
    buffered: VecDeque<Record>,
    events: mpsc::UnboundedReceiver<SubEvent>,
    /// The stream has ended (END seen, or an error yielded).
    done: bool,
    /// An error to yield once the buffered records are consumed.
    failed: Option<ClientError>,
    /// The server ended the stream: nothing to unsubscribe.
    ended: bool,
}

impl Subscription {
    pub(crate) fn new(
        conn: Arc<Conn>,
        id: u64,
        start_lsn: u64,
        credit: u32,
        events: mpsc::UnboundedReceiver<SubEvent>,
    ) -> Subscription {
        Subscription {
            conn,
            id,
            start_lsn,
            credit,
            consumed: 0,
            buffered: VecDeque::new(),
            events,
            done: false,
            failed: None,
            ended: false,
        }
    }

    /// The LSN of the first record the stream yields.
    pub fn start_lsn(&self) -> u64 {
        self.start_lsn
    }

    /// The next record; `None` once the stream has ended.
    pub async fn next(&mut self) -> Option<Result<Record, ClientError>> {
        std::future::poll_fn(|cx| self.poll_item(cx)).await
    }

    fn take(&mut self) -> Option<Result<Record, ClientError>> {
        if let Some(record) = self.buffered.pop_front() {
            self.consumed += 1;
            if !self.ended && self.consumed >= self.credit / 2 {
                self.conn.send_unanswered(&Request::Credit(CreditRequest {
                    subscription_id: self.id,
                    records: self.consumed,
                }));
                self.consumed = 0;
            }
            return Some(Ok(record));
        }
        if let Some(error) = self.failed.take() {
            self.done = true;
            return Some(Err(error));
        }
        if self.ended {
            self.done = true;
        }
        None
    }

    fn poll_item(&mut self, cx: &mut Context<'_>) -> Poll<Option<Result<Record, ClientError>>> {
        loop {
            if self.done {
                return Poll::Ready(None);
            }
            if let Some(item) = self.take() {
                return Poll::Ready(Some(item));
            }
            if self.done {
                return Poll::Ready(None);
            }
            match self.events.poll_recv(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(None) => {
                    self.ended = true;
                    self.failed = Some(ClientError::ConnectionLost {
                        shard: self.conn.hello().shard_index,
                        reason: "the subscription's connection went away".into(),
                    });
                }
                Poll::Ready(Some(SubEvent::Records { records, end })) => {
                    self.buffered.extend(records);
                    self.ended |= end;
                }
                Poll::Ready(Some(SubEvent::Failed(error))) => {
                    self.ended = true;
                    self.failed = Some(error);
                }
                Poll::Ready(Some(SubEvent::Started(_))) => {
                    self.ended = true;
                    self.failed = Some(ClientError::Protocol(
                        "a second SUBSCRIBE acknowledgement".into(),
                    ));
                }
            }
        }
    }
}

impl futures_core::Stream for Subscription {
    type Item = Result<Record, ClientError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.get_mut().poll_item(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if !self.ended {
            self.conn
                .send_unanswered(&Request::Unsubscribe(UnsubscribeRequest {
                    subscription_id: self.id,
                }));
        }
    }
}
