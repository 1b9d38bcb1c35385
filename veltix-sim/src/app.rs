//! Where your application reacts: [`ServerApp`] and [`ClientApp`], and the
//! network-level notices they may watch ([`ServerLinkEvent`],
//! [`ClientLinkEvent`]).

use std::any::Any;

use veltix_proto::{HubEvent, PeerId, SessionEvent};

use crate::ctx::{ClientCtx, ServerCtx};
use crate::{LinkId, LinkInfo, NodeId};

/// Lets [`Sim::client_app`](crate::Sim::client_app) and
/// [`Sim::server_app`](crate::Sim::server_app) hand your application back
/// with its own type. Implemented for every `'static` type: nothing to do.
pub trait AsAny: Any {
    /// `self` as [`Any`].
    fn as_any(&self) -> &dyn Any;
    /// `self` as mutable [`Any`].
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

impl<T: Any> AsAny for T {
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The application of a server node: it sees what the node's
/// [`Hub`](veltix_proto::Hub) reports and answers through the
/// [`ServerCtx`], which carries the hub's commands.
///
/// Every method runs at the current virtual time ([`ServerCtx::now`]);
/// commands issued here take effect when the method returns (output is
/// written, then time moves on).
pub trait ServerApp: AsAny {
    /// Called once, at the first step after the node was added.
    fn on_start(&mut self, ctx: &mut ServerCtx<'_>) {
        let _ = ctx;
    }

    /// An event of the hub, about `peer` (application events, round robin
    /// between peers, exactly as [`Hub::poll_event`](veltix_proto::Hub::poll_event)
    /// gives them).
    fn on_event(&mut self, ctx: &mut ServerCtx<'_>, peer: PeerId, event: HubEvent);

    /// A timer set with [`ServerCtx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut ServerCtx<'_>, tag: u64) {
        let _ = (ctx, tag);
    }

    /// A transport was accepted, refused or dropped. A real server sees
    /// only some of this; a test uses it to keep its books.
    fn on_link(&mut self, ctx: &mut ServerCtx<'_>, event: ServerLinkEvent) {
        let _ = (ctx, event);
    }
}

/// The application of a client node: it sees what the node's
/// [`ClientSession`](veltix_proto::ClientSession) reports and answers
/// through the [`ClientCtx`], which carries the session's commands.
pub trait ClientApp: AsAny {
    /// Called once, at the first step after the node was added. The
    /// default calls [`ClientCtx::connect`].
    fn on_start(&mut self, ctx: &mut ClientCtx<'_>) {
        ctx.connect();
    }

    /// An event of the session, exactly as
    /// [`ClientSession::poll_event`](veltix_proto::ClientSession::poll_event)
    /// gives it.
    fn on_event(&mut self, ctx: &mut ClientCtx<'_>, event: SessionEvent);

    /// A timer set with [`ClientCtx::set_timer`] fired.
    fn on_timer(&mut self, ctx: &mut ClientCtx<'_>, tag: u64) {
        let _ = (ctx, tag);
    }

    /// The session dialled, a dial connected or was refused, or the session
    /// let go of a transport. A real client sees only some of this; a test
    /// uses it to keep its books.
    fn on_link(&mut self, ctx: &mut ClientCtx<'_>, event: ClientLinkEvent) {
        let _ = (ctx, event);
    }
}

/// What happened to a server node's transports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerLinkEvent {
    /// The hub accepted a transport as `peer` (its handshake starts).
    Accepted {
        /// The hub's id for it.
        peer: PeerId,
        /// The link.
        link: LinkId,
        /// The client node that dialled.
        client: NodeId,
    },
    /// The hub refused a transport (`server_full`): the rejection is
    /// written, then the server closes it.
    Refused {
        /// The link.
        link: LinkId,
        /// The client node that dialled.
        client: NodeId,
    },
    /// The hub finished `peer` ([`Hub::poll_finished`](veltix_proto::Hub::poll_finished)):
    /// its transport is dropped. Everything the server sent on it that was
    /// not read by then is lost, and its sender knows.
    Finished {
        /// The peer.
        peer: PeerId,
        /// The link.
        link: LinkId,
        /// What the network did on it, at this moment.
        info: LinkInfo,
    },
}

/// What happened to a client node's connection attempts and transports.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientLinkEvent {
    /// The session asked for a connection
    /// ([`ClientSession::poll_dial`](veltix_proto::ClientSession::poll_dial)),
    /// now, to `server`.
    Dialing {
        /// The server node dialled.
        server: NodeId,
    },
    /// The network refused that dial (the session was told `Error::Refused`).
    DialRefused {
        /// The server node dialled.
        server: NodeId,
    },
    /// The dial connected: the handshake starts on `link`.
    Opened {
        /// The new link.
        link: LinkId,
        /// Its server node.
        server: NodeId,
    },
    /// The session let go of the transport of `link` (closed, reset,
    /// refused, failed handshake): everything sent on it and not delivered
    /// is lost, and the session reports the failure.
    Dropped {
        /// The link.
        link: LinkId,
        /// What the network did on it, at this moment.
        info: LinkInfo,
    },
}
