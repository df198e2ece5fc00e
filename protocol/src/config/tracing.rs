//! `[tracing]`: optional OTLP/HTTP export of one span per JSON-RPC request
//! and its upstream calls (the workers' `otel` module does the exporting).
//! Off while `otlp_endpoint` is unset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::ConfigError;
use super::error::{invalid, with_reason_prefix};

/// Where and how request spans are exported.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Tracing {
    /// An OTLP/HTTP collector, `http://` or `https://` (e.g.
    /// `http://127.0.0.1:4318`); traces are posted to its `/v1/traces`
    /// (a URL that already ends so is used as it is). Unset: no tracing,
    /// and nothing of it is set up.
    pub otlp_endpoint: Option<String>,
    /// `service.name` of the exported spans.
    pub service_name: String,
    /// The share of traces started here that are exported, 0.0 to 1.0.
    /// Parent-based: a request whose client's `traceparent` says sampled
    /// is exported, one that says not sampled is not, whatever the ratio.
    pub sample_ratio: f64,
    /// Extra HTTP headers on every export request (a collector's API key
    /// lives here: `${NAME}` and `${file:…}` references are resolved, and
    /// `/admin/config` redacts the values).
    pub headers: BTreeMap<String, String>,
}

impl Default for Tracing {
    fn default() -> Self {
        Self {
            otlp_endpoint: None,
            service_name: "mcpgw".to_owned(),
            sample_ratio: 1.0,
            headers: BTreeMap::new(),
        }
    }
}

impl Tracing {
    /// Whether spans are exported at all.
    pub fn is_on(&self) -> bool {
        self.otlp_endpoint.is_some()
    }

    /// The URL export requests go to: `otlp_endpoint` with `/v1/traces`
    /// appended, unless it ends so already. `None` when off.
    pub fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.as_deref()?;
        let base = base.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }

    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if let Some(url) = &self.otlp_endpoint {
            super::validate::check_upstream_url(url)
                .map_err(|reason| invalid("tracing.otlp_endpoint", reason))?;
            if url.contains('#') {
                return Err(invalid(
                    "tracing.otlp_endpoint",
                    format!("{:?} must not have a fragment", crate::redact::url(url)),
                ));
            }
        } else if !self.headers.is_empty() {
            return Err(invalid(
                "tracing.headers",
                "needs tracing.otlp_endpoint (headers go to the collector)",
            ));
        }
        if !(0.0..=1.0).contains(&self.sample_ratio) {
            return Err(invalid(
                "tracing.sample_ratio",
                format!(
                    "must be between 0.0 and 1.0 (a share of traces), got {}",
                    self.sample_ratio
                ),
            ));
        }
        if self.service_name.is_empty()
            || self.service_name.len() > 255
            || self.service_name.chars().any(char::is_control)
        {
            return Err(invalid(
                "tracing.service_name",
                "must be 1 to 255 characters, none of them control characters",
            ));
        }
        for (name, value) in &self.headers {
            let reason = if name.is_empty() || !name.bytes().all(is_token_byte) {
                "is not an HTTP header name"
            } else if !value
                .bytes()
                .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
            {
                // Never the value itself: it is likely a credential.
                "its value has control or non-ASCII characters"
            } else {
                continue;
            };
            return Err(with_reason_prefix(
                invalid("tracing.headers", reason),
                &format!("header {name:?}: "),
            ));
        }
        Ok(())
    }
}

/// RFC 9110 `tchar`.
fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}
