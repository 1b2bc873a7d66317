//! The conformance endpoint: echoes every message back, through exactly the
//! same socket code as chat connections, so an RFC 6455 test suite (Autobahn
//! cases) exercises the node's real framing, limits and close handling.

use std::sync::Arc;

use async_trait::async_trait;

use super::assembler::DataMessage;
use super::socket::Handler;
use crate::fanout::registry::{Outbound, Outbox};
use crate::protocol::{Close, CloseCode};

pub struct Echo {
    pub outbox: Arc<Outbox>,
}

#[async_trait]
impl Handler for Echo {
    async fn on_message(&mut self, message: DataMessage) -> Result<(), Close> {
        let frame = match message {
            DataMessage::Text(b) => Outbound::Text(b),
            DataMessage::Binary(b) => Outbound::Binary(b),
        };
        if self.outbox.send(frame).await {
            Ok(())
        } else {
            Err(Close::new(CloseCode::InternalError, "closing"))
        }
    }

    async fn on_close(&mut self) {}
}
