//! busd's `:authority` adapter (`busd::authority::Rewriter`), fed HTTP/2 client streams built
//! from the input: header blocks encoded with a dynamic table (and table size updates), split
//! into HEADERS and CONTINUATION frames of drawn sizes with drawn padding and priority fields,
//! other frames between them, and authorities that are valid, socket paths (raw and
//! percent-encoded) or arbitrary bytes; and, separately, arbitrary bytes after the preface.
//!
//! Properties: the output does not depend on how the input is split into reads; read as a
//! server reads it, the output has the same header blocks with the same fields in the same
//! order, on the same streams, except that an invalid `:authority` became `localhost`; every
//! other frame is byte for byte the same; no frame exceeds 16384 bytes; a stream with no
//! invalid authority passes unchanged. Arbitrary bytes never panic and are split-independent.

#![no_main]

use arbitrary::Arbitrary;
use busd::authority::{PREFACE, Rewriter, read_as_server, valid_authority};
use libfuzzer_sys::fuzz_target;

#[derive(Debug, Arbitrary)]
enum Authority {
    Localhost,
    RawPath,
    EncodedPath,
    Bytes(Vec<u8>),
    Missing,
}

#[derive(Debug, Arbitrary)]
struct Request {
    authority: Authority,
    extra: Vec<(u8, Vec<u8>)>,
    /// A dynamic table size update at the block's start (taken modulo 4097).
    size_update: Option<u16>,
    /// Fragment sizes for HEADERS and its CONTINUATIONs (each taken modulo 64, plus 1).
    splits: Vec<u8>,
    padding: Option<u8>,
    priority: Option<[u8; 5]>,
    end_stream: bool,
    /// A frame sent after the block (type, flags, payload), HEADERS and CONTINUATION excepted.
    after: Option<(u8, u8, Vec<u8>)>,
}

#[derive(Debug, Arbitrary)]
enum Input {
    Requests { requests: Vec<Request>, seed: u8 },
    Bytes { bytes: Vec<u8>, seed: u8 },
}

const NAMES: [&[u8]; 6] = [
    b"user-agent",
    b"grpc-timeout",
    b"bus-token-file",
    b"x-custom",
    b"content-type",
    b"te",
];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// The client's bytes, and each block's fields as the client meant them.
fn client_stream(requests: &[Request]) -> (Vec<u8>, Vec<Vec<(Vec<u8>, Vec<u8>)>>) {
    let mut encoder = loona_hpack::Encoder::new();
    let mut out = PREFACE.to_vec();
    frame(0x4, 0, 0, &[], &mut out);
    let mut meant = Vec::new();
    for (i, request) in requests.iter().enumerate() {
        let stream = 1 + 2 * i as u32;
        let mut fields: Vec<(Vec<u8>, Vec<u8>)> = vec![
            (b":method".to_vec(), b"POST".to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
            (
                b":path".to_vec(),
                b"/bus.containers.v1.Containers/GetStatus".to_vec(),
            ),
        ];
        let authority = match &request.authority {
            Authority::Localhost => Some(b"localhost".to_vec()),
            Authority::RawPath => Some(b"/run/user/1000/bus/busd.sock".to_vec()),
            Authority::EncodedPath => Some(b"%2Frun%2Fuser%2F1000%2Fbus%2Fbusd.sock".to_vec()),
            Authority::Bytes(b) => Some(b.clone()),
            Authority::Missing => None,
        };
        if let Some(a) = authority {
            fields.push((b":authority".to_vec(), a));
        }
        for (name, value) in &request.extra {
            fields.push((
                NAMES[usize::from(*name) % NAMES.len()].to_vec(),
                value.clone(),
            ));
        }
        let mut block = Vec::new();
        if let Some(size) = request.size_update {
            let size = usize::from(size) % 4097;
            loona_hpack::encoder::encode_integer_into(size, 5, 0x20, &mut block).unwrap();
            encoder.set_max_table_size(size);
        }
        block.extend(encoder.encode(fields.iter().map(|(n, v)| (&n[..], &v[..]))));
        meant.push(fields);

        let mut rest = &block[..];
        let mut splits = request.splits.iter();
        let mut first = true;
        loop {
            let take = splits
                .next()
                .map_or(rest.len(), |s| usize::from(s % 64) + 1);
            let (chunk, tail) = rest.split_at(take.min(rest.len()));
            rest = tail;
            let mut flags = if rest.is_empty() { 0x4 } else { 0 };
            if first {
                let mut payload = Vec::new();
                if let Some(pad) = request.padding {
                    flags |= 0x8;
                    payload.push(pad);
                }
                if let Some(priority) = request.priority {
                    flags |= 0x20;
                    payload.extend_from_slice(&priority);
                }
                payload.extend_from_slice(chunk);
                payload.extend(std::iter::repeat_n(
                    0u8,
                    usize::from(request.padding.unwrap_or(0)),
                ));
                if request.end_stream {
                    flags |= 0x1;
                }
                frame(0x1, flags, stream, &payload, &mut out);
                first = false;
            } else {
                frame(0x9, flags, stream, chunk, &mut out);
            }
            if rest.is_empty() {
                break;
            }
        }
        if let Some((kind, flags, payload)) = &request.after {
            let kind = if *kind == 0x1 || *kind == 0x9 {
                0x0
            } else {
                *kind
            };
            frame(kind, *flags, stream, payload, &mut out);
        }
    }
    (out, meant)
}

fn rewrite<'a>(chunks: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>, String> {
    let mut rewriter = Rewriter::new();
    let mut out = Vec::new();
    for chunk in chunks {
        rewriter.push(chunk, &mut out).map_err(|e| e.to_string())?;
    }
    rewriter.finish(&mut out);
    Ok(out)
}

/// Splits `data` at lengths drawn from `seed` (0 to 40 bytes).
fn chunks(data: &[u8], seed: u8) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut state = u32::from(seed) | 1;
    let mut rest = data;
    while !rest.is_empty() {
        state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        let len = ((state >> 16) % 41) as usize;
        let (head, tail) = rest.split_at(len.min(rest.len()));
        out.push(head);
        rest = tail;
    }
    out
}

fuzz_target!(|input: Input| {
    match input {
        Input::Bytes { bytes, seed } => {
            let mut data = PREFACE.to_vec();
            data.extend_from_slice(&bytes);
            let whole = rewrite([&data[..]]);
            assert_eq!(whole, rewrite(chunks(&data, seed)));
        }
        Input::Requests { requests, seed } => {
            let (input, meant) = client_stream(&requests);
            let whole = rewrite([&input[..]]).expect("a well-formed stream is rewritten");
            assert_eq!(Ok(&whole), rewrite(chunks(&input, seed)).as_ref());

            let any_invalid = meant
                .iter()
                .flatten()
                .any(|(n, v)| n == b":authority" && !valid_authority(v));
            if !any_invalid {
                assert_eq!(whole, input, "a stream with valid authorities changed");
            }
            let (sent, sent_other) = read_as_server(&input).expect("the input is well formed");
            let (got, got_other) = read_as_server(&whole).expect("the output is well formed");
            assert_eq!(sent_other, got_other, "a non-header frame changed");
            assert_eq!(sent.len(), got.len());
            for ((s, g), fields) in sent.iter().zip(&got).zip(&meant) {
                assert_eq!(&s.fields, fields, "the client's own encoding round-trips");
                assert_eq!((s.stream, s.end_stream), (g.stream, g.end_stream));
                let want: Vec<(Vec<u8>, Vec<u8>)> = fields
                    .iter()
                    .map(|(n, v)| {
                        if n == b":authority" && !valid_authority(v) {
                            (n.clone(), b"localhost".to_vec())
                        } else {
                            (n.clone(), v.clone())
                        }
                    })
                    .collect();
                assert_eq!(g.fields, want);
            }
        }
    }
});
