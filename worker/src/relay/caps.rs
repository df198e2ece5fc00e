//! What the client declared it can do at `initialize`, and which
//! server→client requests that allows.

use serde::Deserialize;
use serde_json::value::RawValue;

/// What the client declared it can do at `initialize`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ClientCaps {
    pub sampling: bool,
    /// Form-mode elicitation (also what an empty `elicitation: {}` means,
    /// as before modes existed).
    pub elicitation_form: bool,
    /// URL-mode elicitation (2025-11-25).
    pub elicitation_url: bool,
    pub roots: bool,
}

impl ClientCaps {
    /// From the client's raw `initialize` params; anything unreadable
    /// declares nothing.
    pub(crate) fn from_init_params(raw: &str) -> Self {
        #[derive(Deserialize, Default)]
        struct Caps<'a> {
            #[serde(borrow, default)]
            sampling: Option<&'a RawValue>,
            #[serde(borrow, default)]
            elicitation: Option<&'a RawValue>,
            #[serde(borrow, default)]
            roots: Option<&'a RawValue>,
        }
        #[derive(Deserialize)]
        struct Params<'a> {
            #[serde(borrow, default)]
            capabilities: Option<Caps<'a>>,
        }
        #[derive(Deserialize, Default)]
        struct Modes<'a> {
            #[serde(borrow, default)]
            form: Option<&'a RawValue>,
            #[serde(borrow, default)]
            url: Option<&'a RawValue>,
        }
        let declared = |v: Option<&RawValue>| v.is_some_and(|v| v.get() != "null");
        let Ok(Params {
            capabilities: Some(c),
        }) = serde_json::from_str::<Params<'_>>(raw)
        else {
            return Self::default();
        };
        let (elicitation_form, elicitation_url) = match c.elicitation {
            Some(e) if declared(Some(e)) => {
                let modes: Modes<'_> = serde_json::from_str(e.get()).unwrap_or_default();
                let (form, url) = (declared(modes.form), declared(modes.url));
                (form || !url, url)
            }
            _ => (false, false),
        };
        Self {
            sampling: declared(c.sampling),
            elicitation_form,
            elicitation_url,
            roots: declared(c.roots),
        }
    }

    /// Whether a server→client request could be put to the client at all
    /// (it declared sampling, elicitation or roots).
    pub(crate) fn can_be_asked(&self) -> bool {
        self.sampling || self.elicitation_form || self.elicitation_url || self.roots
    }

    /// The capability a server→client request needs, when the client lacks
    /// it.
    pub(crate) fn missing_for(
        &self,
        method: &str,
        params: Option<&RawValue>,
    ) -> Option<&'static str> {
        #[derive(Deserialize)]
        struct Elicit<'a> {
            #[serde(borrow, default)]
            mode: Option<std::borrow::Cow<'a, str>>,
        }
        match method {
            "sampling/createMessage" if !self.sampling => Some("sampling"),
            "roots/list" if !self.roots => Some("roots"),
            "elicitation/create" => {
                let url = params
                    .and_then(|p| serde_json::from_str::<Elicit<'_>>(p.get()).ok())
                    .and_then(|e| e.mode)
                    .is_some_and(|m| m == "url");
                match url {
                    true if !self.elicitation_url => Some("elicitation (url mode)"),
                    false if !self.elicitation_form => Some("elicitation (form mode)"),
                    _ => None,
                }
            }
            _ => None,
        }
    }
}
