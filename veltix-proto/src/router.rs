//! Veltix's dispatch rule for application messages (spec §5.1, rules 3–5):
//! a route registered for the frame's type wins; otherwise the catch-all
//! (`on_recv`); otherwise the message is dropped. One route per type: a
//! second registration is refused, as Veltix ignores it.
//!
//! Generic over the handler type so each driver stores its own callbacks.
//!
//! ```
//! use veltix_proto::{MessageType, Router};
//! let mut r: Router<&str> = Router::default();
//! assert!(r.route(MessageType::new(200), "chat"));
//! assert!(!r.route(MessageType::new(200), "again"), "first registration wins");
//! r.set_fallback("on_recv");
//! assert_eq!(r.handler(MessageType::new(200)), Some(&"chat"));
//! assert_eq!(r.handler(MessageType::new(201)), Some(&"on_recv"));
//! ```

use std::collections::BTreeMap;

use crate::frame::MessageType;

/// Routes by message type, with a catch-all.
#[derive(Debug, Clone)]
pub struct Router<H> {
    routes: BTreeMap<MessageType, H>,
    fallback: Option<H>,
}

impl<H> Default for Router<H> {
    fn default() -> Self {
        Router {
            routes: BTreeMap::new(),
            fallback: None,
        }
    }
}

impl<H> Router<H> {
    /// Registers the handler of one type; `false` (and no change) if the type
    /// already has one.
    pub fn route(&mut self, message_type: MessageType, handler: H) -> bool {
        use std::collections::btree_map::Entry;
        match self.routes.entry(message_type) {
            Entry::Occupied(_) => false,
            Entry::Vacant(v) => {
                v.insert(handler);
                true
            }
        }
    }

    /// Sets (or replaces) the catch-all handler (`on_recv`).
    pub fn set_fallback(&mut self, handler: H) {
        self.fallback = Some(handler);
    }

    /// The handler for a message of this type, if any.
    pub fn handler(&self, message_type: MessageType) -> Option<&H> {
        self.routes.get(&message_type).or(self.fallback.as_ref())
    }

    /// Whether a route exists for exactly this type.
    pub fn has_route(&self, message_type: MessageType) -> bool {
        self.routes.contains_key(&message_type)
    }
}
