//! Entry points of the fuzz targets in `fuzz/` (the `fuzzing` feature; the
//! gateway's own build never has this module): the config loader, and the
//! session-id validator with the routing that takes its ids. Each asserts
//! what must hold of the result. Not an API: hidden, and free to change.

use std::path::Path;

use crate::config::{Config, ConfigError};
use crate::routing::{self, RouteTable, RouteUpdate};
use crate::secrets::Resolver;
use crate::session_id::{self, InvalidSessionId, SessionId};

/// `${…}` references resolved without the environment or the file system
/// (a fuzzer must not read files): a variable is its name in lower case,
/// a file is unreadable.
struct Fixed;

impl Resolver for Fixed {
    fn var(&self, name: &str) -> Result<String, String> {
        Ok(name.to_ascii_lowercase())
    }

    fn file(&self, path: &Path) -> Result<String, String> {
        Err(format!("${{file:{}}}: not read here", path.display()))
    }
}

/// The config loader (`Config::parse`: TOML, references, validation):
/// an error places itself on a line of the text; an accepted configuration
/// written back as TOML (as written, references unresolved) loads again
/// to the same configuration.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let config = match Config::parse_with(text, &Fixed) {
        Ok(config) => config,
        Err(e) => {
            let placed = e.in_file(Path::new("fuzz.toml"), Some(text));
            let message = placed.to_string();
            assert!(message.starts_with("fuzz.toml"), "{message}");
            if let ConfigError::Invalid {
                line: Some(line), ..
            } = placed
            {
                assert!(
                    line >= 1 && line <= text.lines().count().max(1),
                    "line {line}"
                );
            }
            return;
        }
    };
    let written = match toml::to_string(config.as_written()) {
        Ok(written) => written,
        Err(e) => panic!("an accepted configuration cannot be written back: {e}"),
    };
    match Config::parse_with(&written, &Fixed) {
        Ok(again) => assert_eq!(again, config, "written back as\n{written}"),
        Err(e) => panic!("an accepted configuration written back is refused: {e}\n{written}"),
    }
}

/// Session ids and routing. The validator accepts exactly the ids of the
/// format (26 characters of `a-z2-7`) and every id minting can make (the
/// first 16 bytes, as the 128 random bits); routing sends an id to a slot
/// in range, and a route table under any update to a slot it has, live
/// when one is.
pub fn session_id(data: &[u8]) {
    let in_format = data.len() == session_id::LEN
        && data
            .iter()
            .all(|b| b.is_ascii_lowercase() || (b'2'..=b'7').contains(b));
    match SessionId::parse(data) {
        Ok(id) => {
            assert!(in_format, "accepted {data:?}");
            assert_eq!(id.as_bytes(), data);
            assert_eq!(id.as_str().as_bytes(), data);
        }
        Err(InvalidSessionId::Length(n)) => assert!(n == data.len() && n != session_id::LEN),
        Err(InvalidSessionId::Alphabet) => assert!(!in_format && data.len() == session_id::LEN),
    }
    let Some((raw, rest)) = data.split_first_chunk::<16>() else {
        return;
    };
    let minted = SessionId::from_random(*raw);
    assert_eq!(
        SessionId::parse(minted.as_bytes()),
        Ok(minted),
        "a minted id is refused"
    );
    // The slot count and a route update from the rest.
    let slots = rest
        .first_chunk::<2>()
        .map_or(1, |b| u16::from_le_bytes(*b) % 300);
    let slot = routing::slot_for(&minted, slots);
    assert!(slot < slots.max(1), "slot {slot} of {slots}");
    let mut table = RouteTable::new(slots);
    let picks = rest.get(2..).unwrap_or_default();
    let update = RouteUpdate {
        reset: picks.first().is_some_and(|b| b & 1 == 1),
        slots: picks.get(1).map_or(0, |b| u16::from(*b) % 40),
        down: picks
            .iter()
            .skip(2)
            .step_by(2)
            .map(|b| u16::from(*b) % 48)
            .collect(),
        moved: vec![
            (
                minted.to_string(),
                picks.get(3).map_or(0, |b| u16::from(*b) % 48),
            ),
            (String::from_utf8_lossy(picks).into_owned(), 1),
        ],
        cleared: Vec::new(),
    };
    table.apply(&update);
    let owner = table.owner(&minted);
    assert!(owner < table.slots(), "owner {owner} of {}", table.slots());
    if !table.is_moved(&minted) && !table.down_slots().len().eq(&usize::from(table.slots())) {
        assert!(
            !table.is_down(owner),
            "a down slot owns an id while one is live"
        );
    }
    let mut copy = RouteTable::new(1);
    copy.apply(&table.snapshot());
    assert_eq!(copy.owner(&minted), owner, "a snapshot routes differently");
}
