//! Joins fragmented WebSocket messages, enforcing what the frame parser does
//! not: a cap on the whole message (not just each frame), fragment order, and
//! UTF-8 validity of text checked as fragments arrive, so an invalid message
//! fails fast instead of after the last fragment.

use crate::protocol::CloseCode;
use bytes::{Bytes, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};

/// A complete data message.
#[derive(Debug, PartialEq)]
pub enum DataMessage {
    Text(Bytes),
    Binary(Bytes),
}

/// Why a connection must be failed, with its RFC 6455 close code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// 1002: fragments out of order.
    Protocol,
    /// 1007: text that is not UTF-8.
    InvalidUtf8,
    /// 1009: the message is larger than allowed.
    TooBig,
}

impl Violation {
    pub fn close_code(self) -> CloseCode {
        match self {
            Violation::Protocol => CloseCode::ProtocolError,
            Violation::InvalidUtf8 => CloseCode::InvalidPayload,
            Violation::TooBig => CloseCode::TooBig,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol => "protocol error",
            Violation::InvalidUtf8 => "invalid utf-8",
            Violation::TooBig => "message too big",
        }
    }
}

pub struct Assembler {
    max: usize,
    partial: Option<(OpCode, BytesMut)>,
    /// How much of a partial text message is known-valid UTF-8.
    checked: usize,
}

fn into_bytes(payload: Payload<'_>) -> BytesMut {
    match payload {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

impl Assembler {
    pub fn new(max: usize) -> Self {
        Assembler { max, partial: None, checked: 0 }
    }

    /// Feeds one data or continuation frame; returns a message once complete.
    pub fn push(&mut self, frame: Frame<'_>) -> Result<Option<DataMessage>, Violation> {
        match (frame.opcode, self.partial.is_some()) {
            (OpCode::Text | OpCode::Binary, true) => Err(Violation::Protocol),
            (OpCode::Continuation, false) => Err(Violation::Protocol),
            (op @ (OpCode::Text | OpCode::Binary), false) => {
                let fin = frame.fin;
                let body = into_bytes(frame.payload);
                if body.len() > self.max {
                    return Err(Violation::TooBig);
                }
                self.partial = Some((op, body));
                self.checked = 0;
                self.check_utf8(fin)?;
                Ok(if fin { self.finish() } else { None })
            }
            (OpCode::Continuation, true) => {
                let fin = frame.fin;
                let (_, buf) = self.partial.as_mut().expect("partial message present");
                if buf.len() + frame.payload.len() > self.max {
                    return Err(Violation::TooBig);
                }
                buf.extend_from_slice(&frame.payload);
                self.check_utf8(fin)?;
                Ok(if fin { self.finish() } else { None })
            }
            _ => Err(Violation::Protocol),
        }
    }

    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        let Some((OpCode::Text, buf)) = &self.partial else {
            return Ok(());
        };
        match std::str::from_utf8(&buf[self.checked..]) {
            Ok(_) => self.checked = buf.len(),
            // An error with no length is a sequence cut at the fragment's end:
            // fine unless this was the last fragment.
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(_) => return Err(Violation::InvalidUtf8),
        }
        Ok(())
    }

    fn finish(&mut self) -> Option<DataMessage> {
        let (op, buf) = self.partial.take()?;
        Some(match op {
            OpCode::Text => DataMessage::Text(buf.freeze()),
            _ => DataMessage::Binary(buf.freeze()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, op: OpCode, body: &[u8]) -> Frame<'static> {
        Frame::new(fin, op, None, Payload::Owned(body.to_vec()))
    }

    #[test]
    fn joins_fragments_in_order() {
        let mut a = Assembler::new(100);
        assert_eq!(a.push(frame(false, OpCode::Text, b"he")).unwrap(), None);
        assert_eq!(a.push(frame(false, OpCode::Continuation, b"l")).unwrap(), None);
        let got = a.push(frame(true, OpCode::Continuation, b"lo")).unwrap();
        assert_eq!(got, Some(DataMessage::Text(Bytes::from_static(b"hello"))));
    }

    #[test]
    fn caps_the_whole_message_not_just_a_frame() {
        let mut a = Assembler::new(4);
        a.push(frame(false, OpCode::Binary, b"abc")).unwrap();
        assert_eq!(a.push(frame(true, OpCode::Continuation, b"de")), Err(Violation::TooBig));
    }

    #[test]
    fn rejects_out_of_order_fragments() {
        let mut a = Assembler::new(100);
        assert_eq!(a.push(frame(true, OpCode::Continuation, b"x")), Err(Violation::Protocol));
        a.push(frame(false, OpCode::Text, b"x")).unwrap();
        assert_eq!(a.push(frame(true, OpCode::Text, b"y")), Err(Violation::Protocol));
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_but_invalid_fails_fast() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100);
        a.push(frame(false, OpCode::Text, &euro[..1])).unwrap();
        let got = a.push(frame(true, OpCode::Continuation, &euro[1..])).unwrap();
        assert_eq!(got, Some(DataMessage::Text(Bytes::from_static("€".as_bytes()))));

        let mut a = Assembler::new(100);
        assert_eq!(a.push(frame(false, OpCode::Text, b"ok\xff")), Err(Violation::InvalidUtf8));
        let mut a = Assembler::new(100);
        a.push(frame(false, OpCode::Text, &euro[..2])).unwrap();
        assert_eq!(a.push(frame(true, OpCode::Continuation, b"")), Err(Violation::InvalidUtf8));
    }
}
