//! Cluster membership: member and cluster IDs, names and URLs, and the peer
//! transport that carries raft messages between members.
//!
//! IDs are derived exactly as etcd derives them (SHA-1 of the sorted peer
//! URLs plus the cluster token; the cluster ID from the sorted member IDs),
//! so a kardia member started with etcd's flags reports the same IDs etcd
//! would. The membership is built from the flags (or a join reply) at the
//! first start, then changed only by applied raft configuration changes; it
//! is kept in the store (so it travels in snapshots) and published to the
//! v2 handlers through a [`View`]. [`bootstrap`] finds the membership a
//! member starts with; [`transport`] moves frames between members.

pub mod bootstrap;
pub mod snapfile;
pub mod transport;

use std::sync::{Arc, RwLock};

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    pub peer_urls: Vec<String>,
    pub client_urls: Vec<String>,
}

/// The cluster as this member knows it.
#[derive(Debug, Clone)]
pub struct Cluster {
    pub id: u64,
    pub members: Vec<Member>,
    /// Index of this member in `members`.
    pub local: usize,
    /// Members removed from the cluster (they may not come back).
    pub removed: Vec<u64>,
}

/// The membership as the v2 handlers read it (changed by the raft loop).
pub type View = Arc<RwLock<Cluster>>;

/// How a member splits the keyspace into shards. Every member of a cluster
/// must split it alike (a key's raft group follows from it), so a join
/// request says what the newcomer was started with and the join and lookup
/// replies say what the cluster runs: a newcomer started without
/// `--shards` / `--unit-depth` adopts the cluster's; one started with
/// others is refused (by the member it asks to add it, when it joins with
/// `-peers`; by itself at start, when it was added through the members
/// API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Shards per member (0 in a request: whatever the cluster runs).
    pub shards: usize,
    /// The unit depth (None in a request: whatever the cluster runs).
    pub unit_depth: Option<usize>,
}

impl Layout {
    /// One line, `layout <shards> <unit depth or ->`, appended to a join
    /// request or to a join or lookup reply.
    pub fn line(&self) -> String {
        match self.unit_depth {
            Some(d) => format!("layout {} {d}\n", self.shards),
            None => format!("layout {} -\n", self.shards),
        }
    }

    /// The same layout as every member compares it: the unit depth only
    /// matters with several shards.
    pub fn normalized(self) -> Layout {
        Layout {
            shards: self.shards,
            unit_depth: if self.shards > 1 {
                self.unit_depth
            } else {
                None
            },
        }
    }

    /// The layout line in `text`, if there is one.
    pub fn find(text: &[u8]) -> Option<Layout> {
        let text = std::str::from_utf8(text).ok()?;
        let rest = text.lines().find_map(|l| l.strip_prefix("layout "))?;
        let (s, d) = rest.split_once(' ')?;
        Some(Layout {
            shards: s.parse().ok()?,
            unit_depth: match d {
                "-" => None,
                d => Some(d.parse().ok()?),
            },
        })
    }

    /// Why a newcomer started with `wanted` cannot join a cluster whose
    /// members run `self` (None: it can, adopting what it left open). The
    /// unit depth only matters with several shards.
    pub fn refuses(&self, wanted: Layout) -> Option<String> {
        let shards_differ = wanted.shards != 0 && wanted.shards != self.shards;
        let depth_differs = self.shards > 1
            && wanted
                .unit_depth
                .is_some_and(|d| Some(d) != self.unit_depth);
        if !shards_differ && !depth_differs {
            return None;
        }
        let depth = self.unit_depth.unwrap_or(0);
        Some(if self.shards > 1 {
            format!(
                "shard layout differs: this cluster's members run {} shards with unit depth {depth} (the newcomer: {} shards, unit depth {}); start it with --experimental-sharded-cluster and without --shards and --unit-depth (or with --shards {} --unit-depth {depth})",
                self.shards,
                wanted.shards,
                wanted.unit_depth.map_or("default".to_string(), |d| d.to_string()),
                self.shards
            )
        } else {
            format!(
                "shard layout differs: this cluster's members run one shard (the newcomer: {}); start it with --shards 1 or without --shards",
                wanted.shards
            )
        })
    }
}

impl Member {
    /// One line: `id<TAB>name<TAB>peer,urls<TAB>client,urls`.
    pub fn encode(&self) -> String {
        format!(
            "{:x}\t{}\t{}\t{}",
            self.id,
            self.name,
            self.peer_urls.join(","),
            self.client_urls.join(",")
        )
    }

    pub fn decode(line: &str) -> Option<Member> {
        let mut f = line.split('\t');
        let id = u64::from_str_radix(f.next()?, 16).ok()?;
        let name = f.next()?.to_string();
        let list = |s: Option<&str>| -> Vec<String> {
            s.unwrap_or("")
                .split(',')
                .filter(|u| !u.is_empty())
                .map(str::to_string)
                .collect()
        };
        let peer_urls = list(f.next());
        let client_urls = list(f.next());
        Some(Member {
            id,
            name,
            peer_urls,
            client_urls,
        })
    }
}

/// etcd's member ID: SHA-1 over the sorted peer URLs and the token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut urls = peer_urls.to_vec();
    urls.sort();
    let mut h = sha1_smol::Sha1::new();
    for u in &urls {
        h.update(u.as_bytes());
    }
    h.update(token.as_bytes());
    u64::from_be_bytes(h.digest().bytes()[..8].try_into().unwrap())
}

/// etcd's cluster ID: SHA-1 over the sorted member IDs (big-endian).
pub fn cluster_id(member_ids: &[u64]) -> u64 {
    let mut ids = member_ids.to_vec();
    ids.sort();
    let mut h = sha1_smol::Sha1::new();
    for id in ids {
        h.update(&id.to_be_bytes());
    }
    u64::from_be_bytes(h.digest().bytes()[..8].try_into().unwrap())
}

impl Cluster {
    pub fn local(&self) -> &Member {
        &self.members[self.local]
    }

    /// The member with `id`, if it is one.
    pub fn get(&self, id: u64) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    /// The members that already use one of `urls` as a peer URL.
    pub fn sharing_peer_url<'a>(&'a self, urls: &'a [String]) -> impl Iterator<Item = &'a Member> {
        self.members
            .iter()
            .filter(|m| m.peer_urls.iter().any(|u| urls.contains(u)))
    }

    /// Add or replace a member (keeping `local` pointing at this member).
    pub fn upsert(&mut self, m: Member) {
        let me = self.local().id;
        match self.members.iter_mut().find(|x| x.id == m.id) {
            Some(x) => *x = m,
            None => self.members.push(m),
        }
        self.local = self.members.iter().position(|x| x.id == me).unwrap_or(0);
    }

    /// Remove a member for good.
    pub fn remove(&mut self, id: u64) {
        let me = self.local().id;
        if id == me {
            // This member stays in its own list so it can still describe
            // itself; it is marked removed.
            if !self.removed.contains(&id) {
                self.removed.push(id);
            }
            return;
        }
        self.members.retain(|m| m.id != id);
        if !self.removed.contains(&id) {
            self.removed.push(id);
        }
        self.local = self.members.iter().position(|x| x.id == me).unwrap_or(0);
    }

    /// The membership as stored: `cluster <id>`, then `member <line>` and
    /// `removed <id>` lines.
    pub fn encode(&self) -> Vec<u8> {
        let mut s = format!("cluster {:x}\n", self.id);
        for m in &self.members {
            s.push_str("member ");
            s.push_str(&m.encode());
            s.push('\n');
        }
        for r in &self.removed {
            s.push_str(&format!("removed {r:x}\n"));
        }
        s.into_bytes()
    }

    /// Decode [`Cluster::encode`] as seen by the member named `name` (a
    /// newcomer that learns its id from a join reply).
    pub fn decode_named(b: &[u8], name: &str) -> Option<Cluster> {
        let mut c = Cluster::decode(b, 0)?;
        c.local = c.members.iter().position(|m| m.name == name)?;
        Some(c)
    }

    /// Decode [`Cluster::encode`] as seen by member `me` (0: anyone, the
    /// first member).
    pub fn decode(b: &[u8], me: u64) -> Option<Cluster> {
        let text = std::str::from_utf8(b).ok()?;
        let mut c = Cluster {
            id: 0,
            members: Vec::new(),
            local: 0,
            removed: Vec::new(),
        };
        for l in text.lines() {
            let (k, v) = l.split_once(' ')?;
            match k {
                "cluster" => c.id = u64::from_str_radix(v, 16).ok()?,
                "member" => c.members.push(Member::decode(v)?),
                "removed" => c.removed.push(u64::from_str_radix(v, 16).ok()?),
                // Carried by join and lookup replies ([`Layout`]).
                "layout" => {}
                _ => return None,
            }
        }
        c.local = match me {
            0 => 0,
            _ => c.members.iter().position(|m| m.id == me)?,
        };
        Some(c)
    }

    /// Members sorted by ID (the order etcd lists them in).
    pub fn sorted(&self) -> Vec<&Member> {
        let mut m: Vec<&Member> = self.members.iter().collect();
        m.sort_by_key(|m| m.id);
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn membership_round_trips() {
        let m = |id: u64, name: &str| Member {
            id,
            name: name.into(),
            peer_urls: vec![format!("http://127.0.0.1:{id}")],
            client_urls: vec![],
        };
        let mut c = Cluster {
            id: 7,
            members: vec![m(1, "a"), m(2, "b")],
            local: 1,
            removed: vec![],
        };
        c.upsert(m(3, "c"));
        c.remove(1);
        let d = Cluster::decode(&c.encode(), 2).unwrap();
        assert_eq!(d.members, c.members);
        assert_eq!(d.removed, vec![1]);
        assert_eq!(d.local().name, "b");
    }

    #[test]
    fn a_newcomer_adopts_or_is_refused_the_layout() {
        let cluster = Layout {
            shards: 2,
            unit_depth: Some(1),
        };
        let l = |shards, unit_depth| Layout { shards, unit_depth };
        let reply = [
            Cluster::encode(&Cluster::decode(b"cluster 7\n", 0).unwrap()),
            cluster.line().into_bytes(),
        ]
        .concat();
        assert_eq!(Layout::find(&reply), Some(cluster));
        assert!(
            Cluster::decode(&reply, 0).is_some(),
            "a reply still decodes"
        );
        assert_eq!(Layout::find(l(0, None).line().as_bytes()), Some(l(0, None)));
        assert_eq!(cluster.refuses(l(0, None)), None);
        assert_eq!(cluster.refuses(l(2, Some(1))), None);
        assert!(cluster
            .refuses(l(1, None))
            .unwrap()
            .contains("run 2 shards"));
        assert!(cluster.refuses(l(0, Some(3))).is_some());
        // One shard: the unit depth does not matter.
        assert_eq!(l(1, Some(1)).refuses(l(1, Some(3))), None);
        assert!(l(1, Some(1)).refuses(l(4, None)).is_some());
    }

    #[test]
    fn ids_match_etcd_defaults() {
        // etcd's well-known IDs for `etcd` started with no flags.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
