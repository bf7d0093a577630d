//! The null server: a trivial built-in etcd look-alike for measuring the harness.
//!
//! It runs on its own OS thread (optionally pinned) with a tokio current-thread
//! runtime, accepts connections on 127.0.0.1, parses every request with httparse
//! (honouring Content-Length, so pipelined PUTs work), and answers each with a
//! fixed, pre-rendered 200 JSON body whose `action` matches the method (`get`,
//! `set`, `delete`). Nothing is stored. All replies to one read are written with
//! one write. Dropping the [`NullServer`] stops the thread and closes its sockets.

use std::io;
use std::net::SocketAddr;
use std::thread::JoinHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

fn response(action: &str) -> Vec<u8> {
    let body = format!(
        "{{\"action\":\"{action}\",\"node\":{{\"key\":\"/null\",\"value\":\"x\",\"modifiedIndex\":1,\"createdIndex\":1}}}}\n"
    );
    format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Etcd-Cluster-Id: 0\r\nX-Etcd-Index: 1\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    )
    .into_bytes()
}

pub struct NullServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl NullServer {
    /// Starts listening on an ephemeral loopback port; `cpu` pins the thread.
    pub fn start(cpu: Option<usize>) -> io::Result<NullServer> {
        Self::start_on("127.0.0.1:0", cpu)
    }

    /// Starts listening on `addr` (e.g. `127.0.0.1:18080`).
    pub fn start_on(addr: &str, cpu: Option<usize>) -> io::Result<NullServer> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name("null-server".into())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    crate::servers::pin_current_thread(&[cpu]);
                }
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                let local = tokio::task::LocalSet::new();
                local.block_on(&rt, async move {
                    let listener = TcpListener::from_std(std_listener).expect("listener");
                    let accept = async {
                        loop {
                            if let Ok((s, _)) = listener.accept().await {
                                tokio::task::spawn_local(serve(s));
                            }
                        }
                    };
                    tokio::select! {
                        _ = accept => {}
                        _ = rx => {}
                    }
                });
            })?;
        Ok(NullServer {
            addr,
            stop: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for NullServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn serve(mut s: TcpStream) {
    let _ = s.set_nodelay(true);
    let (get, set, del) = (response("get"), response("set"), response("delete"));
    let mut buf = vec![0u8; 64 * 1024];
    let (mut start, mut end) = (0usize, 0usize);
    let mut out = Vec::with_capacity(64 * 1024);
    loop {
        if end == buf.len() {
            if start > 0 {
                buf.copy_within(start..end, 0);
                end -= start;
                start = 0;
            } else {
                buf.resize(buf.len() * 2, 0);
            }
        }
        let n = match s.read(&mut buf[end..]).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        end += n;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut req = httparse::Request::new(&mut headers);
            let head = match req.parse(&buf[start..end]) {
                Ok(httparse::Status::Complete(h)) => h,
                Ok(httparse::Status::Partial) => break,
                Err(_) => return,
            };
            let len = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| {
                    std::str::from_utf8(h.value)
                        .ok()?
                        .trim()
                        .parse::<usize>()
                        .ok()
                })
                .unwrap_or(0);
            if end - start < head + len {
                break;
            }
            out.extend_from_slice(match req.method {
                Some("PUT") | Some("POST") => &set,
                Some("DELETE") => &del,
                _ => &get,
            });
            start += head + len;
        }
        if start == end {
            start = 0;
            end = 0;
        }
        if !out.is_empty() {
            if s.write_all(&out).await.is_err() {
                return;
            }
            out.clear();
        }
    }
}
