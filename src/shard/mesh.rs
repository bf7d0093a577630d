//! The mesh: messages between the executors of one member.
//!
//! Each executor holds one glommio shared channel to every other executor
//! (a full mesh, built once at start-up). A request for a key another shard
//! owns crosses as [`Msg::Propose`] or [`Msg::Read`] and comes back as
//! [`Msg::Answer`]; every durable batch's events go to every executor as
//! [`Msg::Events`]; member-wide operations use [`Msg::Global`]. Receiving
//! never blocks on sending (a full channel hands the message to a task), so
//! executors cannot deadlock on each other's queues.

use std::rc::Rc;
use std::sync::Arc;

use glommio::channels::shared_channel::{self, ConnectedSender, SharedReceiver, SharedSender};

use super::{global, Answer, Proposal, Shard, Target};
use crate::store::Event;

/// Messages queued per channel before a sender waits.
pub const CHANNEL: usize = 4096;

/// How to read a key.
#[derive(Debug, Clone, Copy)]
pub struct ReadOpts {
    pub recursive: bool,
    pub sorted: bool,
    pub now: i64,
}

/// A read of one key.
#[derive(Debug, Clone)]
pub struct ReadReq {
    pub key: Vec<u8>,
    pub opts: ReadOpts,
}

/// One message between executors.
pub enum Msg {
    Propose {
        from: usize,
        slot: usize,
        data: Vec<u8>,
    },
    Read {
        from: usize,
        slot: usize,
        req: ReadReq,
    },
    Answer {
        slot: usize,
        answer: Answer,
    },
    Events(Vec<Arc<Event>>),
    Global(global::Msg),
}

/// One executor's ends of the mesh, made before the executors start.
pub struct Ends {
    senders: Vec<Option<SharedSender<Msg>>>,
    receivers: Vec<Option<SharedReceiver<Msg>>>,
}

/// Make a full mesh for `shards` executors: entry `i` is executor `i`'s.
pub fn build(shards: usize) -> Vec<Ends> {
    let mut ends: Vec<Ends> = (0..shards)
        .map(|_| Ends {
            senders: (0..shards).map(|_| None).collect(),
            receivers: (0..shards).map(|_| None).collect(),
        })
        .collect();
    for from in 0..shards {
        for to in 0..shards {
            if from != to {
                let (s, r) = shared_channel::new_bounded(CHANNEL);
                ends[from].senders[to] = Some(s);
                ends[to].receivers[from] = Some(r);
            }
        }
    }
    ends
}

/// This executor's senders, by executor id.
pub struct Mesh {
    senders: Rc<Vec<Option<ConnectedSender<Msg>>>>,
}

impl Mesh {
    pub fn send(&self, to: usize, msg: Msg) {
        let Some(Some(s)) = self.senders.get(to) else {
            return;
        };
        if let Err(e) = s.try_send(msg) {
            let msg = match e {
                glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m)) => m,
                _ => {
                    tracing::error!(to, "mesh send failed: channel closed");
                    return;
                }
            };
            let senders = self.senders.clone();
            glommio::spawn_local(async move {
                if let Some(Some(s)) = senders.get(to) {
                    let _ = s.send(msg).await;
                }
            })
            .detach();
        }
    }
}

/// Connect this executor's ends and start receiving. A connection
/// completes when both executors have connected their ends, so every end
/// connects concurrently.
pub async fn join(shard: &Rc<Shard>, ends: Ends) -> Result<(), String> {
    for r in ends.receivers.into_iter().flatten() {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let stream = r.connect().await;
            // Handling a message may send one: wait for our own senders.
            while !shard.is_attached() {
                glommio::timer::sleep(std::time::Duration::from_millis(1)).await;
            }
            while let Some(msg) = stream.recv().await {
                dispatch(&shard, msg);
            }
        })
        .detach();
    }
    let tasks: Vec<_> = ends
        .senders
        .into_iter()
        .map(|s| s.map(|s| glommio::spawn_local(s.connect())))
        .collect();
    let mut senders = Vec::with_capacity(tasks.len());
    for t in tasks {
        senders.push(match t {
            Some(t) => Some(t.await),
            None => None,
        });
    }
    shard.attach(Mesh {
        senders: Rc::new(senders),
    });
    Ok(())
}

/// Handle one message from another executor (never waits).
pub fn dispatch(shard: &Rc<Shard>, msg: Msg) {
    match msg {
        Msg::Propose { from, slot, data } => shard.enqueue(Proposal {
            data,
            target: Some(Target::Remote { from, slot }),
        }),
        Msg::Read { from, slot, req } => {
            glommio::spawn_local(super::serve_read(
                shard.clone(),
                req,
                Target::Remote { from, slot },
            ))
            .detach();
        }
        Msg::Answer { slot, answer } => shard.complete(slot, answer),
        Msg::Events(events) => {
            let mut o = shard.orderer.borrow_mut();
            for e in events {
                o.offer(e);
            }
            drop(o);
            shard.note_watchers();
        }
        Msg::Global(m) => global::on_message(shard, m),
    }
}
