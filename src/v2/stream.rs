//! Reads of this executor's own shard that wait (for writes in flight, a
//! read barrier, or a large listing's turn), and large listings sent as
//! they are rendered: over HTTP/1.1 a listing larger than [`STREAM_FROM`]
//! leaves as a chunked body, its first slices in one chunk, then one slice
//! ([`crate::shard::SLICE_BYTES`]) per chunk, each rendered once the one
//! before it is with the kernel ([`crate::http::Service::next_part`]). A
//! client that keeps reading costs a few megabytes of memory whatever the
//! listing's size. Every slice reads the view the listing started on, so
//! the body is one consistent read, as etcd's is; the HTTP layer renders
//! whatever is left at once when a client is slow
//! ([`crate::http::STREAM_PATIENCE`]), so a view is never held for a slow
//! client.
//!
//! A read enters as its key and options (after any read barrier); its
//! answer leaves in the connection's output — whole, with
//! `Content-Length`, or a streamed listing's head and first chunk, with
//! the [`Listing`] the rest is rendered from.

use super::keys::{answer_in_place, delivered, head_in_room, read_error, read_headers, timed_out};
use super::Api;
use crate::etcd::error::V2Error;
use crate::http::response::{chunk_size, close_chunk, last_chunk, open_chunk, Output, HEAD_ROOM};
use crate::http::Part;
use crate::shard::mesh::ReadOpts;
use crate::shard::{begin_bulk, bulk_slice, read_at, read_bulk, readable, SLICE_BYTES};
use crate::store::{escalated_to, ReadAt, Slices, OVER_LIMIT};

/// A listing is sent as it renders once its first slices pass this;
/// a smaller one is answered whole. Each part costs a turn of the
/// executor and a send: 10,000-key listings (1.4 MB) sent in two parts
/// were 10 % fewer a second than whole ones.
pub const STREAM_FROM: usize = 4 << 20;

/// The rest of a listing being sent: the slices still to render.
pub struct Listing {
    slices: Slices,
}

/// What [`start`] did with a read.
pub enum Started {
    /// Answered: whole, or its head and first chunk with the rest to come.
    Answered(Option<Listing>),
    /// Another shard holds the listing's files: read it the usual way.
    Elsewhere,
}

/// A read being answered: what was asked (what an error answer names),
/// and how its answer is framed.
struct Ask<'k> {
    key: &'k [u8],
    recursive: bool,
    http11: bool,
    head_only: bool,
}

/// Read `key` from this executor's own shard once it can read at
/// `opts.at_least`: as a small read first (unless already known to be
/// large), as the shard's own reads are; a large one in the executor's
/// bulk turn, in slices (the executor's other work runs between them).
/// A large listing is sent as it renders over HTTP/1.1, with a body (not
/// HEAD), in the store's order (a `sorted=true` listing may have to be
/// rendered again from its start: over-long names are stored under hashed
/// keys) and first in the connection's output: answered with its first
/// slices up to [`STREAM_FROM`], the rest from [`next_part`]. Any other
/// is rendered whole.
pub async fn start(
    api: &Api,
    key: &[u8],
    mut opts: ReadOpts,
    head_only: bool,
    http11: bool,
    out: &mut Output,
) -> Started {
    let sh = &api.shard;
    let ask = Ask {
        key,
        recursive: opts.recursive,
        http11,
        head_only,
    };
    if !opts.bulk {
        let index = readable(sh, opts.at_least).await;
        let mut body = vec![0; HEAD_ROOM];
        match read_at(sh, index, key, opts, None, ReadAt::View, &mut body) {
            Err(e) if e.code == OVER_LIMIT => opts.bulk = true,
            r => return answer(api, &ask, index, r.map(Some), body, None, out).await,
        }
    }
    let stream = http11 && !head_only && !opts.sorted && out.is_empty();
    let turn = sh.bulk_turn().await;
    let index = readable(sh, opts.at_least).await;
    // Rendered behind room for the head: into the connection's output when
    // nothing waits there (sent from where it was rendered), else beside it.
    let mut body = if out.is_empty() {
        out.resize(HEAD_ROOM, 0);
        out.take()
    } else {
        vec![0; HEAD_ROOM]
    };
    if !stream {
        let r = read_bulk(sh, index, key, opts, ReadAt::View, &mut body).await;
        drop(turn);
        return answer(api, &ask, index, r.map(Some), body, None, out).await;
    }
    let mut slices = match begin_bulk(sh, index, key, opts, ReadAt::View) {
        Ok(s) => s,
        Err(e) => return answer(api, &ask, index, Err(e), body, None, out).await,
    };
    crate::executor::reserve(&mut body, STREAM_FROM + SLICE_BYTES + SLICE_BYTES / 4);
    let mut first = bulk_slice(sh, &mut slices, &mut body);
    while first.is_none() && body.len() - HEAD_ROOM < STREAM_FROM {
        crate::executor::after_next_poll().await;
        first = bulk_slice(sh, &mut slices, &mut body);
    }
    drop(turn);
    let r = first.transpose();
    answer(api, &ask, index, r, body, Some(slices), out).await
}

/// Answer a read of `index` rendered into `body` behind room for its head:
/// whole (`Some` index), or (`None`) its head and first chunk, the rest
/// to come from `slices`. A read that belongs to another shard is
/// [`Started::Elsewhere`].
async fn answer(
    api: &Api,
    ask: &Ask<'_>,
    index: u64,
    r: Result<Option<u64>, V2Error>,
    mut body: Vec<u8>,
    slices: Option<Slices>,
    out: &mut Output,
) -> Started {
    // A read answers once the index it was read at is delivered here.
    let r = match r {
        Ok(done) if delivered(api, index).await => Ok(done),
        Ok(_) => Err(timed_out(api)),
        Err(e) => Err(e),
    };
    match (r, slices) {
        (Ok(Some(i)), _) => answer_in_place(api, body, i, ask.http11, ask.head_only, out),
        (Ok(None), Some(slices)) => {
            let mut head = Vec::with_capacity(HEAD_ROOM);
            read_headers(api, &mut head, true, index).chunked();
            chunk_size(&mut head, body.len() - HEAD_ROOM);
            body.extend_from_slice(b"\r\n");
            head_in_room(body, &head, out);
            return Started::Answered(Some(Listing { slices }));
        }
        (Ok(None), None) => unreachable!("a whole read is done"),
        (Err(e), _) => {
            if out.capacity() == 0 {
                // (The output's buffer went into `body`.)
                body.clear();
                **out = body;
            }
            if escalated_to(&e).is_some() {
                return Started::Elsewhere;
            }
            read_error(
                api,
                ask.key,
                ask.recursive,
                e,
                ask.head_only,
                ask.http11,
                out,
            );
        }
    }
    Started::Answered(None)
}

/// Render the next slice of `l` into `out` as a chunk (in the executor's
/// bulk turn); the last one ends the body.
pub async fn next_part(api: &Api, l: &mut Listing, out: &mut Vec<u8>) -> Part {
    let _turn = api.shard.bulk_turn().await;
    let at = open_chunk(out);
    let r = bulk_slice(&api.shard, &mut l.slices, out);
    close_chunk(out, at);
    match r {
        None => Part::More,
        Some(Ok(_)) => {
            last_chunk(out);
            Part::Last
        }
        // A store failure (the shard stopped): the body is cut short.
        Some(Err(_)) => Part::Broken,
    }
}
