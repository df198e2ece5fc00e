//! Why a configuration was refused, and where: the error type and the
//! placing of a refused key in its file (a second, span-keeping parse).

use std::path::{Path, PathBuf};

/// Why a configuration was refused. The message names the file (when the
/// configuration came from one), the line (TOML's own errors give line and
/// column; a refused value gives the line of its key when the file has it),
/// the key path as written in the file (`upstream[1].connect_timeout_ms`)
/// and the reason. It carries its cause and has no `source()`: it prints
/// whole, once.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}: {cause}", path.display())]
    Read {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("{}: {}", path.display(), cause.to_string().trim_end())]
    Parse {
        path: PathBuf,
        cause: Box<toml::de::Error>,
    },
    #[error("{}{key}: {reason}", Place(file.as_deref(), *line))]
    Invalid {
        key: String,
        reason: String,
        /// The file the value came from, when known.
        file: Option<PathBuf>,
        /// 1-based line of the key in `file`, when it is there.
        line: Option<usize>,
    },
}

/// `file:line: `, `file: ` or nothing.
struct Place<'a>(Option<&'a Path>, Option<usize>);

impl std::fmt::Display for Place<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place(Some(file), Some(line)) => write!(f, "{}:{line}: ", file.display()),
            Place(Some(file), None) => write!(f, "{}: ", file.display()),
            Place(None, _) => Ok(()),
        }
    }
}

impl ConfigError {
    /// The same error, placed in `path`: a refused value gets the file and,
    /// if `text` (the file's content) has its key, the line.
    pub fn in_file(self, path: &Path, text: Option<&str>) -> Self {
        match self {
            Self::Invalid {
                key,
                reason,
                file: None,
                ..
            } => Self::Invalid {
                line: text.and_then(|t| line_of_key(t, &key)),
                key,
                reason,
                file: Some(path.to_owned()),
            },
            Self::Parse { cause, .. } => Self::Parse {
                path: path.to_owned(),
                cause,
            },
            other => other,
        }
    }
}

pub(super) fn with_reason_prefix(e: ConfigError, prefix: &str) -> ConfigError {
    match e {
        ConfigError::Invalid {
            key,
            reason,
            file,
            line,
        } => ConfigError::Invalid {
            key,
            reason: format!("{prefix}{reason}"),
            file,
            line,
        },
        other => other,
    }
}

pub(super) fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
        file: None,
        line: None,
    }
}

/// The 1-based line where `key` (a path as [`ConfigError::Invalid`] names
/// it: `a.b`, `a[2].b`) is written in `text`; for a key that is not written
/// (a default), the line of the nearest enclosing table that is. A second,
/// span-keeping parse: serde's typed parse forgets where values were.
pub(super) fn line_of_key(text: &str, key: &str) -> Option<usize> {
    use toml::de::{DeTable, DeValue};
    let doc = DeTable::parse(text).ok()?;
    let mut table = doc.get_ref();
    let mut found: Option<std::ops::Range<usize>> = None;
    'path: for segment in key.split('.') {
        let (name, index) = match segment.split_once('[') {
            Some((name, rest)) => (name, rest.strip_suffix(']')?.parse::<usize>().ok()),
            None => (segment, None),
        };
        let Some((k, v)) = table.iter().find(|(k, _)| k.get_ref() == name) else {
            break;
        };
        found = Some(k.span());
        let mut value = v;
        if let Some(i) = index {
            let DeValue::Array(items) = value.get_ref() else {
                break;
            };
            let Some(item) = items.get(i) else { break };
            // An array-of-tables entry's span starts at its header, a
            // plain array item's at the item.
            found = Some(item.span());
            value = item;
        }
        match value.get_ref() {
            DeValue::Table(t) => table = t,
            _ => break 'path,
        }
    }
    let start = found?.start;
    Some(text.get(..start)?.matches('\n').count() + 1)
}
