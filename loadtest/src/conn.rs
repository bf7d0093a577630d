//! One keep-alive HTTP/1.1 client connection, and a reconnecting [`Client`].
//!
//! [`Conn`] pairs a tokio `TcpStream` (TCP_NODELAY) with a reusable write buffer and
//! a [`ResponseReader`]; callers append pre-rendered request bytes to `wbuf`, call
//! [`Conn::send`], and read responses back in order with [`Conn::recv`] (any number
//! may be in flight: that is pipelining). [`Client`] wraps a `Conn` for the
//! one-request-at-a-time actors of the HM9000 model: it connects lazily, applies
//! the per-request timeout, and drops the connection after any failure so the
//! next call reconnects, the way go-etcd's transport does.

use crate::http::{ReadError, Resp, ResponseReader};
use crate::validate::ErrorKind;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub struct Conn {
    pub stream: TcpStream,
    pub reader: ResponseReader,
    pub wbuf: Vec<u8>,
}

impl Conn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            reader: ResponseReader::new(),
            wbuf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Writes out and clears the write buffer.
    pub async fn send(&mut self) -> io::Result<()> {
        if !self.wbuf.is_empty() {
            self.stream.write_all(&self.wbuf).await?;
            self.wbuf.clear();
        }
        Ok(())
    }

    /// Reads the next response in order.
    pub async fn recv(&mut self) -> Result<Resp<'_>, ReadError> {
        self.reader.next(&mut self.stream).await
    }
}

/// Maps a read failure to the error kind that is counted.
pub fn read_error_kind(e: &ReadError) -> ErrorKind {
    match e {
        ReadError::Closed => ErrorKind::Closed,
        ReadError::Io(_) => ErrorKind::Io,
        ReadError::Parse(_) => ErrorKind::Parse,
    }
}

/// A lazily connected, self-healing connection for sequential callers.
pub struct Client {
    addr: SocketAddr,
    conn: Option<Conn>,
    timeout: Duration,
    last_status: Option<u16>,
}

impl Client {
    pub fn new(addr: SocketAddr, timeout: Duration) -> Self {
        Client {
            addr,
            conn: None,
            timeout,
            last_status: None,
        }
    }

    /// Status of the last successful call.
    pub fn last_status(&self) -> Option<u16> {
        self.last_status
    }

    /// Sends one request and waits for its response.
    pub async fn call(&mut self, req: &[u8]) -> Result<Resp<'_>, ErrorKind> {
        if self.conn.is_none() {
            let c = tokio::time::timeout(self.timeout, Conn::connect(self.addr))
                .await
                .map_err(|_| ErrorKind::Timeout)?
                .map_err(|_| ErrorKind::Connect)?;
            self.conn = Some(c);
        }
        let timeout = self.timeout;
        let conn = self.conn.as_mut().expect("connected above");
        conn.wbuf.extend_from_slice(req);
        let fut = async {
            conn.send().await.map_err(|_| ErrorKind::Io)?;
            conn.reader
                .next(&mut conn.stream)
                .await
                .map_err(|e| read_error_kind(&e))
        };
        // The borrow checker cannot see that the error path does not hold the
        // response, so the failure is recorded first and the connection dropped after.
        let failed = match tokio::time::timeout(timeout, fut).await {
            Ok(Ok(_)) => None,
            Ok(Err(e)) => Some(e),
            Err(_) => Some(ErrorKind::Timeout),
        };
        match failed {
            None => {
                let conn = self.conn.as_mut().expect("still connected");
                let resp = conn.reader.last();
                self.last_status = Some(resp.status);
                Ok(resp)
            }
            Some(e) => {
                self.conn = None;
                self.last_status = None;
                Err(e)
            }
        }
    }
}
