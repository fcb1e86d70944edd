//! Limits on the connections of the gRPC and HTTP listeners: at most `max`
//! open at once (more are closed as soon as they are accepted, and counted), and
//! an idle timeout. A gRPC connection is idle while it has no open request or
//! stream (counted by [`TrackRequestsLayer`]), so a consumer waiting on an empty
//! topic keeps its connection, while keepalive PINGs and their answers do not
//! count; an HTTP connection is idle while it receives nothing. An idle
//! connection is closed by ending its reads, which makes hyper close it.
//! A connection gives its place back when the broker shuts it down, before the
//! peer can see the close, so a client that saw it closed can reconnect at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use prometheus::IntGauge;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};
use tonic::codegen::{Service, http};
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::auth::quota::ConnectionPlace;
use crate::metrics::Metrics;

/// Which listener a connection came in on; it decides what idle means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    /// Idle: no open request or stream (and nothing received for a moment).
    Grpc,
    /// Idle: nothing received.
    Http,
}

impl Listener {
    fn label(self) -> &'static str {
        match self {
            Listener::Grpc => "grpc",
            Listener::Http => "http",
        }
    }
}

/// Admits connections to one listener within its limit (clones share it).
#[derive(Debug, Clone)]
pub struct Gate {
    listener: Listener,
    max: usize,
    idle_timeout: Duration,
    open: Arc<AtomicUsize>,
    metrics: Option<Arc<Metrics>>,
}

impl Gate {
    pub fn new(
        listener: Listener,
        max: usize,
        idle_timeout: Duration,
        metrics: Option<Arc<Metrics>>,
    ) -> Gate {
        Gate {
            listener,
            max,
            idle_timeout,
            open: Arc::new(AtomicUsize::new(0)),
            metrics,
        }
    }

    /// The connection, or `None` (it is closed) when `max` are open already.
    pub fn admit(&self, io: TcpStream) -> Option<Connection> {
        if self.open.fetch_add(1, Ordering::SeqCst) >= self.max {
            self.open.fetch_sub(1, Ordering::SeqCst);
            count_closed(&self.metrics, self.listener, Closed::OverLimit);
            tracing::debug!(
                listener = self.listener.label(),
                max = self.max,
                "connection refused: limit reached"
            );
            return None; // dropping `io` closes it
        }
        let _ = io.set_nodelay(true);
        let gauge = match (self.listener, &self.metrics) {
            (Listener::Grpc, Some(m)) => Some(m.grpc_connections.clone()),
            _ => None,
        };
        Some(Connection {
            place: Place::held(self.open.clone(), gauge),
            io,
            activity: Arc::new(Activity::new()),
            idle: Box::pin(tokio::time::sleep(self.idle_timeout)),
            idle_timeout: self.idle_timeout,
            listener: self.listener,
            metrics: self.metrics.clone(),
        })
    }
}

/// Why the broker closed a connection.
#[derive(Debug, Clone, Copy)]
enum Closed {
    OverLimit,
    Idle,
}

fn count_closed(metrics: &Option<Arc<Metrics>>, listener: Listener, why: Closed) {
    let reason = match why {
        Closed::OverLimit => "limit",
        Closed::Idle => "idle",
    };
    if let Some(m) = metrics {
        m.connections_closed
            .with_label_values(&[listener.label(), reason])
            .inc();
    }
}

/// Bytes arriving on a gRPC connection with no open request delay its idle
/// close this long: they may be a request whose handler has not started yet.
const READ_GRACE: Duration = Duration::from_secs(1);

/// What a connection is doing: its open requests, and when it last received
/// bytes or finished a request (milliseconds since it was accepted).
#[derive(Debug)]
pub struct Activity {
    accepted: Instant,
    open_requests: AtomicUsize,
    last_read_ms: AtomicU64,
    last_request_end_ms: AtomicU64,
    /// The place of the connection's first user among that user's
    /// connections (quotas), held until the connection closes.
    user_place: parking_lot::Mutex<Option<ConnectionPlace>>,
}

impl Activity {
    fn new() -> Activity {
        Activity {
            accepted: Instant::now(),
            open_requests: AtomicUsize::new(0),
            last_read_ms: AtomicU64::new(0),
            last_request_end_ms: AtomicU64::new(0),
            user_place: parking_lot::Mutex::new(None),
        }
    }

    fn now_ms(&self) -> u64 {
        self.accepted.elapsed().as_millis() as u64
    }

    fn at(&self, ms: &AtomicU64) -> Instant {
        self.accepted + Duration::from_millis(ms.load(Ordering::SeqCst))
    }

    /// When the connection may be closed as idle, unless something happens
    /// first; `None` while a request is open.
    fn idle_deadline(&self, listener: Listener, timeout: Duration) -> Option<Instant> {
        if self.open_requests.load(Ordering::SeqCst) > 0 {
            return None;
        }
        let last_read = self.at(&self.last_read_ms);
        Some(match listener {
            Listener::Grpc => {
                (self.at(&self.last_request_end_ms) + timeout).max(last_read + READ_GRACE)
            }
            Listener::Http => last_read + timeout,
        })
    }
}

/// Counts one open request of a connection until dropped.
#[derive(Debug)]
struct OpenRequest(Arc<Activity>);

impl OpenRequest {
    fn begin(activity: Arc<Activity>) -> OpenRequest {
        activity.open_requests.fetch_add(1, Ordering::SeqCst);
        OpenRequest(activity)
    }
}

impl Drop for OpenRequest {
    fn drop(&mut self) {
        let now = self.0.now_ms();
        self.0.last_request_end_ms.store(now, Ordering::SeqCst);
        self.0.open_requests.fetch_sub(1, Ordering::SeqCst);
    }
}

/// An admitted connection's place under its listener's limit, given back
/// exactly once: when the broker shuts the connection down, or when the
/// connection is dropped without a shutdown (an error, a reset).
#[derive(Debug)]
struct Place {
    open: Arc<AtomicUsize>,
    /// `dduomq_grpc_connections`, for a gRPC connection.
    gauge: Option<IntGauge>,
    held: bool,
}

impl Place {
    fn held(open: Arc<AtomicUsize>, gauge: Option<IntGauge>) -> Place {
        if let Some(g) = &gauge {
            g.inc();
        }
        Place {
            open,
            gauge,
            held: true,
        }
    }

    fn release(&mut self) {
        if !std::mem::replace(&mut self.held, false) {
            return;
        }
        self.open.fetch_sub(1, Ordering::SeqCst);
        if let Some(g) = &self.gauge {
            g.dec();
        }
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.release();
    }
}

/// An admitted connection: holds its place under the limit while open.
#[derive(Debug)]
pub struct Connection {
    /// First, so that a drop gives the place back before the socket closes.
    place: Place,
    io: TcpStream,
    activity: Arc<Activity>,
    idle: Pin<Box<Sleep>>,
    idle_timeout: Duration,
    listener: Listener,
    metrics: Option<Arc<Metrics>>,
}

impl Connection {
    /// Whether the connection has been idle for the timeout; otherwise arms the
    /// timer to wake the reader when it may be.
    fn idle_expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            match self
                .activity
                .idle_deadline(self.listener, self.idle_timeout)
            {
                Some(deadline) if deadline <= Instant::now() => return true,
                Some(deadline) if deadline != self.idle.deadline() => {
                    self.idle.as_mut().reset(deadline)
                }
                _ => {}
            }
            if self.idle.as_mut().poll(cx).is_pending() {
                return false;
            }
            // Fired while busy: look again one timeout from now.
            let next = Instant::now() + self.idle_timeout;
            self.idle.as_mut().reset(next);
        }
    }
}

/// What tonic hands each request of a connection (in its extensions).
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub tcp: TcpConnectInfo,
    activity: Arc<Activity>,
    /// The common name of the client's verified certificate (mutual TLS);
    /// set by `crate::tls`.
    pub client_name: Option<Arc<str>>,
}

impl ConnectionInfo {
    /// See `Activity::user_place`.
    pub fn user_place(&self) -> &parking_lot::Mutex<Option<ConnectionPlace>> {
        &self.activity.user_place
    }
}

impl Connected for Connection {
    type ConnectInfo = ConnectionInfo;
    fn connect_info(&self) -> ConnectionInfo {
        ConnectionInfo {
            tcp: self.io.connect_info(),
            activity: self.activity.clone(),
            client_name: None,
        }
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let filled = buf.filled().len();
        match Pin::new(&mut self.io).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > filled {
                    let now = self.activity.now_ms();
                    self.activity.last_read_ms.store(now, Ordering::SeqCst);
                }
                Poll::Ready(result)
            }
            Poll::Pending if self.idle_expired(cx) => {
                tracing::debug!(
                    listener = self.listener.label(),
                    "closing a connection idle for {:?}",
                    self.idle_timeout
                );
                count_closed(&self.metrics, self.listener, Closed::Idle);
                Poll::Ready(Ok(())) // end of input: the server closes it
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    /// Gives the place back first: the peer may see the close (and connect
    /// again) as soon as the shutdown is sent, before this connection is dropped.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.place.release();
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }
}

/// The HTTP listener, limited by a [`Gate`] (for `axum::serve`).
#[derive(Debug)]
pub struct GatedListener {
    pub listener: tokio::net::TcpListener,
    pub gate: Gate,
}

impl axum::serve::Listener for GatedListener {
    type Io = Connection;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Connection, std::net::SocketAddr) {
        loop {
            match self.listener.accept().await {
                Ok((io, addr)) => {
                    if let Some(conn) = self.gate.admit(io) {
                        return (conn, addr);
                    }
                }
                Err(e) => {
                    // Out of descriptors, say: wait instead of spinning.
                    tracing::warn!(error = %e, listener = self.gate.listener.label(), "accepting a connection failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<std::net::SocketAddr> {
        self.listener.local_addr()
    }
}

/// A listener's admitted connections, as a stream.
pub fn accepted(
    listener: GatedListener,
) -> impl futures::Stream<Item = Connection> + Send + 'static {
    futures::stream::unfold(listener, |mut l| async move {
        let (conn, _) = axum::serve::Listener::accept(&mut l).await;
        Some((conn, l))
    })
}

/// Counts each gRPC request as open on its connection until its response
/// (body included: a Receive stream) ends.
#[derive(Debug, Clone, Copy, Default)]
pub struct TrackRequestsLayer;

impl<S> tower_layer::Layer<S> for TrackRequestsLayer {
    type Service = TrackRequests<S>;
    fn layer(&self, inner: S) -> TrackRequests<S> {
        TrackRequests { inner }
    }
}

/// See [`TrackRequestsLayer`].
#[derive(Debug, Clone)]
pub struct TrackRequests<S> {
    inner: S,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, ResBody> Service<http::Request<B>> for TrackRequests<S>
where
    S: Service<http::Request<B>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<TrackedBody<ResBody>>;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let open = req
            .extensions()
            .get::<ConnectionInfo>()
            .map(|info| OpenRequest::begin(info.activity.clone()));
        let response = self.inner.call(req);
        Box::pin(async move {
            let response = response.await?;
            Ok(response.map(|inner| TrackedBody { inner, _open: open }))
        })
    }
}

/// A response body that keeps its request counted as open while it lives.
#[derive(Debug)]
pub struct TrackedBody<B> {
    inner: B,
    _open: Option<OpenRequest>,
}

impl<B: http_body::Body + Unpin> http_body::Body for TrackedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use super::*;

    /// Connects a client to `listener` and lets `gate` admit the server side.
    async fn connect(listener: &TcpListener, gate: &Gate) -> (Option<Connection>, TcpStream) {
        let client = TcpStream::connect(listener.local_addr().unwrap())
            .await
            .unwrap();
        let (io, _) = listener.accept().await.unwrap();
        (gate.admit(io), client)
    }

    #[tokio::test]
    async fn a_shut_down_connection_frees_its_place_before_the_peer_sees_the_close_and_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let metrics = Metrics::new("test", 0, "async");
        let gate = Gate::new(
            Listener::Grpc,
            1,
            Duration::from_secs(600),
            Some(metrics.clone()),
        );
        let (first, mut first_client) = connect(&listener, &gate).await;
        let mut first = first.expect("the first connection is admitted");
        assert_eq!(metrics.grpc_connections.get(), 1);

        // Shut down but not yet dropped, as when its task has not finished.
        first.shutdown().await.unwrap();
        assert_eq!(first_client.read(&mut [0u8; 1]).await.unwrap(), 0);
        let (second, _second_client) = connect(&listener, &gate).await;
        let second = second.expect("a client that saw the close connects again");
        assert_eq!(metrics.grpc_connections.get(), 1);

        // Dropping the shut-down connection gives nothing back a second time.
        drop(first);
        let (third, _third_client) = connect(&listener, &gate).await;
        assert!(
            third.is_none(),
            "two connections admitted under a limit of one"
        );
        assert_eq!(metrics.grpc_connections.get(), 1);

        // A connection dropped without a shutdown frees its place too.
        drop(second);
        assert_eq!(metrics.grpc_connections.get(), 0);
        let (fourth, _fourth_client) = connect(&listener, &gate).await;
        assert!(
            fourth.is_some(),
            "the place of a dropped connection stayed taken"
        );
    }
}
