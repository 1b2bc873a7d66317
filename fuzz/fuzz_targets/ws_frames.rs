//! Client bytes off a socket: the frame reader, then the fragment
//! assembler (with permessage-deflate when the first byte says so, under a
//! message cap it also picks). Never a panic; a message handed on is never
//! over the cap, a text message is always UTF-8, and what the server
//! compresses of it inflates back to the same bytes.
#![no_main]

use confab::ws::assembler::{Assembler, DataMessage};
use confab::ws::deflate::{compress, Agreed, Inflater};
use confab::ws::frames::FrameReader;
use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut bytes)) = data.split_first() else { return };
    let deflate = mode & 1 == 1;
    // The smallest cap a node accepts, one over it, the default.
    let max = [4096, 1024, 1025, 65536][usize::from((mode >> 2) & 3)];
    let window = 15 - (mode >> 4) % 7;
    let inflater = deflate.then(|| Inflater::new(Agreed { window: 15, client_fresh: mode & 2 == 2 }));
    let mut reader = FrameReader::new(max, deflate);
    let mut assembler = Assembler::new(max, inflater);
    futures::executor::block_on(async {
        loop {
            let Ok((frame, compressed)) = reader.next(&mut bytes).await else { return };
            if frame.payload.len() > max {
                panic!("a frame over the cap was handed on");
            }
            if !matches!(frame.opcode, OpCode::Text | OpCode::Binary | OpCode::Continuation) {
                continue; // control frames are the socket's business
            }
            let body = match assembler.push(frame, compressed) {
                Ok(Some(DataMessage::Text(text))) => {
                    assert!(std::str::from_utf8(&text).is_ok(), "a text message that is not UTF-8");
                    text
                }
                Ok(Some(DataMessage::Binary(binary))) => binary,
                Ok(None) => continue,
                Err(_) => return,
            };
            assert!(body.len() <= max, "a message over the cap");
            // Decode, encode, decode: the server's own compression, with any
            // window it may agree, inflates to what it was given.
            let packed = compress(&body, window);
            let again = Inflater::new(Agreed { window, client_fresh: true }).inflate(&packed, body.len());
            assert_eq!(again.as_deref(), Ok(&body[..]), "compress then inflate, window {window}");
        }
    });
});
