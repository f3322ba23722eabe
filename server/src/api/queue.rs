//! Bounded queues whose slots are one pointer wide, for the queues every node session holds.
//!
//! tokio's bounded channel allocates its slots in blocks of 32 as it is created, whatever its
//! capacity, and a slot is as large as the message. A drone's session holds four queues of
//! protocol messages (its outbound stream, its in-line inbound messages, its renewals and its
//! reports); a slot of `Result<DroneAttachResponse, Status>` is ~390 bytes, and the four blocks
//! cost a session 27 KiB before a message was sent: 270 MiB of the controller's 470 MiB with
//! 10,000 drones attached (heaptrack; BENCHMARKS.md, "Session of 2026-12-07 (14)"). Here each
//! message is boxed on its way in and unboxed on its way out, so a block is 32 pointers: one
//! small allocation per message instead, and these queues carry at most thousands a second.
//!
//! The API is tokio's, message by message, so that a call site reads as it would on
//! `tokio::sync::mpsc`; errors hand the message back unboxed.

use futures::Stream;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::sync::mpsc::{self, error::SendError, error::TryRecvError, error::TrySendError};

/// A bounded queue of `capacity` messages.
pub(super) fn channel<T>(capacity: usize) -> (Sender<T>, Receiver<T>) {
    let (tx, rx) = mpsc::channel(capacity);
    (Sender(tx), Receiver(rx))
}

pub(super) struct Sender<T>(mpsc::Sender<Box<T>>);

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        Sender(self.0.clone())
    }
}

impl<T> Sender<T> {
    /// Waits for room, as [`mpsc::Sender::send`].
    pub(super) async fn send(&self, message: T) -> Result<(), SendError<T>> {
        self.0.send(Box::new(message)).await.map_err(|SendError(message)| SendError(*message))
    }

    /// Queues if there is room now, as [`mpsc::Sender::try_send`].
    pub(super) fn try_send(&self, message: T) -> Result<(), TrySendError<T>> {
        self.0.try_send(Box::new(message)).map_err(|err| match err {
            TrySendError::Full(message) => TrySendError::Full(*message),
            TrySendError::Closed(message) => TrySendError::Closed(*message),
        })
    }

    /// Completes once the receiver is gone.
    pub(super) async fn closed(&self) {
        self.0.closed().await
    }
}

/// The receiving half; also a [`Stream`] of the messages, for a response stream (public as the
/// `AttachStream` of the node services is).
pub struct Receiver<T>(mpsc::Receiver<Box<T>>);

impl<T> Receiver<T> {
    pub(super) async fn recv(&mut self) -> Option<T> {
        self.0.recv().await.map(|message| *message)
    }

    pub(super) fn try_recv(&mut self) -> Result<T, TryRecvError> {
        self.0.try_recv().map(|message| *message)
    }
}

impl<T> Stream for Receiver<T> {
    type Item = T;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
        self.0.poll_recv(cx).map(|message| message.map(|message| *message))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn a_queue_delivers_in_order_and_hands_back_what_it_could_not_take() {
        let (tx, mut rx) = channel::<String>(2);
        tx.send("one".into()).await.unwrap();
        tx.try_send("two".into()).unwrap();
        match tx.try_send("three".into()) {
            Err(TrySendError::Full(message)) => assert_eq!(message, "three"),
            other => panic!("a full queue took a message: {other:?}"),
        }
        assert_eq!(rx.try_recv().unwrap(), "one");
        assert_eq!(rx.recv().await.unwrap(), "two");
        assert!(matches!(rx.try_recv(), Err(TryRecvError::Empty)));

        tx.send("four".into()).await.unwrap();
        let tx2 = tx.clone();
        drop(tx);
        drop(tx2);
        assert_eq!(rx.next().await.as_deref(), Some("four"));
        assert_eq!(rx.next().await, None, "the stream ends once every sender is gone");

        let (tx, rx) = channel::<String>(1);
        drop(rx);
        tx.closed().await;
        match tx.send("five".into()).await {
            Err(SendError(message)) => assert_eq!(message, "five"),
            Ok(()) => panic!("a queue with no receiver took a message"),
        }
    }
}
