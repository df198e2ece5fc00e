//! The wrapper's command-line surface ([`Args`], as `mcpgw wrapper` parses it) and its
//! validation into [`Options`]: the URL (plain `http://` only), the extra headers, the
//! bearer token read from its file, the per-request timeout.
//!
//! Everything that can be wrong with the invocation is refused here, before stdin is
//! read, with an error naming the flag.

use std::path::PathBuf;
use std::time::Duration;

use hyper::Uri;
use hyper::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue};

use crate::headers::MANAGED;

/// `mcpgw wrapper` as typed on the command line.
#[derive(Debug, Clone)]
pub struct Args {
    /// The Streamable HTTP MCP endpoint, e.g. `http://127.0.0.1:8080/mcp`.
    pub url: String,
    /// `Name: Value` headers sent with every request (`--header`, repeatable).
    pub headers: Vec<String>,
    /// File holding a bearer token, sent as `Authorization: Bearer <token>`.
    pub bearer_token_file: Option<PathBuf>,
    /// Bound on each request, in seconds.
    pub timeout_secs: f64,
    /// Start a new session (replaying the client's `initialize`) when the server loses ours.
    pub reinitialize: bool,
}

/// How long to wait for in-flight requests once stdin is closed.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// Bound on the closing `DELETE`.
const DELETE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on opening a TCP connection to the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Validated options.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) uri: Uri,
    /// `--header`s and `Authorization`, sent with every request.
    pub(crate) headers: HeaderMap,
    pub(crate) timeout: Duration,
    pub(crate) reinitialize: bool,
    pub(crate) shutdown_grace: Duration,
    pub(crate) delete_timeout: Duration,
    pub(crate) connect_timeout: Duration,
}

/// A flag that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("--url {url:?} is not a valid URL: {cause}")]
    Url {
        url: String,
        cause: hyper::http::uri::InvalidUri,
    },
    #[error("--url {url:?} must be an absolute http:// or https:// URL with a host")]
    NotHttp { url: String },
    #[error("--header {header:?} must look like 'Name: Value'")]
    HeaderSyntax { header: String },
    #[error("--header {header:?}: invalid header name or value")]
    HeaderInvalid { header: String },
    #[error("--header {header:?}: the wrapper sets {name} itself")]
    HeaderManaged { header: String, name: String },
    #[error("--bearer-token-file {path:?} cannot be read: {cause}")]
    TokenFile {
        path: PathBuf,
        cause: std::io::Error,
    },
    #[error("--bearer-token-file {path:?} is empty or holds characters not allowed in a header")]
    TokenInvalid { path: PathBuf },
    #[error("--bearer-token-file and --header 'Authorization: ...' cannot both be given")]
    AuthorizationTwice,
    #[error("--timeout {secs} must be a positive number of seconds")]
    Timeout { secs: f64 },
}

impl Options {
    pub(crate) fn from_args(args: &Args) -> Result<Self, OptionsError> {
        let uri = parse_url(&args.url)?;
        let mut headers = HeaderMap::new();
        for raw in &args.headers {
            let (name, value) = parse_header(raw)?;
            headers.append(name, value);
        }
        if let Some(path) = &args.bearer_token_file {
            if headers.contains_key(AUTHORIZATION) {
                return Err(OptionsError::AuthorizationTwice);
            }
            let text = std::fs::read_to_string(path).map_err(|cause| OptionsError::TokenFile {
                path: path.clone(),
                cause,
            })?;
            let token = text.trim();
            let mut value = HeaderValue::from_str(&format!("Bearer {token}"))
                .ok()
                .filter(|_| !token.is_empty())
                .ok_or_else(|| OptionsError::TokenInvalid { path: path.clone() })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
        }
        let timeout = Duration::try_from_secs_f64(args.timeout_secs)
            .ok()
            .filter(|t| !t.is_zero())
            .ok_or(OptionsError::Timeout {
                secs: args.timeout_secs,
            })?;
        Ok(Self {
            uri,
            headers,
            timeout,
            reinitialize: args.reinitialize,
            shutdown_grace: SHUTDOWN_GRACE,
            delete_timeout: DELETE_TIMEOUT,
            connect_timeout: CONNECT_TIMEOUT,
        })
    }
}

fn parse_url(url: &str) -> Result<Uri, OptionsError> {
    let uri: Uri = url.parse().map_err(|cause| OptionsError::Url {
        url: url.to_owned(),
        cause,
    })?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        _ => {
            return Err(OptionsError::NotHttp {
                url: url.to_owned(),
            });
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(OptionsError::NotHttp {
            url: url.to_owned(),
        });
    }
    Ok(uri)
}

fn parse_header(raw: &str) -> Result<(HeaderName, HeaderValue), OptionsError> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| OptionsError::HeaderSyntax {
            header: raw.to_owned(),
        })?;
    let name = name.trim();
    let invalid = || OptionsError::HeaderInvalid {
        header: raw.to_owned(),
    };
    let name = HeaderName::from_bytes(name.as_bytes()).map_err(|_| invalid())?;
    if MANAGED.contains(&name.as_str()) {
        return Err(OptionsError::HeaderManaged {
            header: raw.to_owned(),
            name: name.as_str().to_owned(),
        });
    }
    let mut value = HeaderValue::from_str(value.trim()).map_err(|_| invalid())?;
    if name == AUTHORIZATION {
        value.set_sensitive(true);
    }
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(url: &str) -> Args {
        Args {
            url: url.to_owned(),
            headers: Vec::new(),
            bearer_token_file: None,
            timeout_secs: 300.0,
            reinitialize: false,
        }
    }

    #[test]
    fn accepts_http_and_https_and_refuses_others() {
        assert!(Options::from_args(&args("http://127.0.0.1:8080/mcp")).is_ok());
        assert!(Options::from_args(&args("https://example.com/mcp")).is_ok());
        for bad in ["ftp://x/y", "/mcp", "127.0.0.1:8080"] {
            assert!(Options::from_args(&args(bad)).is_err(), "{bad}");
        }
        assert!(matches!(
            Options::from_args(&args("http://a b")),
            Err(OptionsError::Url { .. })
        ));
    }

    #[test]
    fn headers_are_parsed_trimmed_and_repeatable() {
        let mut a = args("http://h/mcp");
        a.headers = vec![
            "X-One:  1 ".into(),
            "x-one: 2".into(),
            "X-Api-Key: k:v".into(),
        ];
        let o = Options::from_args(&a).expect("valid");
        let ones: Vec<_> = o.headers.get_all("x-one").iter().collect();
        assert_eq!(ones, ["1", "2"]);
        assert_eq!(o.headers["x-api-key"], "k:v");
    }

    #[test]
    fn bad_and_managed_headers_are_refused() {
        for (h, managed) in [
            ("NoColon", false),
            ("Bad Name: x", false),
            ("Mcp-Session-Id: x", true),
            ("Accept: */*", true),
        ] {
            let mut a = args("http://h/mcp");
            a.headers = vec![h.into()];
            let e = Options::from_args(&a).expect_err(h);
            assert_eq!(
                matches!(e, OptionsError::HeaderManaged { .. }),
                managed,
                "{h}: {e}"
            );
        }
    }

    #[test]
    fn bearer_token_is_read_and_trimmed() {
        let path = std::env::temp_dir().join(format!("mcpgw-wrapper-token-{}", std::process::id()));
        std::fs::write(&path, "  s3cret\n").expect("write token");
        let mut a = args("http://h/mcp");
        a.bearer_token_file = Some(path.clone());
        let o = Options::from_args(&a);
        std::fs::write(&path, " \n").expect("write token");
        let empty = Options::from_args(&a);
        a.headers = vec!["Authorization: Basic x".into()];
        let twice = Options::from_args(&a);
        let _ = std::fs::remove_file(&path);
        assert_eq!(o.expect("valid").headers[AUTHORIZATION], "Bearer s3cret");
        assert!(matches!(empty, Err(OptionsError::TokenInvalid { .. })));
        assert!(matches!(twice, Err(OptionsError::AuthorizationTwice)));
        a.bearer_token_file = Some(PathBuf::from("/nonexistent/mcpgw-token"));
        a.headers.clear();
        assert!(matches!(
            Options::from_args(&a),
            Err(OptionsError::TokenFile { .. })
        ));
    }

    #[test]
    fn timeout_must_be_positive() {
        for secs in [0.0, -1.0, f64::NAN, f64::INFINITY] {
            let mut a = args("http://h/mcp");
            a.timeout_secs = secs;
            assert!(Options::from_args(&a).is_err(), "{secs}");
        }
        let mut a = args("http://h/mcp");
        a.timeout_secs = 0.25;
        assert_eq!(
            Options::from_args(&a).expect("valid").timeout,
            Duration::from_millis(250)
        );
    }
}
