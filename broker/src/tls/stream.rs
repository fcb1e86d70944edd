//! Accepted connections, plain or TLS. Handshakes run in tasks of their own,
//! so a slow or silent client never holds up the accept loop (and with it
//! health probes); each has [`super::HANDSHAKE_TIMEOUT`].

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::{Stream, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use super::{HANDSHAKE_TIMEOUT, Served, TlsServer, common_name};
use crate::connections::{Connection, ConnectionInfo, GatedListener, accepted};

/// A connection as the servers see it.
#[derive(Debug)]
pub enum MaybeTls {
    Plain(Connection),
    Tls {
        stream: Box<TlsStream<Connection>>,
        /// The verified client certificate's common name.
        client_name: Option<Arc<str>>,
    },
}

impl Connected for MaybeTls {
    type ConnectInfo = ConnectionInfo;
    fn connect_info(&self) -> ConnectionInfo {
        match self {
            MaybeTls::Plain(c) => c.connect_info(),
            MaybeTls::Tls {
                stream,
                client_name,
            } => {
                let mut info = stream.get_ref().0.connect_info();
                info.client_name = client_name.clone();
                info
            }
        }
    }
}

impl AsyncRead for MaybeTls {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(c) => Pin::new(c).poll_read(cx, buf),
            MaybeTls::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for MaybeTls {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(c) => Pin::new(c).poll_write(cx, buf),
            MaybeTls::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(c) => Pin::new(c).poll_flush(cx),
            MaybeTls::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(c) => Pin::new(c).poll_shutdown(cx),
            MaybeTls::Tls { stream, .. } => Pin::new(stream.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Connections handshaken and waiting to be served.
const READY_BACKLOG: usize = 64;

/// `incoming` connections as the servers take them: as they are without
/// TLS; else each after its handshake, those that fail it closed.
pub fn secured(
    incoming: impl Stream<Item = Connection> + Send + 'static,
    tls: Option<Arc<TlsServer>>,
    served: Served,
) -> impl Stream<Item = MaybeTls> + Send + 'static {
    let (ready, taken) = mpsc::channel(READY_BACKLOG);
    tokio::spawn(async move {
        let mut incoming = std::pin::pin!(incoming);
        loop {
            let conn = tokio::select! {
                next = incoming.next() => match next {
                    Some(conn) => conn,
                    None => return,
                },
                () = ready.closed() => return,
            };
            let Some(tls) = &tls else {
                if ready.send(MaybeTls::Plain(conn)).await.is_err() {
                    return;
                }
                continue;
            };
            let acceptor = TlsAcceptor::from(tls.current(served));
            let ready = ready.clone();
            tokio::spawn(async move {
                let peer = conn.connect_info().tcp.remote_addr;
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let client_name = stream
                            .get_ref()
                            .1
                            .peer_certificates()
                            .and_then(|certs| certs.first())
                            .and_then(common_name);
                        let _ = ready
                            .send(MaybeTls::Tls {
                                stream: Box::new(stream),
                                client_name,
                            })
                            .await;
                    }
                    Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
                    Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(taken)
}

/// The HTTP listener's connections, [`secured`].
pub struct SecuredHttp {
    taken: Pin<Box<dyn Stream<Item = MaybeTls> + Send>>,
    local_addr: std::net::SocketAddr,
}

impl std::fmt::Debug for SecuredHttp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecuredHttp")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl SecuredHttp {
    pub fn new(
        listener: GatedListener,
        tls: Option<Arc<TlsServer>>,
    ) -> std::io::Result<SecuredHttp> {
        let local_addr = listener.listener.local_addr()?;
        Ok(SecuredHttp {
            taken: Box::pin(secured(accepted(listener), tls, Served::Http)),
            local_addr,
        })
    }
}

impl axum::serve::Listener for SecuredHttp {
    type Io = MaybeTls;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (MaybeTls, std::net::SocketAddr) {
        match self.taken.next().await {
            Some(conn) => {
                let addr = conn
                    .connect_info()
                    .tcp
                    .remote_addr
                    .unwrap_or(self.local_addr);
                (conn, addr)
            }
            // The accept task ended: only at shutdown, which ends the server.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        Ok(self.local_addr)
    }
}
