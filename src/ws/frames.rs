//! Reads client frames off the socket (RFC 6455 §5.2).
//!
//! Our own reader rather than fastwebsockets' read half, for memory: that one
//! keeps an 8 KiB buffer per connection for the connection's whole life, and
//! most chat connections sit idle almost all the time. This buffer exists
//! only while bytes are arriving: a frame is read into a small allocation
//! (grown to the frame's size when needed), handed on as its own bytes, and
//! an idle connection waits holding a few hundred bytes at most.
//!
//! It checks what the transport layer must: masking, reserved bits (RSV1
//! only where permessage-deflate was agreed, and only on a message's first
//! frame), opcodes, control-frame rules and the frame-size cap. Fragment
//! order, inflating and UTF-8 are the assembler's business.

use bytes::{Buf, BytesMut};
use fastwebsockets::{Frame, OpCode, Payload};
use tokio::io::{AsyncRead, AsyncReadExt};

/// Room made for a frame's first read: enough for a typical chat frame to
/// arrive in one read, small enough not to matter on an idle connection.
const FIRST_READ: usize = 512;

/// Why reading stopped.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the transport.
    Eof,
    Io(std::io::Error),
    /// A violation of the framing rules: fail with 1002.
    Protocol(&'static str),
    /// A frame larger than the message cap: fail with 1009.
    TooBig,
}

pub struct FrameReader {
    buf: BytesMut,
    max_frame: usize,
    /// permessage-deflate was agreed: RSV1 marks a compressed message.
    deflate: bool,
}

impl FrameReader {
    pub fn new(max_frame: usize, deflate: bool) -> Self {
        FrameReader { buf: BytesMut::new(), max_frame, deflate }
    }

    /// Reads until at least `need` bytes are buffered.
    async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R, need: usize) -> Result<(), ReadError> {
        while self.buf.len() < need {
            let want = (need - self.buf.len()).max(FIRST_READ.saturating_sub(self.buf.len()));
            self.buf.reserve(want);
            match io.read_buf(&mut self.buf).await {
                Ok(0) => return Err(ReadError::Eof),
                Ok(_) => {}
                Err(e) => return Err(ReadError::Io(e)),
            }
        }
        Ok(())
    }

    /// The next frame, unmasked, and whether it starts a compressed message.
    pub async fn next<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> Result<(Frame<'static>, bool), ReadError> {
        if self.buf.is_empty() {
            // Give back what the last frame left behind before going idle.
            self.buf = BytesMut::new();
        }
        self.fill(io, 2).await?;
        let (head, len_code) = (self.buf[0], self.buf[1]);
        let compressed = head & 0b0100_0000 != 0;
        if head & 0b0011_0000 != 0 || (compressed && !self.deflate) {
            return Err(ReadError::Protocol("reserved bits set without an extension"));
        }
        let opcode = OpCode::try_from(head & 0x0F).map_err(|_| ReadError::Protocol("unknown opcode"))?;
        if compressed && !matches!(opcode, OpCode::Text | OpCode::Binary) {
            return Err(ReadError::Protocol("RSV1 on a frame that does not start a message"));
        }
        let fin = head & 0x80 != 0;
        if len_code & 0x80 == 0 {
            return Err(ReadError::Protocol("client frames must be masked"));
        }
        let extra = match len_code & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let header = 2 + extra + 4;
        self.fill(io, header).await?;
        let len = match extra {
            0 => u64::from(len_code & 0x7F),
            2 => u64::from(u16::from_be_bytes([self.buf[2], self.buf[3]])),
            _ => u64::from_be_bytes(self.buf[2..10].try_into().unwrap_or_default()),
        };
        if len >> 63 != 0 {
            return Err(ReadError::Protocol("frame length has its top bit set"));
        }
        let is_control = matches!(opcode, OpCode::Close | OpCode::Ping | OpCode::Pong);
        if is_control && (!fin || len > 125) {
            return Err(ReadError::Protocol("control frames must be whole and at most 125 bytes"));
        }
        if len > self.max_frame as u64 {
            return Err(ReadError::TooBig);
        }
        let len = len as usize;
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&self.buf[header - 4..header]);
        self.fill(io, header + len).await?;
        self.buf.advance(header);
        let mut payload = self.buf.split_to(len);
        unmask(&mut payload, mask);
        Ok((Frame::new(fin, opcode, None, Payload::Bytes(payload)), compressed))
    }
}

fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u32::from_ne_bytes(mask);
    let mut chunks = payload.chunks_exact_mut(4);
    for chunk in &mut chunks {
        let v = u32::from_ne_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]) ^ word;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A masked client frame.
    fn frame(head: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![head];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<(bool, OpCode, Vec<u8>), String>> {
        read_with(bytes, max, false).await.into_iter().map(|r| r.map(|(fin, op, body, _)| (fin, op, body))).collect()
    }

    type Read = Result<(bool, OpCode, Vec<u8>, bool), String>;

    async fn read_with(bytes: Vec<u8>, max: usize, deflate: bool) -> Vec<Read> {
        let mut reader = FrameReader::new(max, deflate);
        let mut io = std::io::Cursor::new(bytes);
        let mut out = Vec::new();
        loop {
            match reader.next(&mut io).await {
                Ok((f, compressed)) => out.push(Ok((f.fin, f.opcode, f.payload.to_vec(), compressed))),
                Err(ReadError::Eof) => return out,
                Err(e) => {
                    out.push(Err(format!("{e:?}")));
                    return out;
                }
            }
        }
    }

    #[tokio::test]
    async fn frames_of_every_length_class_are_unmasked() {
        let long = vec![b'x'; 70_000];
        let medium = vec![b'y'; 300];
        let mut wire = frame(0x81, b"hello", [1, 2, 3, 4]);
        wire.extend(frame(0x82, &medium, [9, 8, 7, 6]));
        wire.extend(frame(0x01, &long, [0xAA, 0xBB, 0xCC, 0xDD]));
        wire.extend(frame(0x89, b"", [0, 0, 0, 0]));
        let got = read_all(wire, 1 << 20).await;
        assert_eq!(got.len(), 4);
        assert_eq!(got[0].as_ref().unwrap(), &(true, OpCode::Text, b"hello".to_vec()));
        assert_eq!(got[1].as_ref().unwrap(), &(true, OpCode::Binary, medium));
        assert_eq!(got[2].as_ref().unwrap(), &(false, OpCode::Text, long));
        assert_eq!(got[3].as_ref().unwrap(), &(true, OpCode::Ping, vec![]));
    }

    #[tokio::test]
    async fn framing_violations_are_refused() {
        let unmasked = vec![0x81, 0x01, b'x'];
        let reserved = frame(0xC1, b"x", [1, 1, 1, 1]);
        let bad_opcode = frame(0x83, b"x", [1, 1, 1, 1]);
        let fragmented_ping = frame(0x09, b"x", [1, 1, 1, 1]);
        let long_close = frame(0x88, &[0u8; 126], [1, 1, 1, 1]);
        for wire in [unmasked, reserved, bad_opcode, fragmented_ping, long_close] {
            let got = read_all(wire, 1024).await;
            assert!(got[0].as_ref().is_err_and(|e| e.starts_with("Protocol")), "{got:?}");
        }
        let got = read_all(frame(0x81, &[b'a'; 2000], [1, 1, 1, 1]), 1024).await;
        assert_eq!(got[0].as_ref().unwrap_err(), "TooBig");
        let mut huge = vec![0x81, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[0; 4]);
        assert!(read_all(huge, 1024).await[0].as_ref().is_err_and(|e| e.starts_with("Protocol")));
    }

    #[tokio::test]
    async fn rsv1_marks_a_compressed_message_only_where_deflate_was_agreed() {
        let mut wire = frame(0x41, b"abc", [1, 2, 3, 4]); // RSV1, text, not FIN
        wire.extend(frame(0x80, b"def", [5, 6, 7, 8])); // continuation, FIN
        let got = read_with(wire.clone(), 1024, true).await;
        assert_eq!(got[0].as_ref().unwrap(), &(false, OpCode::Text, b"abc".to_vec(), true));
        assert_eq!(got[1].as_ref().unwrap(), &(true, OpCode::Continuation, b"def".to_vec(), false));
        assert!(read_with(wire, 1024, false).await[0].as_ref().is_err_and(|e| e.starts_with("Protocol")));
        let compressed_continuation = frame(0xC0, b"x", [1, 1, 1, 1]);
        let compressed_ping = frame(0xC9, b"x", [1, 1, 1, 1]);
        let rsv2 = frame(0xA1, b"x", [1, 1, 1, 1]);
        for wire in [compressed_continuation, compressed_ping, rsv2] {
            let got = read_with(wire, 1024, true).await;
            assert!(got[0].as_ref().is_err_and(|e| e.starts_with("Protocol")), "{got:?}");
        }
    }

    #[tokio::test]
    async fn a_frame_cut_short_is_an_eof() {
        let mut wire = frame(0x81, b"hello", [1, 2, 3, 4]);
        wire.truncate(8);
        assert!(read_all(wire, 1024).await.is_empty());
    }
}
