//! The mesh: messages between the executors of one member.
//!
//! Each executor holds one glommio shared channel to every other executor
//! (a full mesh, built once at start-up). A request for a key another shard
//! owns crosses as [`Msg::Propose`] or [`Msg::Read`] and comes back as
//! [`Msg::Answer`]; every durable batch's events go to every executor as
//! [`Msg::Events`] (and, in a sharded cluster, the epochs each shard
//! applies as [`Msg::Epoch`]); member-wide operations use [`Msg::Global`];
//! peer traffic of a sharded cluster's groups crosses as [`Msg::Peer`]. Receiving
//! never blocks on sending (a full channel hands the message to a task), so
//! executors cannot deadlock on each other's queues; messages wait behind
//! that task in order, so none overtakes an earlier one to the same
//! executor.

use std::cell::RefCell;
use std::collections::VecDeque;
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
    /// Known to be a large listing: read under the executor's bulk gate
    /// ([`super::BULK_BYTES`]), with no limit.
    pub bulk: bool,
    /// A quorum read of a sharded cluster: read a view at least this new
    /// (its read barrier's; see `raft::read_barrier`).
    pub at_least: u64,
}

/// A read of one key, for an HTTP answer: the body it is answered with
/// starts with [`crate::http::response::HEAD_ROOM`] bytes of room for the
/// response's head, so a large body is sent from where it was rendered.
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
    /// Shard `shard` applied epoch `start` (after its events below it);
    /// `lost`: a snapshot skipped events its history no longer holds, so
    /// watches end (they watch again and see 401, never a silent gap).
    Epoch {
        shard: usize,
        start: u64,
        lost: bool,
    },
    Global(global::Msg),
    Peer(crate::raft::join::PeerMsg),
    /// Run the raft loop now: the sequencer queued work for this group (a
    /// member-wide write to append, or an epoch it owes).
    Wake,
    /// Move this group's leadership to member `to` if this member leads it.
    Transfer {
        to: u64,
    },
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
    /// Messages waiting for room in a full channel, by executor id, in
    /// the order they were sent. While one waits, later ones queue behind
    /// it: a message never overtakes an earlier one to the same executor.
    overflow: Rc<Vec<RefCell<Overflow>>>,
}

#[derive(Default)]
struct Overflow {
    queue: VecDeque<Msg>,
    /// A task is sending the queue (possibly its last message, already
    /// taken out of it).
    draining: bool,
}

impl Mesh {
    fn new(senders: Vec<Option<ConnectedSender<Msg>>>) -> Mesh {
        let overflow = (0..senders.len()).map(|_| RefCell::default()).collect();
        Mesh {
            senders: Rc::new(senders),
            overflow: Rc::new(overflow),
        }
    }

    pub fn send(&self, to: usize, msg: Msg) {
        let Some(Some(s)) = self.senders.get(to) else {
            return;
        };
        let mut over = self.overflow[to].borrow_mut();
        if over.draining {
            over.queue.push_back(msg);
            return;
        }
        let msg = match s.try_send(msg) {
            Ok(()) => return,
            Err(glommio::GlommioError::WouldBlock(glommio::ResourceType::Channel(m))) => m,
            Err(_) => {
                tracing::error!(to, "mesh send failed: channel closed");
                return;
            }
        };
        // The channel is full: a task sends this message and every later
        // one, in order, waiting for room (sending never blocks the caller,
        // so executors cannot deadlock on each other's channels).
        over.queue.push_back(msg);
        over.draining = true;
        // The task may start right away: release the queue first.
        drop(over);
        let (senders, overflow) = (self.senders.clone(), self.overflow.clone());
        glommio::spawn_local(async move {
            let Some(Some(s)) = senders.get(to) else {
                return;
            };
            loop {
                let next = {
                    let mut over = overflow[to].borrow_mut();
                    let next = over.queue.pop_front();
                    over.draining = next.is_some();
                    next
                };
                let Some(msg) = next else { break };
                if s.send(msg).await.is_err() {
                    let mut over = overflow[to].borrow_mut();
                    over.queue.clear();
                    over.draining = false;
                    break;
                }
            }
        })
        .detach();
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
    shard.attach(Mesh::new(senders));
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
        Msg::Epoch {
            shard: from,
            start,
            lost,
        } => shard.close_epoch(from, start, lost),
        Msg::Global(m) => global::on_message(shard, m),
        Msg::Peer(m) => crate::raft::join::on_mesh(shard, m),
        Msg::Wake => shard.kick_loop(),
        Msg::Transfer { to } => {
            shard.raft.ask_transfer(to);
            shard.kick_loop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Messages to one executor arrive in the order sent, also when its
    /// channel is full and some of them wait for room.
    #[test]
    fn a_full_channel_keeps_the_order() {
        const N: usize = 3 * CHANNEL;
        let (s, r) = shared_channel::new_bounded::<Msg>(CHANNEL);
        let receiver = std::thread::spawn(move || {
            glommio::LocalExecutor::default().run(async move {
                let r = r.connect().await;
                // Start late, so the channel fills, then drain in bursts.
                glommio::timer::sleep(Duration::from_millis(100)).await;
                let mut got = Vec::with_capacity(N);
                while let Some(m) = r.recv().await {
                    if let Msg::Propose { slot, .. } = m {
                        got.push(slot);
                        if got.len() % 1000 == 0 {
                            glommio::timer::sleep(Duration::from_millis(1)).await;
                        }
                        if got.len() == N {
                            break;
                        }
                    }
                }
                got
            })
        });
        glommio::LocalExecutor::default().run(async move {
            let s = s.connect().await;
            let mesh = Mesh::new(vec![None, Some(s)]);
            for slot in 0..N {
                let data = Vec::new();
                mesh.send(
                    1,
                    Msg::Propose {
                        from: 0,
                        slot,
                        data,
                    },
                );
                if slot % 500 == 0 {
                    glommio::timer::sleep(Duration::from_millis(2)).await;
                }
            }
            while mesh.overflow[1].borrow().draining {
                glommio::timer::sleep(Duration::from_millis(1)).await;
            }
        });
        let got = receiver.join().expect("receiver");
        let first_wrong = got.iter().enumerate().find(|(i, s)| *i != **s);
        assert_eq!(first_wrong, None, "messages arrived out of order");
        assert_eq!(got.len(), N);
    }
}
