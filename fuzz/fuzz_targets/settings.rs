//! The settings file (`bus::config::Settings`, `config.toml`), which the CLI and busd read and
//! `bus config set` writes.
//!
//! Properties: a file that parses writes back to text that parses to the same settings; any
//! value `bus config set` stores comes back unchanged after a write and a read (nothing is
//! lost on the way to disk); a refusal is one line.

#![no_main]

use arbitrary::Arbitrary;
use bus::config::{Key, Settings};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input {
    text: String,
    sets: Vec<(u8, Option<String>)>,
}

fuzz_target!(|input: Input| {
    let mut settings = match Settings::parse(&input.text) {
        Ok(settings) => {
            let again = Settings::parse(&settings.to_text());
            assert_eq!(again.as_ref(), Ok(&settings), "{:?}", settings.to_text());
            settings
        }
        Err(message) => {
            assert!(!message.is_empty());
            Settings::default()
        }
    };
    for (key, value) in input.sets {
        let key = Key::ALL[usize::from(key) % Key::ALL.len()];
        settings.set(key, value.as_deref());
        let text = settings.to_text();
        let read = Settings::parse(&text).unwrap_or_else(|e| panic!("{text:?}: {e}"));
        assert_eq!(read.get(key), value.as_deref(), "{text:?}");
        assert_eq!(read, settings);
    }
});
