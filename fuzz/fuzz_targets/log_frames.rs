//! busd's reader of the runner's NDJSON log stream (`busd::upstream::ndjson::FrameDecoder`)
//! and the decoding of each frame's payload (`busd::fanout::decode`).
//!
//! Properties: how the bytes are split into chunks never changes the frames or the error; at
//! most one error, and nothing after it; every frame accepted re-serialises to JSON that
//! parses to the same frame; an output frame's payload decodes exactly when it is canonical
//! base64 (so no accepted frame fails later), and then re-encodes to the same text.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bus_api::LogFrame;
use busd::fanout::{self, Decoded};
use busd::upstream::ndjson::{FrameDecoder, FrameError};
use libfuzzer_sys::fuzz_target;

type Outcome = (Vec<Result<LogFrame, FrameError>>, Result<(), FrameError>);

fn decode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome {
    let mut decoder = FrameDecoder::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(frame) = decoder.next_frame() {
            frames.push(frame);
        }
    }
    (frames, decoder.finish())
}

/// Splits `data` at lengths drawn from `seed` (1 to 16 bytes, and sometimes empty chunks).
fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut state = u32::from(seed) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = ((state >> 16) % 17) as usize;
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else {
        return;
    };
    let whole = decode([data]);
    let pieces = decode(chunks(data, seed));
    assert_eq!(whole, pieces, "the chunking changed the outcome");
    let (frames, end) = whole;
    if let Some(first_err) = frames.iter().position(Result::is_err) {
        assert_eq!(first_err, frames.len() - 1, "nothing follows an error");
        assert_eq!(end, Ok(()), "an error is reported once");
    }
    let newlines = data.iter().filter(|&&b| b == b'\n').count();
    assert!(frames.len() <= newlines + 1);
    for frame in frames.into_iter().filter_map(Result::ok) {
        let json = serde_json::to_vec(&frame).expect("an accepted frame serialises");
        let again: LogFrame = serde_json::from_slice(&json).expect("and parses again");
        assert_eq!(again, frame);
        let data = match &frame {
            LogFrame::Output { data, .. } => Some(data.clone()),
            _ => None,
        };
        match (fanout::decode(frame, "http://fuzz"), data) {
            (Ok(Decoded::Chunk(chunk)), Some(text)) => {
                assert_eq!(STANDARD.encode(&chunk.data), text, "canonical base64 only")
            }
            (Err(_), Some(text)) => assert!(STANDARD.decode(text).is_err()),
            (Ok(Decoded::Exit(_)), None) => {}
            (Err(e), None) => {
                // Only a keepalive is refused here; the reader drops those before.
                assert!(e.to_string().contains("keepalive"), "{e}");
            }
            (Ok(_), data) => panic!("the frame decoded as another kind: {data:?}"),
        }
    }
});
