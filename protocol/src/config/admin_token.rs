//! The admin API's bearer token, read from `admin_token_file`.

use std::path::Path;

/// The admin API's bearer token: the trimmed content of a token file.
/// `Debug` does not show it, so it cannot end up in a log by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct AdminToken(String);

impl std::fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

impl AdminToken {
    /// The token in `path`; the error names the file and what is wrong.
    pub fn read(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let token = text.trim();
        if token.is_empty() {
            return Err(format!("{} is empty", path.display()));
        }
        // It goes into (and is compared with) one header value.
        if token.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!(
                "{} must hold one token of printable ASCII without spaces",
                path.display()
            ));
        }
        Ok(Self(token.to_owned()))
    }

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}
