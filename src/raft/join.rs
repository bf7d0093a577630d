//! Membership through the log, and what the peer port hands this member.
//!
//! [`add_member`] and [`remove_member`] (the members API, and `-peers`
//! joins) become raft configuration changes queued like proposals; their
//! answer comes once this member has applied the change. [`Inbound`] is the
//! peer transport's [`Receiver`]: raft messages go to the raft loop of the
//! shard they name, the two notices (a peer's stream ended, this member was
//! removed) to the group's [`super::Status`], and join and lookup requests
//! are answered here — a join by adding the newcomer through the log, a
//! lookup with the membership.

use std::future::Future;
use std::pin::Pin;

use super::*;
use crate::cluster::transport::{Receiver, KIND_JOIN};

/// The raft side of the peer port, for the transport (see the module text).
pub struct Inbound(pub Rc<Shard>);

impl Receiver for Inbound {
    fn raft(&self, shard: u16, m: Message) {
        let to = shard as usize;
        if to == self.0.id {
            self.0.deliver(m);
        } else if to < self.0.shared.shards && self.0.shared.seq.enabled {
            // Another group of a sharded cluster: to its executor.
            self.0
                .send(to, crate::shard::mesh::Msg::Peer(PeerMsg::In(m)));
        } else {
            tracing::warn!(
                shard,
                "raft message for a shard this member does not replicate; dropped"
            );
        }
    }

    fn removed(&self) {
        self.0.raft.note_removed();
        self.0.kick_loop();
    }

    fn lost(&self, id: u64) {
        self.0.raft.note_lost_peer(id);
        self.0.kick_loop();
        if self.0.shared.seq.enabled {
            for to in (0..self.0.shared.shards).filter(|&s| s != self.0.id) {
                self.0
                    .send(to, crate::shard::mesh::Msg::Peer(PeerMsg::Lost(id)));
            }
        }
    }

    fn request(
        &self,
        kind: u8,
        payload: Vec<u8>,
    ) -> Pin<Box<dyn Future<Output = Result<Vec<u8>, String>>>> {
        let shard = self.0.clone();
        Box::pin(async move {
            if kind == KIND_JOIN {
                join(shard, payload).await
            } else {
                let mut body = shard
                    .view()
                    .read()
                    .map(|v| v.encode())
                    .map_err(|_| "membership unavailable".to_string())?;
                body.extend_from_slice(shard.shared.layout().line().as_bytes());
                Ok(body)
            }
        })
    }
}

/// Peer traffic of a sharded cluster's groups between executors: every
/// executor sends its group's messages itself, but peers' connections
/// arrive on executor 0's listener.
pub enum PeerMsg {
    /// To a group's executor: a message from a peer.
    In(Message),
    /// To every group's executor: peer `id`'s stream ended.
    Lost(u64),
}

/// Handle peer traffic another executor passed on.
pub fn on_mesh(shard: &Rc<Shard>, m: PeerMsg) {
    match m {
        PeerMsg::In(m) => shard.deliver(m),
        PeerMsg::Lost(id) => {
            shard.raft.note_lost_peer(id);
            shard.kick_loop();
        }
    }
}

/// A newcomer asks to join: add it through raft, answer with the cluster.
async fn join(shard: Rc<Shard>, request: Vec<u8>) -> Result<Vec<u8>, String> {
    if shard.shared.shards > 1 && !shard.shared.seq.enabled {
        return Err(format!(
            "shard layout: this member runs {} shards without --experimental-sharded-cluster, so it cannot take members (a replicated member runs one shard, or every shard as a raft group with that flag)",
            shard.shared.shards
        ));
    }
    let text = std::str::from_utf8(&request).map_err(|_| "bad join request".to_string())?;
    let line = text.lines().next().unwrap_or("");
    let mut m = Member::decode(line).ok_or("bad join request")?;
    // A newcomer from before layouts were sent runs one shard.
    let wanted = crate::cluster::Layout::find(&request).unwrap_or(crate::cluster::Layout {
        shards: 1,
        unit_depth: None,
    });
    let mine = shard.shared.layout();
    if let Some(why) = mine.refuses(wanted) {
        return Err(why);
    }
    let (cid, existing) = {
        let v = shard.view().read().map_err(|_| "membership unavailable")?;
        let existing = v
            .members
            .iter()
            .find(|x| x.name == m.name)
            .or_else(|| v.sharing_peer_url(&m.peer_urls).next())
            .cloned();
        (v.id, existing)
    };
    if let Some(x) = existing {
        return Err(format!(
            "member {:?} ({:x}, peer URLs {}) is already in the cluster; a member that lost its data dir must be removed first (DELETE /v2/members/{:x})",
            x.name,
            x.id,
            x.peer_urls.join(","),
            x.id
        ));
    }
    m.id = crate::cluster::member_id(&m.peer_urls, &format!("{cid:x}-{}", super::wall_nanos()));
    tracing::info!(name = %m.name, id = %format!("{:x}", m.id), "adding member (join request)");
    match add_member(&shard, m).await {
        Answer::Read(Ok((mut body, _))) => {
            body.extend_from_slice(mine.line().as_bytes());
            Ok(body)
        }
        Answer::Read(Err(e)) => Err(String::from_utf8_lossy(&e.cause).into_owned()),
        Answer::Write(_) => Err("unexpected answer".into()),
    }
}

/// Add member `m`, or replace the record of a member already in the
/// cluster (new peer URLs), through a raft configuration change; the
/// answer carries the encoded membership once the change is applied here.
pub async fn add_member(shard: &Rc<Shard>, m: Member) -> Answer {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::AddNode);
    cc.node_id = m.id;
    cc.context = m.encode().into_bytes().into();
    conf_change(shard, cc).await
}

/// Remove member `id` through a raft configuration change.
pub async fn remove_member(shard: &Rc<Shard>, id: u64) -> Answer {
    let mut cc = ConfChange::default();
    cc.set_change_type(ConfChangeType::RemoveNode);
    cc.node_id = id;
    conf_change(shard, cc).await
}

pub(super) async fn conf_change(shard: &Rc<Shard>, cc: ConfChange) -> Answer {
    let mut data = vec![REQ_CONF];
    data.extend_from_slice(&cc.write_to_bytes().unwrap_or_default());
    // A sharded cluster changes group 0 first; the other groups follow
    // its configuration (`sequencer::follow_conf`).
    let answer = if shard.shared.seq.enabled {
        shard.propose(0, data).await
    } else {
        shard.request(data).await
    };
    match answer {
        Answer::Write(Reply {
            outcome: Err(e), ..
        }) => Answer::Read(Err(e)),
        a => a,
    }
}
