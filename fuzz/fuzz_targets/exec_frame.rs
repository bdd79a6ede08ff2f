//! The exec channel codec (`bus_api::exec::Frame`): what the runner and busd read from the
//! exec WebSocket.
//!
//! Properties: any message decodes or is refused with the right error; a decoded frame
//! encodes back to a message that decodes to the same frame (and, for data channels, to the
//! very same bytes); every frame a program can build survives encode then decode.

#![no_main]

use arbitrary::Arbitrary;
use bus_api::exec::{self, ExecStatus, Frame, FrameError, SignalFrame, TerminalSize};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
enum Input {
    /// A message off the wire.
    Message(Vec<u8>),
    /// A frame a sender builds.
    Built(Built),
}

#[derive(Arbitrary, Debug)]
enum Built {
    Stdin(Vec<u8>),
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Status {
        exit_code: Option<i32>,
        signal: Option<i32>,
        reason: String,
        message: Option<String>,
    },
    Resize(u16, u16),
    Signal(i32),
    CloseStdin,
}

impl From<Built> for Frame {
    fn from(b: Built) -> Frame {
        match b {
            Built::Stdin(d) => Frame::Stdin(d),
            Built::Stdout(d) => Frame::Stdout(d),
            Built::Stderr(d) => Frame::Stderr(d),
            Built::Status {
                exit_code,
                signal,
                reason,
                message,
            } => Frame::Status(ExecStatus {
                exit_code,
                signal,
                reason,
                message,
            }),
            Built::Resize(cols, rows) => Frame::Resize(TerminalSize { cols, rows }),
            Built::Signal(signal) => Frame::Signal(SignalFrame { signal }),
            Built::CloseStdin => Frame::CloseStdin,
        }
    }
}

fuzz_target!(|input: Input| match input {
    Input::Message(message) => match Frame::decode(&message) {
        Ok(frame) => {
            let encoded = frame.encode();
            assert_eq!(encoded[0], frame.channel());
            assert_eq!(encoded[0], message[0], "the channel byte is kept");
            assert_eq!(Frame::decode(&encoded).as_ref(), Ok(&frame));
            match &frame {
                Frame::Stdin(_) | Frame::Stdout(_) | Frame::Stderr(_) => {
                    assert_eq!(encoded, message, "data frames are carried byte for byte")
                }
                Frame::CloseStdin => {
                    assert!(message == [exec::CLOSE] || message == [exec::CLOSE, 0])
                }
                Frame::Status(_) | Frame::Resize(_) | Frame::Signal(_) => {}
            }
        }
        Err(err) => {
            assert!(!err.to_string().is_empty() && !err.to_string().contains('\n'));
            match err {
                FrameError::Empty => assert!(message.is_empty()),
                FrameError::UnknownChannel(c) => {
                    assert_eq!(c, message[0]);
                    assert!(![0, 1, 2, 3, 4, 5, 255].contains(&c));
                }
                FrameError::BadClose(rest) => {
                    assert_eq!(message[0], exec::CLOSE);
                    assert_eq!(rest, &message[1..]);
                }
                FrameError::BadJson { channel, .. } => {
                    assert!([exec::STATUS, exec::RESIZE, exec::SIGNAL].contains(&channel));
                    assert_eq!(channel, message[0]);
                }
            }
        }
    },
    Input::Built(built) => {
        let frame = Frame::from(built);
        let encoded = frame.encode();
        assert_eq!(Frame::decode(&encoded), Ok(frame));
    }
});
