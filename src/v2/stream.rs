//! Large listings sent as they are rendered: a bulk read of this
//! executor's own shard, on HTTP/1.1, leaves as a chunked body, one slice
//! ([`crate::shard::SLICE_BYTES`]) per chunk, each rendered once the one
//! before it is with the kernel ([`crate::http::Service::next_part`]). A
//! client that keeps reading costs a slice of memory whatever the
//! listing's size, and the slice is sent while it is still in the cache.
//! Every slice reads the view the listing started on, so the body is one
//! consistent read, as etcd's is; the HTTP layer renders whatever is left
//! at once when a client is slow ([`crate::http::STREAM_PATIENCE`]), so a
//! view is never held for a slow client.
//!
//! A read enters as its key and options (after any read barrier); the
//! response's head and first chunk leave in the connection's output, and
//! the [`Listing`] the rest is rendered from. A listing that fits in one
//! slice is answered whole, with `Content-Length`, as any read.

use super::keys::{answer_in_place, delivered, head_in_room, read_error, read_headers, timed_out};
use super::Api;
use crate::http::response::{chunk_size, close_chunk, last_chunk, open_chunk, Output, HEAD_ROOM};
use crate::http::Part;
use crate::shard::mesh::ReadOpts;
use crate::shard::{begin_bulk, bulk_slice, readable, SLICE_BYTES};
use crate::store::{escalated_to, ReadAt, Slices};

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

/// Whether a bulk read of this executor's own shard is sent as it renders:
/// over HTTP/1.1 (chunked framing), with a body (not HEAD), in the store's
/// order (a `sorted=true` listing may have to be rendered again from its
/// start: over-long names are stored under hashed keys), and first in the
/// connection's output (behind other answers it is rendered whole).
pub fn eligible(opts: &ReadOpts, http11: bool, head_only: bool, out: &Output) -> bool {
    http11 && !head_only && !opts.sorted && out.is_empty()
}

/// Read `key` from this executor's own shard (in the executor's bulk
/// turn, once the shard can read at `opts.at_least`) and answer with the
/// first slice; the rest follows from [`next_part`].
pub async fn start(api: &Api, key: &[u8], opts: ReadOpts, out: &mut Output) -> Started {
    let sh = &api.shard;
    let turn = sh.bulk_turn().await;
    let index = readable(sh, opts.at_least).await;
    let mut slices = match begin_bulk(sh, index, key, opts, ReadAt::View) {
        Ok(s) => s,
        Err(e) => {
            read_error(api, key, opts.recursive, e, false, true, out);
            return Started::Answered(None);
        }
    };
    // Rendered behind room for the head, as a read answered whole is.
    out.resize(HEAD_ROOM, 0);
    let mut body = out.take();
    crate::executor::reserve(&mut body, SLICE_BYTES + SLICE_BYTES / 4);
    let first = bulk_slice(sh, &mut slices, &mut body);
    drop(turn);
    // `None`: more to come. (A read answers at the index it was read at.)
    let done = match first.transpose() {
        Ok(done) if delivered(api, index).await => Ok(done),
        Ok(_) => Err(timed_out(api)),
        Err(e) => Err(e),
    };
    match done {
        Ok(Some(i)) => answer_in_place(api, body, i, true, false, out),
        Ok(None) => {
            let mut head = Vec::with_capacity(HEAD_ROOM);
            read_headers(api, &mut head, true, index).chunked();
            chunk_size(&mut head, body.len() - HEAD_ROOM);
            body.extend_from_slice(b"\r\n");
            head_in_room(body, &head, out);
            return Started::Answered(Some(Listing { slices }));
        }
        Err(e) => {
            body.clear();
            **out = body;
            if escalated_to(&e).is_some() {
                return Started::Elsewhere;
            }
            read_error(api, key, opts.recursive, e, false, true, out);
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
