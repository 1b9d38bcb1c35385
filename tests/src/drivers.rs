//! One synchronous facade over both drivers, so a test body is written once
//! as `fn name<D: Driver>()` and run on `veltix_std` and `veltix_tokio`.
//!
//! * [`Driver`] names a driver's [`ServerApi`], [`ClientApi`] and
//!   [`PeerApi`] types. [`Std`] uses `veltix_std`'s own types (the traits
//!   forward to their inherent methods); [`Tokio`] wraps `veltix_tokio`'s
//!   in [`TokioServer`]/[`TokioClient`] whose methods `block_on` the async
//!   ones on one multi-thread runtime shared by the process ([`runtime`]).
//! * Handlers are plain closures taking the facade types. On tokio they are
//!   wrapped into async handlers that run the closure on tokio's blocking
//!   pool (`spawn_blocking`, awaited, so per-peer order is kept), where it
//!   may block like a `veltix_std` callback on its worker pool does, and
//!   even call the facade's blocking methods.
//! * Every method of API.md's Client, Server and Peer tables is here, with
//!   the same name, arguments and result.
//!
//! Test code never calls the facade's tokio methods from inside the
//! runtime's own worker threads (there is no async code in the tests).

use std::hash::Hash;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use veltix_proto::{
    ClientConfig, ConnectionStats, DisconnectState, Error, Frame, HubStats, Identity, MessageType,
    PeerHello, ServerConfig, Tags,
};

use bytes::Bytes;
use serde_json::Value;
use veltix_tls::{ClientTls, ServerTls, TlsInfo};

/// A Veltix driver seen through the synchronous facade.
pub trait Driver: Send + Sync + 'static {
    /// `"std"` or `"tokio"`, for messages.
    const NAME: &'static str;
    /// The server type.
    type Server: ServerApi<Peer = Self::Peer>;
    /// The client type.
    type Client: ClientApi;
    /// A server's view of one client.
    type Peer: PeerApi;

    /// `Server::new(config)`.
    fn server(config: ServerConfig) -> Result<Self::Server, Error> {
        Self::Server::new(config)
    }

    /// `Client::new(config)`.
    fn client(config: ClientConfig) -> Result<Self::Client, Error> {
        Self::Client::new(config)
    }

    /// `Server::with_tls(config, tls)`.
    fn server_tls(config: ServerConfig, tls: ServerTls) -> Result<Self::Server, Error> {
        Self::Server::with_tls(config, tls)
    }

    /// `Client::with_tls(config, tls)`.
    fn client_tls(config: ClientConfig, tls: ClientTls) -> Result<Self::Client, Error> {
        Self::Client::with_tls(config, tls)
    }

    /// A server (TLS with `tls`) started on a new Unix socket at `path`:
    /// `Server::start_on` with the driver's Unix listener.
    #[cfg(unix)]
    fn unix_server(
        config: ServerConfig,
        tls: Option<ServerTls>,
        path: &std::path::Path,
    ) -> Result<Self::Server, Error>;

    /// A client (TLS with `tls`) whose `Connector` dials the Unix socket
    /// at `path`: `Client::with_connector`.
    #[cfg(unix)]
    fn unix_client(
        config: ClientConfig,
        tls: Option<ClientTls>,
        path: &std::path::Path,
    ) -> Result<Self::Client, Error>;
}

/// What peers on a Unix socket report as their address (they have none).
#[cfg(unix)]
pub const UNIX_ADDR: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::UNSPECIFIED,
    0,
));

/// veltix-std's connector to a Unix socket.
#[cfg(unix)]
struct StdUnix(std::path::PathBuf);

#[cfg(unix)]
impl veltix_std::Connector for StdUnix {
    type Stream = veltix_std::mio::net::UnixStream;
    fn connect(&self, _host: &str, _port: u16) -> Result<(Self::Stream, SocketAddr), Error> {
        Ok((
            veltix_std::mio::net::UnixStream::connect(&self.0)?,
            UNIX_ADDR,
        ))
    }
}

/// veltix-tokio's connector to a Unix socket.
#[cfg(unix)]
struct TokioUnix(std::path::PathBuf);

#[cfg(unix)]
impl veltix_tokio::Connector for TokioUnix {
    type Stream = tokio::net::UnixStream;
    async fn connect(&self, _host: &str, _port: u16) -> Result<(Self::Stream, SocketAddr), Error> {
        Ok((tokio::net::UnixStream::connect(&self.0).await?, UNIX_ADDR))
    }
}

/// The `Peer` table of API.md.
pub trait PeerApi: Clone + Eq + Hash + std::fmt::Debug + Send + Sync + 'static {
    /// `peer.id()`.
    fn id(&self) -> u64;
    /// `peer.addr()`.
    fn addr(&self) -> SocketAddr;
    /// `peer.ip()`.
    fn ip(&self) -> IpAddr;
    /// `peer.port()`.
    fn port(&self) -> u16;
    /// `peer.handshake_done()`.
    fn handshake_done(&self) -> bool;
    /// `peer.hello()`.
    fn hello(&self) -> Option<PeerHello>;
    /// `peer.identity()`.
    fn identity(&self) -> Option<Identity>;
    /// `peer.stats()`.
    fn stats(&self) -> Option<ConnectionStats>;
    /// `peer.add_tag(name, value)`.
    fn add_tag(&self, name: &str, value: Value) -> bool;
    /// `peer.set_tag(name, value)`.
    fn set_tag(&self, name: &str, value: Value);
    /// `peer.get_tag(name)`.
    fn get_tag(&self, name: &str) -> Option<Value>;
    /// `peer.has_tag(name)`.
    fn has_tag(&self, name: &str) -> bool;
    /// `peer.has_all_tags(names)`.
    fn has_all_tags(&self, names: &[&str]) -> bool;
    /// `peer.has_any_tags(names)`.
    fn has_any_tags(&self, names: &[&str]) -> bool;
    /// `peer.remove_tag(name)`.
    fn remove_tag(&self, name: &str) -> bool;
    /// `peer.clear_tags()`.
    fn clear_tags(&self);
    /// `peer.tags()`.
    fn tags(&self) -> Tags;
    /// `peer.tls_info()`.
    fn tls_info(&self) -> Option<TlsInfo>;
    /// `peer.tls_identity()`.
    fn tls_identity(&self) -> Option<String>;
}

/// The `Server` table of API.md (tokio: every async method blocked on).
pub trait ServerApi: Clone + Send + Sync + Sized + 'static {
    /// The driver's peer type.
    type Peer: PeerApi;
    /// `Server::new(config)`.
    fn new(config: ServerConfig) -> Result<Self, Error>;
    /// `Server::with_tls(config, tls)`.
    fn with_tls(config: ServerConfig, tls: ServerTls) -> Result<Self, Error>;
    /// `server.is_tls()`.
    fn is_tls(&self) -> bool;
    /// `server.on_connect(f)`.
    fn on_connect(&self, f: impl Fn(&Self, &Self::Peer) + Send + Sync + 'static);
    /// `server.on_disconnect(f)`.
    fn on_disconnect(&self, f: impl Fn(&Self, &Self::Peer) + Send + Sync + 'static);
    /// `server.on_recv(f)`.
    fn on_recv(&self, f: impl Fn(&Self, &Self::Peer, Frame) + Send + Sync + 'static);
    /// `server.route(t, f)`.
    fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Self, &Self::Peer, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error>;
    /// `server.start()`.
    fn start(&self) -> Result<(), Error>;
    /// `server.local_addr()`.
    fn local_addr(&self) -> Option<SocketAddr>;
    /// `server.clients()`.
    fn clients(&self) -> Vec<Self::Peer>;
    /// `server.clients_by_tag(tag, value)`.
    fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<Self::Peer>;
    /// `server.send(&peer, t, payload, timeout)`.
    fn send(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error>;
    /// `server.try_send(&peer, t, payload)`.
    fn try_send(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error>;
    /// `server.reply(&peer, &request, t, payload)`.
    fn reply(
        &self,
        peer: &Self::Peer,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error>;
    /// `server.request(&peer, t, payload, timeout)`.
    fn request(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error>;
    /// `server.ping(&peer, timeout)`.
    fn ping(&self, peer: &Self::Peer, timeout: Option<Duration>) -> Result<Duration, Error>;
    /// `server.broadcast(t, payload)`.
    fn broadcast(&self, t: MessageType, payload: &[u8]) -> Result<usize, Error>;
    /// `server.broadcast_except(t, payload, except)`.
    fn broadcast_except(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[Self::Peer],
    ) -> Result<usize, Error>;
    /// `server.broadcast_to(t, payload, peers)`.
    fn broadcast_to(
        &self,
        t: MessageType,
        payload: &[u8],
        peers: &[Self::Peer],
    ) -> Result<usize, Error>;
    /// `server.broadcast_tag(t, payload, tag, value)`.
    fn broadcast_tag(
        &self,
        t: MessageType,
        payload: &[u8],
        tag: &str,
        value: Option<&Value>,
    ) -> Result<usize, Error>;
    /// `server.close_client(&peer)`.
    fn close_client(&self, peer: &Self::Peer) -> bool;
    /// `server.shutdown(flush)`.
    fn shutdown(&self, flush: Duration);
    /// `server.wait_closed()`.
    fn wait_closed(&self);
    /// `server.is_full()`.
    fn is_full(&self) -> bool;
    /// `server.stats()`.
    fn stats(&self) -> HubStats;
    /// `server.config()`.
    fn config(&self) -> &ServerConfig;
}

/// The `Client` table of API.md (tokio: every async method blocked on).
pub trait ClientApi: Clone + Send + Sync + Sized + 'static {
    /// `Client::new(config)`.
    fn new(config: ClientConfig) -> Result<Self, Error>;
    /// `Client::with_tls(config, tls)`.
    fn with_tls(config: ClientConfig, tls: ClientTls) -> Result<Self, Error>;
    /// `client.tls_info()`.
    fn tls_info(&self) -> Option<TlsInfo>;
    /// `client.is_tls()`.
    fn is_tls(&self) -> bool;
    /// `client.on_connect(f)`.
    fn on_connect(&self, f: impl Fn(&Self) + Send + Sync + 'static);
    /// `client.on_disconnect(f)`.
    fn on_disconnect(&self, f: impl Fn(&Self, &DisconnectState) + Send + Sync + 'static);
    /// `client.on_recv(f)`.
    fn on_recv(&self, f: impl Fn(&Self, Frame) + Send + Sync + 'static);
    /// `client.route(t, f)`.
    fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Self, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error>;
    /// `client.connect()`.
    fn connect(&self) -> Result<(), Error>;
    /// `client.is_connected()`.
    fn is_connected(&self) -> bool;
    /// `client.send(t, payload, timeout)`.
    fn send(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error>;
    /// `client.try_send(t, payload)`.
    fn try_send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error>;
    /// `client.send_system(t, payload)`.
    fn send_system(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error>;
    /// `client.reply(&request, t, payload)`.
    fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error>;
    /// `client.request(t, payload, timeout)`.
    fn request(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error>;
    /// `client.ping(timeout)`.
    fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error>;
    /// `client.retry(max)`.
    fn retry(&self, max: Option<u32>);
    /// `client.stop_retry()`.
    fn stop_retry(&self);
    /// `client.disconnect()`.
    fn disconnect(&self) -> bool;
    /// `client.wait_closed()`.
    fn wait_closed(&self);
    /// `client.server_hello()`.
    fn server_hello(&self) -> Option<PeerHello>;
    /// `client.identity()`.
    fn identity(&self) -> Option<Identity>;
    /// `client.peer_addr()`.
    fn peer_addr(&self) -> Option<SocketAddr>;
    /// `client.local_addr()`.
    fn local_addr(&self) -> Option<SocketAddr>;
    /// `client.stats()`.
    fn stats(&self) -> Option<ConnectionStats>;
    /// `client.config()`.
    fn config(&self) -> &ClientConfig;
}

// ------------------------------------------------------------------- peers

macro_rules! peer_api {
    ($t:ty) => {
        impl PeerApi for $t {
            fn id(&self) -> u64 {
                <$t>::id(self)
            }
            fn addr(&self) -> SocketAddr {
                <$t>::addr(self)
            }
            fn ip(&self) -> IpAddr {
                <$t>::ip(self)
            }
            fn port(&self) -> u16 {
                <$t>::port(self)
            }
            fn handshake_done(&self) -> bool {
                <$t>::handshake_done(self)
            }
            fn hello(&self) -> Option<PeerHello> {
                <$t>::hello(self)
            }
            fn identity(&self) -> Option<Identity> {
                <$t>::identity(self)
            }
            fn stats(&self) -> Option<ConnectionStats> {
                <$t>::stats(self)
            }
            fn add_tag(&self, name: &str, value: Value) -> bool {
                <$t>::add_tag(self, name, value)
            }
            fn set_tag(&self, name: &str, value: Value) {
                <$t>::set_tag(self, name, value)
            }
            fn get_tag(&self, name: &str) -> Option<Value> {
                <$t>::get_tag(self, name)
            }
            fn has_tag(&self, name: &str) -> bool {
                <$t>::has_tag(self, name)
            }
            fn has_all_tags(&self, names: &[&str]) -> bool {
                <$t>::has_all_tags(self, names)
            }
            fn has_any_tags(&self, names: &[&str]) -> bool {
                <$t>::has_any_tags(self, names)
            }
            fn remove_tag(&self, name: &str) -> bool {
                <$t>::remove_tag(self, name)
            }
            fn clear_tags(&self) {
                <$t>::clear_tags(self)
            }
            fn tags(&self) -> Tags {
                <$t>::tags(self)
            }
            fn tls_info(&self) -> Option<TlsInfo> {
                <$t>::tls_info(self)
            }
            fn tls_identity(&self) -> Option<String> {
                <$t>::tls_identity(self)
            }
        }
    };
}

peer_api!(veltix_std::Peer);
peer_api!(veltix_tokio::Peer);

// --------------------------------------------------------------------- std

/// `veltix_std`: its own types, the traits forwarding to their methods.
#[derive(Debug, Clone, Copy)]
pub struct Std;

impl Driver for Std {
    const NAME: &'static str = "std";
    type Server = veltix_std::Server;
    type Client = veltix_std::Client;
    type Peer = veltix_std::Peer;

    #[cfg(unix)]
    fn unix_server(
        config: ServerConfig,
        tls: Option<ServerTls>,
        path: &std::path::Path,
    ) -> Result<Self::Server, Error> {
        let server = match tls {
            None => veltix_std::Server::new(config)?,
            Some(tls) => veltix_std::Server::with_tls(config, tls)?,
        };
        server.start_on(veltix_std::mio::net::UnixListener::bind(path)?)?;
        Ok(server)
    }

    #[cfg(unix)]
    fn unix_client(
        config: ClientConfig,
        tls: Option<ClientTls>,
        path: &std::path::Path,
    ) -> Result<Self::Client, Error> {
        veltix_std::Client::with_connector(config, StdUnix(path.to_owned()), tls)
    }
}

impl ServerApi for veltix_std::Server {
    type Peer = veltix_std::Peer;
    fn new(config: ServerConfig) -> Result<Self, Error> {
        veltix_std::Server::new(config)
    }
    fn with_tls(config: ServerConfig, tls: ServerTls) -> Result<Self, Error> {
        veltix_std::Server::with_tls(config, tls)
    }
    fn is_tls(&self) -> bool {
        veltix_std::Server::is_tls(self)
    }
    fn on_connect(&self, f: impl Fn(&Self, &Self::Peer) + Send + Sync + 'static) {
        veltix_std::Server::on_connect(self, f);
    }
    fn on_disconnect(&self, f: impl Fn(&Self, &Self::Peer) + Send + Sync + 'static) {
        veltix_std::Server::on_disconnect(self, f);
    }
    fn on_recv(&self, f: impl Fn(&Self, &Self::Peer, Frame) + Send + Sync + 'static) {
        veltix_std::Server::on_recv(self, f);
    }
    fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Self, &Self::Peer, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        veltix_std::Server::route(self, t, f)
    }
    fn start(&self) -> Result<(), Error> {
        veltix_std::Server::start(self)
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        veltix_std::Server::local_addr(self)
    }
    fn clients(&self) -> Vec<Self::Peer> {
        veltix_std::Server::clients(self)
    }
    fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<Self::Peer> {
        veltix_std::Server::clients_by_tag(self, tag, value)
    }
    fn send(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        veltix_std::Server::send(self, peer, t, payload, timeout)
    }
    fn try_send(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        veltix_std::Server::try_send(self, peer, t, payload)
    }
    fn reply(
        &self,
        peer: &Self::Peer,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        veltix_std::Server::reply(self, peer, request, t, payload)
    }
    fn request(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        veltix_std::Server::request(self, peer, t, payload, timeout)
    }
    fn ping(&self, peer: &Self::Peer, timeout: Option<Duration>) -> Result<Duration, Error> {
        veltix_std::Server::ping(self, peer, timeout)
    }
    fn broadcast(&self, t: MessageType, payload: &[u8]) -> Result<usize, Error> {
        veltix_std::Server::broadcast(self, t, payload)
    }
    fn broadcast_except(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[Self::Peer],
    ) -> Result<usize, Error> {
        veltix_std::Server::broadcast_except(self, t, payload, except)
    }
    fn broadcast_to(
        &self,
        t: MessageType,
        payload: &[u8],
        peers: &[Self::Peer],
    ) -> Result<usize, Error> {
        veltix_std::Server::broadcast_to(self, t, payload, peers)
    }
    fn broadcast_tag(
        &self,
        t: MessageType,
        payload: &[u8],
        tag: &str,
        value: Option<&Value>,
    ) -> Result<usize, Error> {
        veltix_std::Server::broadcast_tag(self, t, payload, tag, value)
    }
    fn close_client(&self, peer: &Self::Peer) -> bool {
        veltix_std::Server::close_client(self, peer)
    }
    fn shutdown(&self, flush: Duration) {
        veltix_std::Server::shutdown(self, flush);
    }
    fn wait_closed(&self) {
        veltix_std::Server::wait_closed(self);
    }
    fn is_full(&self) -> bool {
        veltix_std::Server::is_full(self)
    }
    fn stats(&self) -> HubStats {
        veltix_std::Server::stats(self)
    }
    fn config(&self) -> &ServerConfig {
        veltix_std::Server::config(self)
    }
}

impl ClientApi for veltix_std::Client {
    fn new(config: ClientConfig) -> Result<Self, Error> {
        veltix_std::Client::new(config)
    }
    fn with_tls(config: ClientConfig, tls: ClientTls) -> Result<Self, Error> {
        veltix_std::Client::with_tls(config, tls)
    }
    fn tls_info(&self) -> Option<TlsInfo> {
        veltix_std::Client::tls_info(self)
    }
    fn is_tls(&self) -> bool {
        veltix_std::Client::is_tls(self)
    }
    fn on_connect(&self, f: impl Fn(&Self) + Send + Sync + 'static) {
        veltix_std::Client::on_connect(self, f);
    }
    fn on_disconnect(&self, f: impl Fn(&Self, &DisconnectState) + Send + Sync + 'static) {
        veltix_std::Client::on_disconnect(self, f);
    }
    fn on_recv(&self, f: impl Fn(&Self, Frame) + Send + Sync + 'static) {
        veltix_std::Client::on_recv(self, f);
    }
    fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Self, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        veltix_std::Client::route(self, t, f)
    }
    fn connect(&self) -> Result<(), Error> {
        veltix_std::Client::connect(self)
    }
    fn is_connected(&self) -> bool {
        veltix_std::Client::is_connected(self)
    }
    fn send(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        veltix_std::Client::send(self, t, payload, timeout)
    }
    fn try_send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        veltix_std::Client::try_send(self, t, payload)
    }
    fn send_system(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        veltix_std::Client::send_system(self, t, payload)
    }
    fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        veltix_std::Client::reply(self, request, t, payload)
    }
    fn request(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        veltix_std::Client::request(self, t, payload, timeout)
    }
    fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        veltix_std::Client::ping(self, timeout)
    }
    fn retry(&self, max: Option<u32>) {
        veltix_std::Client::retry(self, max);
    }
    fn stop_retry(&self) {
        veltix_std::Client::stop_retry(self);
    }
    fn disconnect(&self) -> bool {
        veltix_std::Client::disconnect(self)
    }
    fn wait_closed(&self) {
        veltix_std::Client::wait_closed(self);
    }
    fn server_hello(&self) -> Option<PeerHello> {
        veltix_std::Client::server_hello(self)
    }
    fn identity(&self) -> Option<Identity> {
        veltix_std::Client::identity(self)
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        veltix_std::Client::peer_addr(self)
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        veltix_std::Client::local_addr(self)
    }
    fn stats(&self) -> Option<ConnectionStats> {
        veltix_std::Client::stats(self)
    }
    fn config(&self) -> &ClientConfig {
        veltix_std::Client::config(self)
    }
}

// ------------------------------------------------------------------- tokio

/// `veltix_tokio` behind [`TokioServer`]/[`TokioClient`].
#[derive(Debug, Clone, Copy)]
pub struct Tokio;

impl Driver for Tokio {
    const NAME: &'static str = "tokio";
    type Server = TokioServer;
    type Client = TokioClient;
    type Peer = veltix_tokio::Peer;

    #[cfg(unix)]
    fn unix_server(
        config: ServerConfig,
        tls: Option<ServerTls>,
        path: &std::path::Path,
    ) -> Result<Self::Server, Error> {
        let _rt = runtime().enter();
        let server = match tls {
            None => veltix_tokio::Server::new(config)?,
            Some(tls) => veltix_tokio::Server::with_tls(config, tls)?,
        };
        server.start_on(tokio::net::UnixListener::bind(path)?)?;
        Ok(TokioServer(server))
    }

    #[cfg(unix)]
    fn unix_client(
        config: ClientConfig,
        tls: Option<ClientTls>,
        path: &std::path::Path,
    ) -> Result<Self::Client, Error> {
        let _rt = runtime().enter();
        veltix_tokio::Client::with_connector(config, TokioUnix(path.to_owned()), tls)
            .map(TokioClient)
    }
}

/// The multi-thread runtime (2 workers) every [`Tokio`] facade object runs
/// on, made on first use and kept for the life of the process: facade
/// handles are cloned into handlers that live inside the runtime, and a
/// runtime may not be dropped from within itself.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("facade-tokio")
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    runtime().block_on(f)
}

/// Runs a synchronous handler on tokio's blocking pool and waits for it;
/// its panic is re-raised in the calling (handler) task.
async fn blocking(f: impl FnOnce() + Send + 'static) {
    if let Err(e) = tokio::task::spawn_blocking(f).await {
        if e.is_panic() {
            std::panic::resume_unwind(e.into_panic());
        }
    }
}

/// A `veltix_tokio::Server` with blocking methods.
#[derive(Clone, Debug)]
pub struct TokioServer(pub veltix_tokio::Server);

/// A `veltix_tokio::Client` with blocking methods.
#[derive(Clone, Debug)]
pub struct TokioClient(pub veltix_tokio::Client);

impl ServerApi for TokioServer {
    type Peer = veltix_tokio::Peer;
    fn new(config: ServerConfig) -> Result<Self, Error> {
        let _rt = runtime().enter();
        veltix_tokio::Server::new(config).map(TokioServer)
    }
    fn with_tls(config: ServerConfig, tls: ServerTls) -> Result<Self, Error> {
        let _rt = runtime().enter();
        veltix_tokio::Server::with_tls(config, tls).map(TokioServer)
    }
    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
    fn on_connect(&self, f: impl Fn(&Self, &Self::Peer) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.0.on_connect(move |s, p| {
            let f = f.clone();
            blocking(move || f(&TokioServer(s), &p))
        });
    }
    fn on_disconnect(&self, f: impl Fn(&Self, &Self::Peer) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.0.on_disconnect(move |s, p| {
            let f = f.clone();
            blocking(move || f(&TokioServer(s), &p))
        });
    }
    fn on_recv(&self, f: impl Fn(&Self, &Self::Peer, Frame) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.0.on_recv(move |s, p, m| {
            let f = f.clone();
            blocking(move || f(&TokioServer(s), &p, m))
        });
    }
    fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Self, &Self::Peer, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let f = Arc::new(f);
        self.0.route(t, move |s, p, m| {
            let f = f.clone();
            blocking(move || f(&TokioServer(s), &p, m))
        })
    }
    fn start(&self) -> Result<(), Error> {
        block_on(self.0.start())
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local_addr()
    }
    fn clients(&self) -> Vec<Self::Peer> {
        self.0.clients()
    }
    fn clients_by_tag(&self, tag: &str, value: Option<&Value>) -> Vec<Self::Peer> {
        self.0.clients_by_tag(tag, value)
    }
    fn send(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        block_on(self.0.send(peer, t, payload, timeout))
    }
    fn try_send(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<u16, Error> {
        let _rt = runtime().enter();
        self.0.try_send(peer, t, payload)
    }
    fn reply(
        &self,
        peer: &Self::Peer,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let _rt = runtime().enter();
        self.0.reply(peer, request, t, payload)
    }
    fn request(
        &self,
        peer: &Self::Peer,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        block_on(self.0.request(peer, t, payload, timeout))
    }
    fn ping(&self, peer: &Self::Peer, timeout: Option<Duration>) -> Result<Duration, Error> {
        block_on(self.0.ping(peer, timeout))
    }
    fn broadcast(&self, t: MessageType, payload: &[u8]) -> Result<usize, Error> {
        let _rt = runtime().enter();
        self.0.broadcast(t, payload)
    }
    fn broadcast_except(
        &self,
        t: MessageType,
        payload: &[u8],
        except: &[Self::Peer],
    ) -> Result<usize, Error> {
        let _rt = runtime().enter();
        self.0.broadcast_except(t, payload, except)
    }
    fn broadcast_to(
        &self,
        t: MessageType,
        payload: &[u8],
        peers: &[Self::Peer],
    ) -> Result<usize, Error> {
        let _rt = runtime().enter();
        self.0.broadcast_to(t, payload, peers)
    }
    fn broadcast_tag(
        &self,
        t: MessageType,
        payload: &[u8],
        tag: &str,
        value: Option<&Value>,
    ) -> Result<usize, Error> {
        let _rt = runtime().enter();
        self.0.broadcast_tag(t, payload, tag, value)
    }
    fn close_client(&self, peer: &Self::Peer) -> bool {
        let _rt = runtime().enter();
        self.0.close_client(peer)
    }
    fn shutdown(&self, flush: Duration) {
        block_on(self.0.shutdown(flush));
    }
    fn wait_closed(&self) {
        block_on(self.0.wait_closed());
    }
    fn is_full(&self) -> bool {
        self.0.is_full()
    }
    fn stats(&self) -> HubStats {
        self.0.stats()
    }
    fn config(&self) -> &ServerConfig {
        self.0.config()
    }
}

impl ClientApi for TokioClient {
    fn new(config: ClientConfig) -> Result<Self, Error> {
        let _rt = runtime().enter();
        veltix_tokio::Client::new(config).map(TokioClient)
    }
    fn with_tls(config: ClientConfig, tls: ClientTls) -> Result<Self, Error> {
        let _rt = runtime().enter();
        veltix_tokio::Client::with_tls(config, tls).map(TokioClient)
    }
    fn tls_info(&self) -> Option<TlsInfo> {
        self.0.tls_info()
    }
    fn is_tls(&self) -> bool {
        self.0.is_tls()
    }
    fn on_connect(&self, f: impl Fn(&Self) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.0.on_connect(move |c| {
            let f = f.clone();
            blocking(move || f(&TokioClient(c)))
        });
    }
    fn on_disconnect(&self, f: impl Fn(&Self, &DisconnectState) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.0.on_disconnect(move |c, d| {
            let f = f.clone();
            blocking(move || f(&TokioClient(c), &d))
        });
    }
    fn on_recv(&self, f: impl Fn(&Self, Frame) + Send + Sync + 'static) {
        let f = Arc::new(f);
        self.0.on_recv(move |c, m| {
            let f = f.clone();
            blocking(move || f(&TokioClient(c), m))
        });
    }
    fn route(
        &self,
        t: MessageType,
        f: impl Fn(&Self, Frame) + Send + Sync + 'static,
    ) -> Result<(), Error> {
        let f = Arc::new(f);
        self.0.route(t, move |c, m| {
            let f = f.clone();
            blocking(move || f(&TokioClient(c), m))
        })
    }
    fn connect(&self) -> Result<(), Error> {
        block_on(self.0.connect())
    }
    fn is_connected(&self) -> bool {
        self.0.is_connected()
    }
    fn send(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<u16, Error> {
        block_on(self.0.send(t, payload, timeout))
    }
    fn try_send(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let _rt = runtime().enter();
        self.0.try_send(t, payload)
    }
    fn send_system(&self, t: MessageType, payload: impl Into<Bytes>) -> Result<u16, Error> {
        let _rt = runtime().enter();
        self.0.send_system(t, payload)
    }
    fn reply(
        &self,
        request: &Frame,
        t: MessageType,
        payload: impl Into<Bytes>,
    ) -> Result<(), Error> {
        let _rt = runtime().enter();
        self.0.reply(request, t, payload)
    }
    fn request(
        &self,
        t: MessageType,
        payload: impl Into<Bytes>,
        timeout: Option<Duration>,
    ) -> Result<Frame, Error> {
        block_on(self.0.request(t, payload, timeout))
    }
    fn ping(&self, timeout: Option<Duration>) -> Result<Duration, Error> {
        block_on(self.0.ping(timeout))
    }
    fn retry(&self, max: Option<u32>) {
        let _rt = runtime().enter();
        self.0.retry(max);
    }
    fn stop_retry(&self) {
        let _rt = runtime().enter();
        self.0.stop_retry();
    }
    fn disconnect(&self) -> bool {
        block_on(self.0.disconnect())
    }
    fn wait_closed(&self) {
        block_on(self.0.wait_closed());
    }
    fn server_hello(&self) -> Option<PeerHello> {
        self.0.server_hello()
    }
    fn identity(&self) -> Option<Identity> {
        self.0.identity()
    }
    fn peer_addr(&self) -> Option<SocketAddr> {
        self.0.peer_addr()
    }
    fn local_addr(&self) -> Option<SocketAddr> {
        self.0.local_addr()
    }
    fn stats(&self) -> Option<ConnectionStats> {
        self.0.stats()
    }
    fn config(&self) -> &ClientConfig {
        self.0.config()
    }
}
