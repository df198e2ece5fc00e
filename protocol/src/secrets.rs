//! `${…}` references in the configuration values that carry credentials, so
//! that the secrets themselves can stay out of the file.
//!
//! In upstream `url`, `headers` values, `args` and `env` values, in
//! `store.redis_url` and `store.sentinel_password`, and in
//! `tracing.otlp_endpoint` and `tracing.headers` values:
//!
//! - `${NAME}` is the environment variable `NAME` (`[A-Za-z_][A-Za-z0-9_]*`);
//! - `${file:/absolute/path}` is that file's content, trailing whitespace
//!   (the final newline) removed: systemd credentials (`LoadCredential=`,
//!   read at `/run/credentials/<unit>/<id>`) and mounted secrets alike;
//! - `$$` is one literal `$`; a `$` not followed by `{` or `$` is literal.
//!
//! A reference that cannot be resolved (variable unset, file unreadable) is
//! a configuration error naming the key and the variable or file, never a
//! value. References are resolved when the file is loaded, at start and on
//! every reload; the configuration as written is kept for display
//! (`/admin/config` shows the references, not what they resolved to).

use std::path::Path;

/// Where references are resolved from; a seam for tests.
pub(crate) trait Resolver {
    fn var(&self, name: &str) -> Result<String, String>;
    fn file(&self, path: &Path) -> Result<String, String>;
}

/// The process environment and the file system.
pub(crate) struct Process;

impl Resolver for Process {
    fn var(&self, name: &str) -> Result<String, String> {
        match std::env::var(name) {
            Ok(value) => Ok(value),
            Err(std::env::VarError::NotPresent) => {
                Err(format!("${{{name}}}: {name} is not set in the environment"))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(format!("${{{name}}}: the value of {name} is not UTF-8"))
            }
        }
    }

    fn file(&self, path: &Path) -> Result<String, String> {
        std::fs::read_to_string(path)
            .map(|text| text.trim_end().to_owned())
            .map_err(|e| format!("${{file:{}}}: cannot read it: {e}", path.display()))
    }
}

/// `text` with its references resolved; `None` when it has none (nothing to
/// copy). The error is the reason, for the caller to prefix with the key.
pub(crate) fn expand(text: &str, from: &dyn Resolver) -> Result<Option<String>, String> {
    if !text.contains('$') {
        return Ok(None);
    }
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(more) = after.strip_prefix('$') {
            out.push('$');
            rest = more;
        } else if let Some(inner) = after.strip_prefix('{') {
            let Some(end) = inner.find('}') else {
                return Err("\"${\" without its \"}\" (write $$ for a literal $)".to_owned());
            };
            let reference = &inner[..end];
            if let Some(path) = reference.strip_prefix("file:") {
                let path = Path::new(path);
                if !path.is_absolute() {
                    return Err(format!(
                        "${{file:{}}}: the path must be absolute",
                        path.display()
                    ));
                }
                out.push_str(&from.file(path)?);
            } else if is_variable_name(reference) {
                out.push_str(&from.var(reference)?);
            } else {
                return Err(format!(
                    "${{{reference}}} is neither ${{NAME}} (an environment variable) nor \
                     ${{file:/path}} (write $$ for a literal $)"
                ));
            }
            rest = &inner[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(Some(out))
}

fn is_variable_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_')
        && bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake;

    impl Resolver for Fake {
        fn var(&self, name: &str) -> Result<String, String> {
            match name {
                "TOKEN" => Ok("s3cret".to_owned()),
                _ => Err(format!("${{{name}}}: {name} is not set in the environment")),
            }
        }

        fn file(&self, path: &Path) -> Result<String, String> {
            if path == Path::new("/run/credentials/mcpgw.service/token") {
                Ok("fr0m-file".to_owned())
            } else {
                Err(format!("${{file:{}}}: cannot read it", path.display()))
            }
        }
    }

    fn ok(text: &str) -> Option<String> {
        expand(text, &Fake).expect("expands")
    }

    #[test]
    fn references_expand_and_literals_stay() {
        assert_eq!(ok("plain"), None);
        assert_eq!(ok("Bearer ${TOKEN}").as_deref(), Some("Bearer s3cret"));
        assert_eq!(
            ok("${file:/run/credentials/mcpgw.service/token}").as_deref(),
            Some("fr0m-file")
        );
        assert_eq!(ok("a$$b").as_deref(), Some("a$b"));
        assert_eq!(ok("$${TOKEN}").as_deref(), Some("${TOKEN}"));
        assert_eq!(ok("pa$word$").as_deref(), Some("pa$word$"));
        assert_eq!(
            ok("http://h/${TOKEN}/${TOKEN}").as_deref(),
            Some("http://h/s3cret/s3cret")
        );
    }

    #[test]
    fn errors_name_the_reference_never_a_value() {
        let e = expand("Bearer ${NOPE}", &Fake).expect_err("unset");
        assert_eq!(e, "${NOPE}: NOPE is not set in the environment");
        let e = expand("${file:relative/token}", &Fake).expect_err("relative");
        assert!(e.contains("must be absolute"), "{e}");
        let e = expand("${file:/missing}", &Fake).expect_err("missing");
        assert!(e.starts_with("${file:/missing}"), "{e}");
        let e = expand("x ${TOKEN", &Fake).expect_err("unclosed");
        assert!(e.contains("$$"), "{e}");
        let e = expand("${1x}", &Fake).expect_err("bad name");
        assert!(e.starts_with("${1x} is neither"), "{e}");
        // Expanding one reference and failing on the next shows neither.
        let e = expand("${TOKEN}${NOPE}", &Fake).expect_err("second unset");
        assert!(!e.contains("s3cret"), "{e}");
    }

    #[test]
    fn the_process_resolver_reads_files_trimmed() {
        let dir = std::env::temp_dir().join(format!("mcpgw-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("token");
        std::fs::write(&file, "t0ken\n").expect("write");
        let text = format!("Bearer ${{file:{}}}", file.display());
        assert_eq!(
            expand(&text, &Process).expect("reads").as_deref(),
            Some("Bearer t0ken")
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
