//! busd's readers of the runner's log stream: NDJSON (`busd::upstream::ndjson::FrameDecoder`,
//! then `bus_api::frames::Frame::try_from` and `busd::fanout::decode`) and the binary framing
//! (`bus_api::frames::FrameDecoder`), both fed the same bytes.
//!
//! Properties, for each: how the bytes are split into chunks never changes the frames or the
//! error; at most one error, and nothing after it. NDJSON: every frame accepted re-serialises
//! to JSON that parses to the same frame; an output frame's payload decodes exactly when it is
//! canonical base64 (so no accepted frame fails later), and then re-encodes to the same text.
//! Binary: the accepted frames, written again, read back as the same frames.

#![no_main]

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use bus_api::LogFrame;
use bus_api::frames::{self, Frame};
use busd::fanout::{self, Decoded};
use busd::upstream::ndjson::{FrameDecoder, FrameError};
use libfuzzer_sys::fuzz_target;

type Outcome<T> = (Vec<Result<T, FrameError>>, Result<(), FrameError>);

fn decode<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome<LogFrame> {
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

fn decode_binary<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Outcome<Frame> {
    let mut decoder = frames::FrameDecoder::new();
    let mut frames = Vec::new();
    for chunk in chunks {
        decoder.push(chunk);
        while let Some(frame) = decoder.next_frame() {
            frames.push(frame);
        }
    }
    (frames, decoder.finish())
}

/// Nothing follows an error, and an error is reported once.
fn one_error_at_most<T>((frames, end): &Outcome<T>) {
    if let Some(first_err) = frames.iter().position(Result::is_err) {
        assert_eq!(first_err, frames.len() - 1, "nothing follows an error");
        assert_eq!(*end, Ok(()), "an error is reported once");
    }
}

fn binary_properties(data: &[u8], seed: u8) {
    let whole = decode_binary([data]);
    let pieces = decode_binary(chunks(data, seed));
    assert_eq!(whole, pieces, "the chunking changed the binary outcome");
    one_error_at_most(&whole);
    let accepted: Vec<Frame> = whole.0.into_iter().filter_map(Result::ok).collect();
    let mut again = Vec::new();
    for frame in &accepted {
        match frame {
            Frame::Output(o) => frames::put_output(&mut again, o.seq, o.stream, o.time, &o.data),
            Frame::Control(c) => frames::put_control(&mut again, c),
        }
    }
    let (reread, end) = decode_binary([again.as_slice()]);
    assert_eq!(end, Ok(()));
    assert_eq!(reread, accepted.into_iter().map(Ok).collect::<Vec<_>>());
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
    binary_properties(data, seed);
    let whole = decode([data]);
    let pieces = decode(chunks(data, seed));
    assert_eq!(whole, pieces, "the chunking changed the outcome");
    one_error_at_most(&whole);
    let (frames, _) = whole;
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
        let decoded = Frame::try_from(frame)
            .map_err(|e| e.to_string())
            .and_then(|f| fanout::decode(f, "http://fuzz").map_err(|e| e.to_string()));
        match (decoded, data) {
            (Ok(Decoded::Chunk(chunk)), Some(text)) => {
                assert_eq!(STANDARD.encode(&chunk.data), text, "canonical base64 only")
            }
            (Err(_), Some(text)) => assert!(STANDARD.decode(text).is_err()),
            (Ok(Decoded::Exit(_)), None) => {}
            (Err(e), None) => {
                // Only a keepalive is refused here; the reader drops those before.
                assert!(e.contains("Keepalive"), "{e}");
            }
            (Ok(_), data) => panic!("the frame decoded as another kind: {data:?}"),
        }
    }
});
