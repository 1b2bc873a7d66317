//! Joins fragmented WebSocket messages, enforcing what the frame parser does
//! not: a cap on the whole message (not just each frame), fragment order, and
//! UTF-8 validity of text checked as fragments arrive, so an invalid message
//! fails fast instead of after the last fragment. A compressed message
//! (permessage-deflate) is inflated once whole, under the same cap, and its
//! text checked then.

use super::deflate::{InflateError, Inflater};
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
    /// 1007: a compressed message that does not inflate.
    Corrupt,
}

impl Violation {
    pub fn close_code(self) -> CloseCode {
        match self {
            Violation::Protocol => CloseCode::ProtocolError,
            Violation::InvalidUtf8 | Violation::Corrupt => CloseCode::InvalidPayload,
            Violation::TooBig => CloseCode::TooBig,
        }
    }

    pub fn reason(self) -> &'static str {
        match self {
            Violation::Protocol => "protocol error",
            Violation::InvalidUtf8 => "invalid utf-8",
            Violation::TooBig => "message too big",
            Violation::Corrupt => "invalid compressed data",
        }
    }
}

pub struct Assembler {
    max: usize,
    partial: Option<(OpCode, BytesMut)>,
    /// How much of a partial text message is known-valid UTF-8.
    checked: usize,
    /// Where permessage-deflate was agreed.
    inflater: Option<Inflater>,
    /// The partial message is compressed.
    compressed: bool,
}

fn into_bytes(payload: Payload<'_>) -> BytesMut {
    match payload {
        Payload::Bytes(b) => b,
        other => BytesMut::from(&other[..]),
    }
}

impl Assembler {
    pub fn new(max: usize, inflater: Option<Inflater>) -> Self {
        Assembler { max, partial: None, checked: 0, inflater, compressed: false }
    }

    /// Feeds one data or continuation frame, `compressed` if it starts a
    /// compressed message; returns a message once complete.
    pub fn push(&mut self, frame: Frame<'_>, compressed: bool) -> Result<Option<DataMessage>, Violation> {
        if compressed && (self.inflater.is_none() || frame.opcode == OpCode::Continuation) {
            return Err(Violation::Protocol);
        }
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
                self.compressed = compressed;
                self.check_utf8(fin)?;
                if fin {
                    self.finish()
                } else {
                    Ok(None)
                }
            }
            (OpCode::Continuation, true) => {
                let fin = frame.fin;
                let (_, buf) = self.partial.as_mut().expect("partial message present");
                if buf.len() + frame.payload.len() > self.max {
                    return Err(Violation::TooBig);
                }
                buf.extend_from_slice(&frame.payload);
                self.check_utf8(fin)?;
                if fin {
                    self.finish()
                } else {
                    Ok(None)
                }
            }
            _ => Err(Violation::Protocol),
        }
    }

    fn check_utf8(&mut self, fin: bool) -> Result<(), Violation> {
        let Some((OpCode::Text, buf)) = &self.partial else {
            return Ok(());
        };
        if self.compressed {
            return Ok(()); // checked once inflated
        }
        match std::str::from_utf8(&buf[self.checked..]) {
            Ok(_) => self.checked = buf.len(),
            // An error with no length is a sequence cut at the fragment's end:
            // fine unless this was the last fragment.
            Err(e) if e.error_len().is_none() && !fin => self.checked += e.valid_up_to(),
            Err(_) => return Err(Violation::InvalidUtf8),
        }
        Ok(())
    }

    fn finish(&mut self) -> Result<Option<DataMessage>, Violation> {
        let Some((op, buf)) = self.partial.take() else { return Ok(None) };
        let body = match (self.compressed, self.inflater.as_mut()) {
            (true, Some(inflater)) => {
                let plain = inflater.inflate(&buf, self.max).map_err(|e| match e {
                    InflateError::TooBig => Violation::TooBig,
                    InflateError::Corrupt => Violation::Corrupt,
                })?;
                if op == OpCode::Text && std::str::from_utf8(&plain).is_err() {
                    return Err(Violation::InvalidUtf8);
                }
                Bytes::from(plain)
            }
            _ => buf.freeze(),
        };
        Ok(Some(match op {
            OpCode::Text => DataMessage::Text(body),
            _ => DataMessage::Binary(body),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::super::deflate::{compress, Agreed};
    use super::*;

    fn frame(fin: bool, op: OpCode, body: &[u8]) -> Frame<'static> {
        Frame::new(fin, op, None, Payload::Owned(body.to_vec()))
    }

    impl Assembler {
        fn push_plain(&mut self, frame: Frame<'_>) -> Result<Option<DataMessage>, Violation> {
            self.push(frame, false)
        }
    }

    fn deflating(max: usize, client_fresh: bool) -> Assembler {
        Assembler::new(max, Some(Inflater::new(Agreed { window: 15, client_fresh })))
    }

    #[test]
    fn compressed_messages_are_inflated_whole_and_checked() {
        let packed = compress("h€llo".as_bytes(), 15);
        let (first, rest) = packed.split_at(2);
        for fresh in [false, true] {
            let mut a = deflating(100, fresh);
            assert_eq!(a.push(frame(false, OpCode::Text, first), true).unwrap(), None);
            let got = a.push(frame(true, OpCode::Continuation, rest), false).unwrap();
            assert_eq!(got, Some(DataMessage::Text(Bytes::from("h€llo"))));
            // Uncompressed messages still pass as they are.
            assert_eq!(
                a.push_plain(frame(true, OpCode::Binary, b"raw")).unwrap(),
                Some(DataMessage::Binary(Bytes::from_static(b"raw")))
            );
        }
        let mut a = deflating(100, false);
        assert_eq!(a.push(frame(true, OpCode::Text, &compress(b"ok\xff", 15)), true), Err(Violation::InvalidUtf8));
        let mut a = deflating(10, false);
        assert_eq!(a.push(frame(true, OpCode::Binary, &compress(&[0; 11], 15)), true), Err(Violation::TooBig));
        let mut a = deflating(100, false);
        assert_eq!(a.push(frame(true, OpCode::Binary, &[0xFF, 0xFF]), true), Err(Violation::Corrupt));
        assert_eq!(Violation::Corrupt.close_code(), CloseCode::InvalidPayload);
        let mut a = deflating(100, false);
        a.push(frame(false, OpCode::Text, first), true).unwrap();
        assert_eq!(
            a.push(frame(true, OpCode::Continuation, rest), true),
            Err(Violation::Protocol),
            "RSV1 on a continuation"
        );
        let mut a = Assembler::new(100, None);
        assert_eq!(a.push(frame(true, OpCode::Text, &packed), true), Err(Violation::Protocol), "deflate not agreed");
    }

    #[test]
    fn joins_fragments_in_order() {
        let mut a = Assembler::new(100, None);
        assert_eq!(a.push_plain(frame(false, OpCode::Text, b"he")).unwrap(), None);
        assert_eq!(a.push_plain(frame(false, OpCode::Continuation, b"l")).unwrap(), None);
        let got = a.push_plain(frame(true, OpCode::Continuation, b"lo")).unwrap();
        assert_eq!(got, Some(DataMessage::Text(Bytes::from_static(b"hello"))));
    }

    #[test]
    fn caps_the_whole_message_not_just_a_frame() {
        let mut a = Assembler::new(4, None);
        a.push_plain(frame(false, OpCode::Binary, b"abc")).unwrap();
        assert_eq!(a.push_plain(frame(true, OpCode::Continuation, b"de")), Err(Violation::TooBig));
    }

    #[test]
    fn rejects_out_of_order_fragments() {
        let mut a = Assembler::new(100, None);
        assert_eq!(a.push_plain(frame(true, OpCode::Continuation, b"x")), Err(Violation::Protocol));
        a.push_plain(frame(false, OpCode::Text, b"x")).unwrap();
        assert_eq!(a.push_plain(frame(true, OpCode::Text, b"y")), Err(Violation::Protocol));
    }

    #[test]
    fn utf8_split_across_fragments_is_fine_but_invalid_fails_fast() {
        let euro = "€".as_bytes();
        let mut a = Assembler::new(100, None);
        a.push_plain(frame(false, OpCode::Text, &euro[..1])).unwrap();
        let got = a.push_plain(frame(true, OpCode::Continuation, &euro[1..])).unwrap();
        assert_eq!(got, Some(DataMessage::Text(Bytes::from_static("€".as_bytes()))));

        let mut a = Assembler::new(100, None);
        assert_eq!(a.push_plain(frame(false, OpCode::Text, b"ok\xff")), Err(Violation::InvalidUtf8));
        let mut a = Assembler::new(100, None);
        a.push_plain(frame(false, OpCode::Text, &euro[..2])).unwrap();
        assert_eq!(a.push_plain(frame(true, OpCode::Continuation, b"")), Err(Violation::InvalidUtf8));
    }
}
