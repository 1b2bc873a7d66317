//! The conformance endpoint: echoes every message back, through exactly the
//! same socket code as chat connections, so an RFC 6455 test suite (Autobahn
//! cases) exercises the node's real framing, limits and close handling.

use std::sync::Arc;

use async_trait::async_trait;

use super::assembler::DataMessage;
use super::registry::{Outbound, Outbox};
use super::socket::Handler;

pub struct Echo {
    pub outbox: Arc<Outbox>,
}

#[async_trait]
impl Handler for Echo {
    async fn on_message(&mut self, message: DataMessage) -> Result<(), (u16, String)> {
        let frame = match message {
            DataMessage::Text(b) => Outbound::Text(b),
            DataMessage::Binary(b) => Outbound::Binary(b),
        };
        if self.outbox.send(frame).await {
            Ok(())
        } else {
            Err((1011, "closing".into()))
        }
    }

    async fn on_close(&mut self) {}
}
