//! Hiding secrets in configuration values before they are shown: in the
//! admin API's `/admin/config` and in configuration errors (which go to
//! stderr and the journal, often readable by more people than the file).
//! Text functions only; which values to pass through them is the caller's
//! choice.

/// What a hidden value is replaced with.
pub const REDACTED: &str = "<redacted>";

/// `url` with its user info (`user:password@`) and every query value
/// replaced by [`REDACTED`]. Scheme, host, port, path and query keys stay,
/// so that the operator can still tell which URL it is.
///
/// Works on text that is not a valid URL too (it is used on values being
/// refused): user info is everything up to the last `@` before the query,
/// so a password with an unescaped `/` or `#` is still hidden whole.
pub fn url(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (Some(scheme), rest),
        None => (None, url),
    };
    let (before_query, query) = match rest.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (rest, None),
    };
    let mut out = String::with_capacity(url.len());
    if let Some(scheme) = scheme {
        out.push_str(scheme);
        out.push_str("://");
    }
    match before_query.rsplit_once('@') {
        Some((_, host_and_path)) => {
            out.push_str(REDACTED);
            out.push('@');
            out.push_str(host_and_path);
        }
        None => out.push_str(before_query),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) => format!("{key}={REDACTED}"),
                None if pair.is_empty() => String::new(),
                // A bare value may be a token by itself.
                None => REDACTED.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_info_and_query_values_are_hidden() {
        assert_eq!(
            url("http://127.0.0.1:3000/mcp?api_key=s3cret&v=2"),
            "http://127.0.0.1:3000/mcp?api_key=<redacted>&v=<redacted>"
        );
        assert_eq!(
            url("http://user:s3cret@host:80/mcp"),
            "http://<redacted>@host:80/mcp"
        );
        assert_eq!(
            url("redis://:hunter2@10.0.0.1:6379/0"),
            "redis://<redacted>@10.0.0.1:6379/0"
        );
        assert_eq!(
            url("unix:///run/redis.sock?db=1&pass=hunter2"),
            "unix:///run/redis.sock?db=<redacted>&pass=<redacted>"
        );
        assert_eq!(url("http://h/?tok3n"), "http://h/?<redacted>");
        // A password with an unescaped '/' is hidden whole.
        assert_eq!(url("http://u:pa/ss@host/"), "http://<redacted>@host/");
        assert_eq!(url("ftp:u:p@x"), "<redacted>@x");
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for plain in [
            "http://127.0.0.1:3000/mcp",
            "redis://10.0.0.1:6379/0",
            "",
            "x",
        ] {
            assert_eq!(url(plain), plain);
        }
    }
}
