//! Cluster membership as clients see it: member and cluster IDs, names and
//! URLs.
//!
//! IDs are derived exactly as etcd derives them (SHA-1 of the sorted peer
//! URLs plus the cluster token; the cluster ID from the sorted member IDs),
//! so a kardia member started with etcd's flags reports the same IDs etcd
//! would. Built from the configuration at start; read by the v2 handlers.

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
    fn ids_match_etcd_defaults() {
        // etcd's well-known IDs for `etcd` started with no flags.
        let id = member_id(&["http://localhost:2380".to_string()], "etcd-cluster");
        assert_eq!(format!("{id:x}"), "8e9e05c52164694d");
        assert_eq!(format!("{:x}", cluster_id(&[id])), "cdf818194e3a8c32");
    }
}
