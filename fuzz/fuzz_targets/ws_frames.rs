//! Client bytes off a socket: the frame reader, then the fragment
//! assembler (with permessage-deflate when the first byte says so). Never a
//! panic; a message handed on is never over the cap, and a text message is
//! always UTF-8.
#![no_main]

use confab::ws::assembler::{Assembler, DataMessage};
use confab::ws::deflate::{Agreed, Inflater};
use confab::ws::frames::FrameReader;
use fastwebsockets::OpCode;
use libfuzzer_sys::fuzz_target;

const MAX: usize = 4096;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, mut bytes)) = data.split_first() else { return };
    let deflate = mode & 1 == 1;
    let inflater = deflate.then(|| Inflater::new(Agreed { window: 15, client_fresh: mode & 2 == 2 }));
    let mut reader = FrameReader::new(MAX, deflate);
    let mut assembler = Assembler::new(MAX, inflater);
    futures::executor::block_on(async {
        loop {
            let Ok((frame, compressed)) = reader.next(&mut bytes).await else { return };
            if frame.payload.len() > MAX {
                panic!("a frame over the cap was handed on");
            }
            if !matches!(frame.opcode, OpCode::Text | OpCode::Binary | OpCode::Continuation) {
                continue; // control frames are the socket's business
            }
            match assembler.push(frame, compressed) {
                Ok(Some(DataMessage::Text(text))) => {
                    assert!(text.len() <= MAX, "a message over the cap");
                    assert!(std::str::from_utf8(&text).is_ok(), "a text message that is not UTF-8");
                }
                Ok(Some(DataMessage::Binary(binary))) => assert!(binary.len() <= MAX),
                Ok(None) => {}
                Err(_) => return,
            }
        }
    });
});
