//! Stock gRPC clients on a Unix socket: grpc-core (1.57 and later), grpc-java and grpc-swift
//! send the socket path, raw or percent-encoded, as the `:authority` of every request. h2
//! refuses such a request as malformed (`RST_STREAM` with `PROTOCOL_ERROR`) and has no option
//! to accept it, so busd sits an adapter between each accepted connection and the HTTP/2
//! server: [`AuthorityFix`] reads the client's bytes through a [`Rewriter`], which replaces an
//! `:authority` that is not a valid URI authority with `localhost` and passes everything else
//! through. It is also where busd sees the connection preface, so it closes a connection that
//! sends none within [`PREFACE_TIMEOUT`].
//!
//! How the header blocks stay consistent: the rewriter keeps an HPACK decoder fed with every
//! header block the client sends, so it always holds the client's dynamic table. As long as no
//! block needs a change, blocks go to the server byte for byte, and the server's table is the
//! client's. The first block that needs a change starts with a dynamic table size update to
//! 0, which empties the server's table; from then on every block of the connection is sent
//! re-encoded, each field a literal without indexing (the server's table stays empty) and each
//! size update the client sent copied where it stood, so h2 still checks every size, order
//! and header rule it checked before. Only an invalid authority value is changed.
//!
//! Frames: the 24-byte preface, then 9-byte frame headers; HEADERS (with its PADDED and
//! PRIORITY fields) and its CONTINUATIONs are held until END_HEADERS; every other frame passes
//! unchanged as it arrives. Anything this adapter does not understand (a wrong preface, a
//! frame sequence h2 would reject, a header block the decoder cannot read) turns it into a
//! plain pipe for the rest of the connection, so h2 sees exactly what the client sent and
//! answers as it always did; except after a rewrite, when the server's table no longer matches
//! the client's, where such a block closes the connection instead.

use std::borrow::Cow;
use std::future::Future as _;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tonic::transport::server::Connected;

mod hpack;

use hpack::{decode_int, encode_string, representation_len, without_huffman};

/// How long a new connection has to send the HTTP/2 connection preface before busd closes it.
pub const PREFACE_TIMEOUT: Duration = Duration::from_secs(5);

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The authority put in place of an invalid one.
pub const REPLACEMENT: &[u8] = b"localhost";

const FRAME_HEADER: usize = 9;
const TYPE_HEADERS: u8 = 0x1;
const TYPE_CONTINUATION: u8 = 0x9;
const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;
/// The largest frame payload every HTTP/2 peer accepts (SETTINGS_MAX_FRAME_SIZE may only be
/// raised from it), so the frames of a re-encoded block never exceed the server's limit.
const MAX_FRAME_PAYLOAD: usize = 16_384;
/// The largest header block held for inspection. A larger one (far beyond the server's header
/// list limit) passes unchanged, or closes the connection once blocks are re-encoded.
const MAX_BLOCK: usize = 1 << 20;
/// SETTINGS_HEADER_TABLE_SIZE as busd's HTTP/2 server leaves it: the protocol's default.
const MAX_TABLE_SIZE: usize = 4_096;

/// What the rewriter does with the client's header blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Blocks pass unchanged; the server's table is the client's.
    Pass,
    /// Blocks are re-encoded; the server's table is empty.
    Reencode,
    /// Everything passes unchanged and unread.
    Pipe,
}

/// Where the reader is in the client's byte stream.
#[derive(Debug)]
enum At {
    /// This many preface bytes matched so far.
    Preface(usize),
    /// Collecting a frame header.
    FrameHeader,
    /// Passing this many more payload bytes of a frame through.
    Payload(usize),
    /// Collecting a HEADERS or CONTINUATION payload of this many more bytes.
    Block(usize),
}

/// A header block being collected: its frames as they came, and its fragment.
#[derive(Debug, Default)]
struct Block {
    raw: Vec<u8>,
    stream: u32,
    /// The first frame's END_STREAM and PRIORITY flags, and its priority fields.
    flags: u8,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
    /// Where the current frame's payload starts in `raw`.
    frame_start: usize,
}

/// The client-to-server half of the adapter, without I/O: [`push`](Rewriter::push) takes
/// bytes as they arrive and appends what the server should read. Splitting the input
/// differently never changes the output.
pub struct Rewriter {
    at: At,
    mode: Mode,
    header: Vec<u8>,
    block: Option<Block>,
    /// Between the HEADERS of a block and its END_HEADERS.
    awaiting_continuation: bool,
    decoder: loona_hpack::Decoder<'static>,
    table_size: usize,
    rewrites: u64,
}

impl Default for Rewriter {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Rewriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rewriter")
            .field("at", &self.at)
            .field("mode", &self.mode)
            .field("rewrites", &self.rewrites)
            .finish_non_exhaustive()
    }
}

/// Why the rewriter closed the connection.
#[derive(Debug, thiserror::Error)]
pub enum RewriteError {
    /// A header block that could not be decoded after blocks began to be re-encoded.
    #[error("a header block could not be decoded after its authority was rewritten: {0}")]
    Undecodable(String),
    /// A header block larger than the adapter holds after blocks began to be re-encoded.
    #[error("a header block exceeded {MAX_BLOCK} bytes")]
    TooLarge,
}

impl From<RewriteError> for io::Error {
    fn from(e: RewriteError) -> Self {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

impl Rewriter {
    /// A rewriter at the start of a connection.
    pub fn new() -> Self {
        let mut decoder = loona_hpack::Decoder::new();
        decoder.set_max_table_size(MAX_TABLE_SIZE);
        Rewriter {
            at: At::Preface(0),
            mode: Mode::Pass,
            header: Vec::with_capacity(FRAME_HEADER),
            block: None,
            awaiting_continuation: false,
            decoder,
            table_size: MAX_TABLE_SIZE,
            rewrites: 0,
        }
    }

    /// Whether the preface has been read in full (or the client sent something else, which
    /// the server will refuse itself).
    pub fn preface_done(&self) -> bool {
        !matches!(self.at, At::Preface(_)) || self.mode == Mode::Pipe
    }

    /// How many header blocks had their authority replaced.
    pub fn rewrites(&self) -> u64 {
        self.rewrites
    }

    /// The client's bytes that end the stream: anything held passes as it came.
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.header);
        self.header.clear();
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        self.mode = Mode::Pipe;
    }

    /// Reads `input` and appends what the server should see to `out`.
    pub fn push(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), RewriteError> {
        while !input.is_empty() {
            if self.mode == Mode::Pipe {
                out.extend_from_slice(input);
                return Ok(());
            }
            match self.at {
                At::Preface(seen) => {
                    let n = (PREFACE.len() - seen).min(input.len());
                    let (head, rest) = input.split_at(n);
                    out.extend_from_slice(head);
                    input = rest;
                    if head != &PREFACE[seen..seen + n] {
                        self.mode = Mode::Pipe;
                    } else if seen + n == PREFACE.len() {
                        self.at = At::FrameHeader;
                    } else {
                        self.at = At::Preface(seen + n);
                    }
                }
                At::Payload(left) => {
                    let n = left.min(input.len());
                    out.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    self.at = if n == left {
                        At::FrameHeader
                    } else {
                        At::Payload(left - n)
                    };
                }
                At::FrameHeader => {
                    let n = (FRAME_HEADER - self.header.len()).min(input.len());
                    self.header.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if self.header.len() == FRAME_HEADER {
                        self.frame_header(out)?;
                    }
                }
                At::Block(left) => {
                    let block = self.block.as_mut().expect("a block is being collected");
                    let n = left.min(input.len());
                    block.raw.extend_from_slice(&input[..n]);
                    input = &input[n..];
                    if n < left {
                        self.at = At::Block(left - n);
                    } else {
                        self.at = At::FrameHeader;
                        self.frame_payload_done(out)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Anything held passes as it came, and so does the rest of the connection.
    fn give_up(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if self.mode == Mode::Reencode {
            return Err(RewriteError::Undecodable(
                "the client's frames do not follow HTTP/2".into(),
            ));
        }
        self.finish(out);
        Ok(())
    }

    fn frame_header(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let h = &self.header;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let kind = h[3];
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let is_block_frame = if self.awaiting_continuation {
            kind == TYPE_CONTINUATION && self.block.as_ref().is_some_and(|b| b.stream == stream)
        } else {
            kind == TYPE_HEADERS
        };
        if self.awaiting_continuation && !is_block_frame {
            // h2 refuses this (a CONTINUATION was due); let it see the frames as sent.
            out.extend_from_slice(&self.block.take().expect("a block").raw);
            self.awaiting_continuation = false;
            return self.give_up(out);
        }
        if !is_block_frame {
            out.extend_from_slice(&self.header);
            self.header.clear();
            self.at = if len == 0 {
                At::FrameHeader
            } else {
                At::Payload(len)
            };
            return Ok(());
        }
        let held = self.block.as_ref().map_or(0, |b| b.raw.len());
        if held + FRAME_HEADER + len > MAX_BLOCK {
            if let Some(block) = self.block.take() {
                out.extend_from_slice(&block.raw);
            }
            self.awaiting_continuation = false;
            if self.mode == Mode::Reencode {
                return Err(RewriteError::TooLarge);
            }
            return self.give_up(out);
        }
        let block = self.block.get_or_insert_with(|| Block {
            stream,
            ..Block::default()
        });
        block.raw.extend_from_slice(&self.header);
        block.frame_start = block.raw.len();
        self.header.clear();
        self.awaiting_continuation = true;
        if len == 0 {
            self.at = At::FrameHeader;
            return self.frame_payload_done(out);
        }
        self.at = At::Block(len);
        Ok(())
    }

    /// A HEADERS or CONTINUATION payload is in: take its fragment; at END_HEADERS, the block.
    fn frame_payload_done(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let block = self.block.as_mut().expect("a block");
        let header = &block.raw[block.frame_start - FRAME_HEADER..block.frame_start];
        let (kind, flags) = (header[3], header[4]);
        let Some((fragment, priority)) =
            split_payload(kind, flags, &block.raw[block.frame_start..])
        else {
            return self.give_up_block(out);
        };
        let fragment = fragment.to_vec();
        if kind == TYPE_HEADERS {
            block.priority = priority;
            block.flags = flags & (FLAG_END_STREAM | FLAG_PRIORITY);
        }
        block.fragment.extend_from_slice(&fragment);
        if flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        self.awaiting_continuation = false;
        let block = self.block.take().expect("a block");
        self.header_block(block, out)
    }

    fn give_up_block(&mut self, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        if let Some(block) = self.block.take() {
            out.extend_from_slice(&block.raw);
        }
        self.awaiting_continuation = false;
        self.give_up(out)
    }

    /// A whole header block: decode it with the client's table, then pass or re-encode it.
    fn header_block(&mut self, block: Block, out: &mut Vec<u8>) -> Result<(), RewriteError> {
        let mut pieces = Vec::new();
        let mut needs_rewrite = false;
        if let Err(e) = self.decode(&block.fragment, &mut pieces, &mut needs_rewrite) {
            if self.mode == Mode::Reencode {
                return Err(RewriteError::Undecodable(e));
            }
            out.extend_from_slice(&block.raw);
            self.mode = Mode::Pipe;
            return Ok(());
        }
        if self.mode == Mode::Pass && !needs_rewrite {
            out.extend_from_slice(&block.raw);
            return Ok(());
        }
        let mut encoded = Vec::with_capacity(block.fragment.len() + 64);
        if self.mode == Mode::Pass {
            // Empty the server's table: re-encoded blocks never add to it.
            encoded.push(0x20);
            self.mode = Mode::Reencode;
        }
        if needs_rewrite {
            self.rewrites += 1;
        }
        for piece in &pieces {
            match piece {
                Piece::SizeUpdate(raw) => encoded.extend_from_slice(raw),
                Piece::Field(name, value) => {
                    let value = if name == b":authority" && !valid_authority(value) {
                        REPLACEMENT
                    } else {
                        value
                    };
                    encoded.push(0x00);
                    encode_string(name, &mut encoded);
                    encode_string(value, &mut encoded);
                }
            }
        }
        write_frames(&block, &encoded, out);
        Ok(())
    }

    /// Splits `fragment` into its representations and decodes each with the client's table.
    fn decode(
        &mut self,
        fragment: &[u8],
        pieces: &mut Vec<Piece>,
        needs_rewrite: &mut bool,
    ) -> Result<(), String> {
        let mut rest = fragment;
        while let Some(&first) = rest.first() {
            let len = representation_len(rest).ok_or("a truncated or oversized representation")?;
            let (raw, tail) = rest.split_at(len);
            rest = tail;
            if first & 0xe0 == 0x20 {
                let (size, _) = decode_int(raw, 5).ok_or("a bad size update")?;
                if size > self.table_size {
                    return Err(format!("a table size update to {size}, over the limit"));
                }
                self.decoder.set_max_table_size(size);
                pieces.push(Piece::SizeUpdate(raw.to_vec()));
                continue;
            }
            let mut field = None;
            let plain = without_huffman(raw);
            self.decoder
                .decode_with_cb(
                    plain.as_deref().unwrap_or(raw),
                    |name: Cow<[u8]>, value: Cow<[u8]>| {
                        field = Some((name.into_owned(), value.into_owned()));
                    },
                )
                .map_err(|e| format!("{e:?}"))?;
            let (name, value) = field.ok_or("a representation without a field")?;
            if name == b":authority" && !valid_authority(&value) {
                *needs_rewrite = true;
            }
            pieces.push(Piece::Field(name, value));
        }
        Ok(())
    }
}

/// One representation of a header block: a size update (kept as sent) or a decoded field.
enum Piece {
    SizeUpdate(Vec<u8>),
    Field(Vec<u8>, Vec<u8>),
}

/// Whether h2 accepts `value` as a request's authority.
pub fn valid_authority(value: &[u8]) -> bool {
    http::uri::Authority::try_from(value).is_ok()
}

/// A HEADERS or CONTINUATION payload's fragment and priority fields, without padding; `None`
/// when its padding or priority fields do not fit it.
fn split_payload(kind: u8, flags: u8, payload: &[u8]) -> Option<(&[u8], Option<[u8; 5]>)> {
    if kind != TYPE_HEADERS {
        return Some((payload, None));
    }
    let mut fragment = payload;
    if flags & FLAG_PADDED != 0 {
        let (&pad, rest) = fragment.split_first()?;
        let keep = rest.len().checked_sub(usize::from(pad))?;
        fragment = &rest[..keep];
    }
    let mut priority = None;
    if flags & FLAG_PRIORITY != 0 {
        let (fields, rest) = fragment.split_first_chunk::<5>()?;
        priority = Some(*fields);
        fragment = rest;
    }
    Some((fragment, priority))
}

/// The HEADERS frame (and CONTINUATIONs) that carry `encoded` for `block`.
fn write_frames(block: &Block, encoded: &[u8], out: &mut Vec<u8>) {
    let priority = block.priority.as_ref().map_or(&[][..], |p| &p[..]);
    let first_room = MAX_FRAME_PAYLOAD - priority.len();
    let (first, mut rest) = encoded.split_at(first_room.min(encoded.len()));
    let mut flags = block.flags;
    if rest.is_empty() {
        flags |= FLAG_END_HEADERS;
    }
    frame_header(
        priority.len() + first.len(),
        TYPE_HEADERS,
        flags,
        block.stream,
        out,
    );
    out.extend_from_slice(priority);
    out.extend_from_slice(first);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(MAX_FRAME_PAYLOAD.min(rest.len()));
        rest = tail;
        let flags = if rest.is_empty() { FLAG_END_HEADERS } else { 0 };
        frame_header(chunk.len(), TYPE_CONTINUATION, flags, block.stream, out);
        out.extend_from_slice(chunk);
    }
}

fn frame_header(len: usize, kind: u8, flags: u8, stream: u32, out: &mut Vec<u8>) {
    let len = u32::try_from(len).expect("a frame payload fits 24 bits");
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
}

/// An accepted connection read through a [`Rewriter`] and closed when it sends no preface
/// within [`PREFACE_TIMEOUT`]; writes go straight to the stream.
pub struct AuthorityFix<S> {
    inner: S,
    rewriter: Rewriter,
    /// Rewritten bytes not yet handed to the server.
    out: Vec<u8>,
    out_at: usize,
    scratch: Box<[u8]>,
    preface_deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    eof: bool,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection.
    pub fn new(inner: S) -> Self {
        Self::with_preface_timeout(inner, PREFACE_TIMEOUT)
    }

    /// [`new`](Self::new) with another preface timeout.
    pub fn with_preface_timeout(inner: S, timeout: Duration) -> Self {
        AuthorityFix {
            inner,
            rewriter: Rewriter::new(),
            out: Vec::new(),
            out_at: 0,
            scratch: vec![0; 16 * 1024].into_boxed_slice(),
            preface_deadline: Some(Box::pin(tokio::time::sleep(timeout))),
            eof: false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.out_at < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_at);
                buf.put_slice(&this.out[this.out_at..this.out_at + n]);
                this.out_at += n;
                if this.out_at == this.out.len() {
                    this.out.clear();
                    this.out_at = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            let mut read = ReadBuf::new(&mut this.scratch);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => {
                    if let Some(deadline) = this.preface_deadline.as_mut() {
                        ready!(deadline.as_mut().poll(cx));
                        tracing::debug!(
                            "closed a connection that sent no HTTP/2 preface within {}s",
                            PREFACE_TIMEOUT.as_secs()
                        );
                        return Poll::Ready(Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "no HTTP/2 preface in time",
                        )));
                    }
                    return Poll::Pending;
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let filled = read.filled();
                    if filled.is_empty() {
                        this.eof = true;
                        this.rewriter.finish(&mut this.out);
                    } else {
                        let was = this.rewriter.rewrites();
                        this.rewriter.push(filled, &mut this.out)?;
                        if was == 0 && this.rewriter.rewrites() > 0 {
                            tracing::debug!("rewriting a client's invalid :authority to localhost");
                        }
                    }
                    if this.rewriter.preface_done() {
                        this.preface_deadline = None;
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// A header block as a server reads it: the stream, the first frame's END_STREAM flag, and
/// the decoded fields in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedBlock {
    /// The stream the block opens or ends.
    pub stream: u32,
    /// Whether the HEADERS frame ended the stream.
    pub end_stream: bool,
    /// Name and value of each field, in order.
    pub fields: Vec<(Vec<u8>, Vec<u8>)>,
}

/// Reads a client's byte stream (preface, then frames) as a server would and returns its
/// header blocks, plus every other frame's bytes; for tests and the fuzz target.
pub fn read_as_server(bytes: &[u8]) -> Result<(Vec<DecodedBlock>, Vec<u8>), String> {
    let mut rest = bytes.strip_prefix(&PREFACE[..]).ok_or("no preface")?;
    let mut decoder = loona_hpack::Decoder::new();
    let mut blocks = Vec::new();
    let mut others = Vec::new();
    let mut open: Option<(u32, bool, Vec<u8>)> = None;
    while !rest.is_empty() {
        if rest.len() < FRAME_HEADER {
            return Err("a truncated frame header".into());
        }
        let h = &rest[..FRAME_HEADER];
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let (kind, flags) = (h[3], h[4]);
        let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
        let payload = rest
            .get(FRAME_HEADER..FRAME_HEADER + len)
            .ok_or("a truncated frame")?;
        let frame = &rest[..FRAME_HEADER + len];
        rest = &rest[FRAME_HEADER + len..];
        if kind != TYPE_HEADERS && kind != TYPE_CONTINUATION {
            if open.is_some() {
                return Err("a frame inside a header block".into());
            }
            others.extend_from_slice(frame);
            continue;
        }
        if len > MAX_FRAME_PAYLOAD {
            return Err(format!("a {len}-byte header frame"));
        }
        let (fragment, _) = split_payload(kind, flags, payload).ok_or("bad padding")?;
        match (&mut open, kind) {
            (None, TYPE_HEADERS) => {
                open = Some((stream, flags & FLAG_END_STREAM != 0, fragment.to_vec()));
            }
            (Some((s, _, block)), TYPE_CONTINUATION) if *s == stream => {
                block.extend_from_slice(fragment);
            }
            _ => return Err("a header frame out of order".into()),
        }
        if flags & FLAG_END_HEADERS != 0 {
            let (stream, end_stream, block) = open.take().expect("open");
            let mut fields = Vec::new();
            decoder
                .decode_with_cb(&block, |n: Cow<[u8]>, v: Cow<[u8]>| {
                    fields.push((n.into_owned(), v.into_owned()));
                })
                .map_err(|e| format!("{e:?}"))?;
            blocks.push(DecodedBlock {
                stream,
                end_stream,
                fields,
            });
        }
    }
    if open.is_some() {
        return Err("an unfinished header block".into());
    }
    Ok((blocks, others))
}

#[cfg(test)]
mod tests {
    use super::*;

    const PATH: &[u8] = b"/run/user/1000/bus/busd.sock";
    const ENCODED: &[u8] = b"%2Frun%2Fuser%2F1000%2Fbus%2Fbusd.sock";

    fn request(authority: &[u8]) -> Vec<(&'static [u8], Vec<u8>)> {
        vec![
            (b":method", b"POST".to_vec()),
            (b":scheme", b"http".to_vec()),
            (b":path", b"/grpc.health.v1.Health/Check".to_vec()),
            (b":authority", authority.to_vec()),
            (b"content-type", b"application/grpc".to_vec()),
            (b"te", b"trailers".to_vec()),
            (b"user-agent", b"grpc-python/1.85".to_vec()),
        ]
    }

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        frame_header(payload.len(), kind, flags, stream, &mut out);
        out.extend_from_slice(payload);
        out
    }

    /// A client connection: preface, SETTINGS, then one HEADERS+DATA per request, encoded
    /// with a table-using encoder (literals with incremental indexing, then indexed).
    fn client(authorities: &[&[u8]]) -> Vec<u8> {
        let mut encoder = loona_hpack::Encoder::new();
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        for (i, authority) in authorities.iter().enumerate() {
            let stream = 1 + 2 * i as u32;
            let fields = request(authority);
            let block = encoder.encode(fields.iter().map(|(n, v)| (*n, &v[..])));
            bytes.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, &block));
            bytes.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
        }
        bytes
    }

    fn rewrite(chunks: &[&[u8]]) -> Vec<u8> {
        let mut rewriter = Rewriter::new();
        let mut out = Vec::new();
        for chunk in chunks {
            rewriter.push(chunk, &mut out).unwrap();
        }
        rewriter.finish(&mut out);
        out
    }

    fn authorities(bytes: &[u8]) -> Vec<Vec<u8>> {
        let (blocks, _) = read_as_server(bytes).unwrap();
        blocks
            .iter()
            .map(|b| {
                b.fields
                    .iter()
                    .find(|(n, _)| n == b":authority")
                    .unwrap()
                    .1
                    .clone()
            })
            .collect()
    }

    /// A string literal Huffman-coded, as grpc-core and grpc-js send most of theirs.
    fn huffman(s: &[u8]) -> Vec<u8> {
        let mut coded = Vec::new();
        httlib_huffman::encode(s, &mut coded).unwrap();
        let mut out = Vec::new();
        loona_hpack::encoder::encode_integer_into(coded.len(), 7, 0x80, &mut out).unwrap();
        out.extend(coded);
        out
    }

    /// Two requests whose strings are all Huffman-coded: the first adds `authority` and a
    /// custom field to the table, the second refers to both by index.
    fn huffman_client(authority: &[u8]) -> Vec<u8> {
        let mut first = vec![0x83, 0x86, 0x44]; // POST, http, :path (static name) indexed
        first.extend(huffman(b"/grpc.health.v1.Health/Check"));
        first.push(0x41); // :authority (static name), added to the table
        first.extend(huffman(authority));
        first.push(0x40); // a new name, added to the table
        first.extend(huffman(b"x-client"));
        first.extend(huffman(b"python grpc 1.85"));
        first.push(0x00); // a new name, not indexed
        first.extend(huffman(b"grpc-timeout"));
        first.extend(huffman(b"29999m"));
        // :path is entry 64, :authority 63, x-client 62.
        let second = [0x83, 0x86, 0x80 | 64, 0x80 | 63, 0x80 | 62];
        let mut bytes = PREFACE.to_vec();
        bytes.extend(frame(0x4, 0, 0, &[]));
        for (stream, block) in [(1, &first[..]), (3, &second[..])] {
            bytes.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, stream, block));
            bytes.extend(frame(0x0, FLAG_END_STREAM, stream, b"\0\0\0\0\0"));
        }
        bytes
    }

    #[test]
    fn huffman_coded_blocks_are_read_like_plain_ones() {
        let input = huffman_client(b"localhost");
        assert_eq!(
            rewrite(&[&input]),
            input,
            "a valid authority changes nothing"
        );

        let input = huffman_client(PATH);
        let out = rewrite(&[&input]);
        assert_eq!(authorities(&out), vec![b"localhost".to_vec(); 2]);
        let (want, _) = read_as_server(&input).unwrap();
        let (got, _) = read_as_server(&out).unwrap();
        for (w, g) in want.iter().zip(&got) {
            let others = |b: &DecodedBlock| {
                b.fields
                    .iter()
                    .filter(|(n, _)| n != b":authority")
                    .cloned()
                    .collect::<Vec<_>>()
            };
            assert_eq!(others(w), others(g));
        }
        assert_eq!(got[1].fields.len(), 5, "{:?}", got[1].fields);
    }

    #[test]
    fn valid_authorities_pass_byte_for_byte() {
        let input = client(&[b"localhost", b"localhost", b"example.com:50051"]);
        assert_eq!(rewrite(&[&input]), input);
    }

    #[test]
    fn socket_paths_become_localhost_in_every_block_and_the_rest_stays() {
        for bad in [PATH, ENCODED] {
            let input = client(&[bad, bad, b"localhost", bad]);
            assert!(!valid_authority(bad));
            let out = rewrite(&[&input]);
            assert_eq!(authorities(&out), vec![b"localhost".to_vec(); 4]);
            let (want, want_other) = read_as_server(&input).unwrap();
            let (got, got_other) = read_as_server(&out).unwrap();
            assert_eq!(want_other, got_other, "non-header frames change");
            for (w, g) in want.iter().zip(&got) {
                let strip = |b: &DecodedBlock| {
                    b.fields
                        .iter()
                        .filter(|(n, _)| n != b":authority")
                        .cloned()
                        .collect::<Vec<_>>()
                };
                assert_eq!(strip(w), strip(g));
                assert_eq!((w.stream, w.end_stream), (g.stream, g.end_stream));
            }
        }
    }

    #[test]
    fn a_good_block_after_a_rewrite_is_reencoded_too() {
        // The second block indexes the first's entries: it must reach the server decodable.
        let input = client(&[PATH, b"localhost"]);
        let out = rewrite(&[&input]);
        let (blocks, _) = read_as_server(&out).unwrap();
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[1].fields.len(), 7);
    }

    #[test]
    fn the_output_does_not_depend_on_how_the_input_is_split() {
        let input = client(&[PATH, ENCODED, b"localhost"]);
        let whole = rewrite(&[&input]);
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(rewrite(&bytes), whole);
        let sevens: Vec<&[u8]> = input.chunks(7).collect();
        assert_eq!(rewrite(&sevens), whole);
    }

    #[test]
    fn padding_priority_and_continuation_are_read() {
        let mut encoder = loona_hpack::Encoder::new();
        let fields = request(PATH);
        let block = encoder.encode(fields.iter().map(|(n, v)| (*n, &v[..])));
        let (a, b) = block.split_at(10);
        let mut payload = vec![3u8];
        payload.extend_from_slice(&[0, 0, 0, 0, 16]);
        payload.extend_from_slice(a);
        payload.extend_from_slice(&[0, 0, 0]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(
            TYPE_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            1,
            &payload,
        ));
        input.extend(frame(TYPE_CONTINUATION, FLAG_END_HEADERS, 1, b));
        let out = rewrite(&[&input]);
        let (blocks, _) = read_as_server(&out).unwrap();
        assert_eq!(authorities(&out), vec![b"localhost".to_vec()]);
        assert!(blocks[0].end_stream);
        // The priority fields travel on.
        assert_eq!(&out[24 + 9..24 + 14], &[0, 0, 0, 0, 16]);
        assert_eq!(out[24 + 4] & FLAG_PRIORITY, FLAG_PRIORITY);
    }

    #[test]
    fn a_block_larger_than_a_frame_is_split_into_continuations() {
        let long = vec![b'x'; 40_000];
        let mut encoder = loona_hpack::Encoder::new();
        let mut fields = request(PATH);
        fields.push((b"x-long", long.clone()));
        let block = encoder.encode(fields.iter().map(|(n, v)| (*n, &v[..])));
        let mut input = PREFACE.to_vec();
        for (i, chunk) in block.chunks(16_000).enumerate() {
            let last = (i + 1) * 16_000 >= block.len();
            let kind = if i == 0 {
                TYPE_HEADERS
            } else {
                TYPE_CONTINUATION
            };
            let flags = if last { FLAG_END_HEADERS } else { 0 };
            input.extend(frame(kind, flags, 1, chunk));
        }
        let out = rewrite(&[&input]);
        let (blocks, _) = read_as_server(&out).unwrap();
        assert_eq!(blocks[0].fields.last().unwrap().1, long);
        assert_eq!(authorities(&out), vec![b"localhost".to_vec()]);
    }

    #[test]
    fn table_size_updates_are_kept_and_the_server_table_is_emptied() {
        let mut encoder = loona_hpack::Encoder::new();
        let fields = request(PATH);
        let mut block = vec![0x3f, 0xe1, 0x0f]; // a size update to 2048
        block.extend(encoder.encode(fields.iter().map(|(n, v)| (*n, &v[..]))));
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &block));
        let out = rewrite(&[&input]);
        let fragment = &out[24 + 9..];
        assert_eq!(&fragment[..4], &[0x20, 0x3f, 0xe1, 0x0f]);
        assert_eq!(authorities(&out), vec![b"localhost".to_vec()]);
    }

    #[test]
    fn what_it_does_not_understand_passes_unchanged() {
        // Not HTTP/2 at all.
        let input = b"GET / HTTP/1.1\r\nHost: /x\r\n\r\n".to_vec();
        assert_eq!(rewrite(&[&input]), input);
        // A header block that does not decode (an index past the tables).
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f]));
        input.extend(client(&[PATH])[24..].to_vec());
        assert_eq!(rewrite(&[&input]), input);
        // A frame where a CONTINUATION is due.
        let mut input = PREFACE.to_vec();
        input.extend(frame(TYPE_HEADERS, 0, 1, &[0x82]));
        input.extend(frame(0x0, 0, 1, b"x"));
        assert_eq!(rewrite(&[&input]), input);
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_closed_after_the_preface_timeout() {
        use tokio::io::AsyncReadExt as _;
        let (client, server) = tokio::io::duplex(64);
        let mut fixed = AuthorityFix::new(server);
        let mut buf = [0u8; 8];
        let err = fixed.read(&mut buf).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_sent_its_preface_is_not_timed_out() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let (mut client, server) = tokio::io::duplex(64);
        let mut fixed = AuthorityFix::new(server);
        client.write_all(PREFACE).await.unwrap();
        let mut buf = [0u8; 24];
        fixed.read_exact(&mut buf).await.unwrap();
        let read = tokio::spawn(async move {
            let mut settings = [0u8; FRAME_HEADER];
            fixed.read_exact(&mut settings).await.map(|_| settings)
        });
        tokio::time::sleep(PREFACE_TIMEOUT * 3).await;
        let settings = frame(0x4, 0, 0, &[]);
        client.write_all(&settings).await.unwrap();
        assert_eq!(read.await.unwrap().unwrap()[..], settings[..]);
    }
}
