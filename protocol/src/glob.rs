//! Glob patterns over names and URIs, as the authorization rules of an
//! endpoint write them (`[[endpoint.authz]]` `tools`, `prompts`,
//! `resources`): `*` matches any run of characters (`/` included, and
//! none), `?` exactly one character, `\` makes the next character literal
//! (`\*`, `\?`, `\\`: URIs may hold a `?`). Everything else matches itself,
//! case-sensitively.
//!
//! A pattern is compiled once, when the configuration is loaded, into runs
//! of literal text and wildcards; matching walks the text once with the
//! classic backtrack-to-the-last-star method: no allocation, at most
//! O(pattern × text) steps, never exponential. Written here rather than
//! taken from a crate: the syntax is two wildcards and an escape, and the
//! crates that offer it (`glob`, `globset`) bring path semantics (`/`
//! special, character classes, `**`) that tool names and URIs do not have.

use std::fmt;

/// One piece of a compiled pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    /// Text that must appear as it is.
    Literal(Box<str>),
    /// `?`: one character.
    One,
    /// `*`: any run of characters.
    Any,
}

/// A compiled glob pattern.
#[derive(Clone, PartialEq, Eq)]
pub struct Glob {
    pieces: Box<[Piece]>,
    /// As written, for messages and logs.
    source: Box<str>,
}

/// Why a pattern was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    #[error("an empty pattern matches no name")]
    Empty,
    #[error("{0:?} ends with a lone \\ (write \\\\ for a backslash)")]
    TrailingEscape(String),
}

impl Glob {
    /// Compile `pattern`.
    pub fn new(pattern: &str) -> Result<Self, GlobError> {
        if pattern.is_empty() {
            return Err(GlobError::Empty);
        }
        let mut pieces = Vec::new();
        let mut literal = String::new();
        let mut chars = pattern.chars();
        while let Some(c) = chars.next() {
            let wildcard = match c {
                '\\' => {
                    let Some(escaped) = chars.next() else {
                        return Err(GlobError::TrailingEscape(pattern.to_owned()));
                    };
                    literal.push(escaped);
                    continue;
                }
                '?' => Piece::One,
                // `**` is `*`: one piece is enough.
                '*' if pieces.last() == Some(&Piece::Any) && literal.is_empty() => continue,
                '*' => Piece::Any,
                other => {
                    literal.push(other);
                    continue;
                }
            };
            if !literal.is_empty() {
                pieces.push(Piece::Literal(
                    std::mem::take(&mut literal).into_boxed_str(),
                ));
            }
            pieces.push(wildcard);
        }
        if !literal.is_empty() {
            pieces.push(Piece::Literal(literal.into_boxed_str()));
        }
        Ok(Self {
            pieces: pieces.into_boxed_slice(),
            source: Box::from(pattern),
        })
    }

    /// The pattern as written.
    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// Whether `text` matches the whole pattern.
    pub fn matches(&self, text: &str) -> bool {
        let pieces = &self.pieces;
        let (mut p, mut t) = (0usize, 0usize);
        // After the last `*` seen: the piece after it, and where in the
        // text it was last tried from.
        let mut star: Option<(usize, usize)> = None;
        while t < text.len() {
            match pieces.get(p) {
                Some(Piece::Any) => {
                    star = Some((p + 1, t));
                    p += 1;
                    continue;
                }
                Some(Piece::One) => {
                    t += char_len_at(text, t);
                    p += 1;
                    continue;
                }
                Some(Piece::Literal(l)) if text.get(t..).is_some_and(|r| r.starts_with(&**l)) => {
                    t += l.len();
                    p += 1;
                    continue;
                }
                _ => {}
            }
            // A mismatch: let the last `*` take one more character.
            let Some((after, from)) = star else {
                return false;
            };
            let next = from + char_len_at(text, from);
            star = Some((after, next));
            p = after;
            t = next;
        }
        pieces
            .get(p..)
            .is_some_and(|rest| rest.iter().all(|x| *x == Piece::Any))
    }

    /// Whether some text that starts with `prefix` matches: can the pattern
    /// name anything under `prefix` (an upstream's namespace)?
    pub fn may_match_under(&self, prefix: &str) -> bool {
        fn from(pieces: &[Piece], prefix: &str) -> bool {
            if prefix.is_empty() {
                // Whatever is left of the pattern matches some text.
                return true;
            }
            match pieces.split_first() {
                None => false,
                Some((Piece::Any, _)) => true,
                Some((Piece::One, rest)) => from(rest, &prefix[char_len_at(prefix, 0)..]),
                Some((Piece::Literal(l), rest)) => {
                    if let Some(after) = prefix.strip_prefix(&**l) {
                        from(rest, after)
                    } else {
                        // The prefix ends inside the literal.
                        l.starts_with(prefix)
                    }
                }
            }
        }
        from(&self.pieces, prefix)
    }
}

/// Bytes of the character that starts at `at` (1 past the end: never 0,
/// so a walk always advances).
fn char_len_at(text: &str, at: usize) -> usize {
    text.get(at..)
        .and_then(|r| r.chars().next())
        .map_or(1, char::len_utf8)
}

impl fmt::Debug for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Glob({:?})", self.source)
    }
}

impl fmt::Display for Glob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, text: &str) -> bool {
        Glob::new(pattern).expect("pattern").matches(text)
    }

    #[test]
    fn literals_match_whole_names_only() {
        assert!(m("crm__list", "crm__list"));
        assert!(!m("crm__list", "crm__list2"));
        assert!(!m("crm__list", "crm__lis"));
        assert!(!m("crm__list", "CRM__list"));
    }

    #[test]
    fn stars_take_any_run_including_none_and_slashes() {
        assert!(m("crm__delete_*", "crm__delete_"));
        assert!(m("crm__delete_*", "crm__delete_user"));
        assert!(!m("crm__delete_*", "crm__list"));
        assert!(m("*", ""));
        assert!(m("*", "anything/at all"));
        assert!(m("file:///secret/*", "file:///secret/a/b/c.txt"));
        assert!(!m("file:///secret/*", "file:///public/secret/x"));
        assert!(m("*__delete_*", "docs__delete_page"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("*aa", "aaa"));
        assert!(m("**x", "yyx"));
        assert!(m("a*", "a"));
        assert!(!m("a*b", "a"));
    }

    #[test]
    fn question_marks_take_one_character_even_multibyte() {
        assert!(m("v?", "v1"));
        assert!(!m("v?", "v"));
        assert!(!m("v?", "v12"));
        assert!(m("caf?", "café"));
        assert!(m("?*", "é"));
        assert!(!m("??", "é"));
    }

    #[test]
    fn escapes_make_wildcards_literal() {
        assert!(m(r"file:///x\?y=*", "file:///x?y=1"));
        assert!(!m(r"file:///x\?y=*", "file:///xzy=1"));
        assert!(m(r"a\*", "a*"));
        assert!(!m(r"a\*", "ab"));
        assert!(m(r"a\\b", r"a\b"));
        assert_eq!(Glob::new("").err(), Some(GlobError::Empty));
        assert!(matches!(
            Glob::new(r"ab\"),
            Err(GlobError::TrailingEscape(_))
        ));
    }

    #[test]
    fn long_texts_do_not_blow_up() {
        let text = "a".repeat(10_000);
        assert!(!m("*a*a*a*a*a*b", &text));
        assert!(m("*a*a*a*a*a*", &text));
    }

    #[test]
    fn prefixes_say_whether_a_namespace_can_match() {
        let g = |p: &str| Glob::new(p).expect("pattern");
        assert!(g("crm__delete_*").may_match_under("crm__"));
        assert!(!g("crm__delete_*").may_match_under("docs__"));
        assert!(!g("delete_*").may_match_under("crm__"));
        assert!(g("*delete*").may_match_under("crm__"));
        assert!(g("cr?__x").may_match_under("crm__"));
        assert!(g("c").may_match_under(""));
        assert!(g("crm").may_match_under("cr"));
        assert!(!g("crm").may_match_under("crm__"));
    }
}
