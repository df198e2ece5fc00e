//! Values in MCP headers (2026-07-28): how text rides in a header
//! ([`encode`], [`decode`]: plain when it is visible ASCII without
//! surrounding blanks, else `=?base64?<UTF-8, base64>?=`), and the
//! `Mcp-Param-{Name}` headers a tool's `x-mcp-header` annotations ask for
//! ([`Bindings`]): which arguments a `tools/call` mirrors into headers, what
//! each header must say, and the check that headers and body agree.
//!
//! A tool's annotations come from its `inputSchema`: a property (at any
//! depth of `properties`) with `"x-mcp-header": "Region"` is mirrored as
//! `Mcp-Param-Region`. A present scalar argument must be in its header (a
//! string as it is, an integer or number in decimal, a boolean as
//! `true`/`false`); an absent or `null` one must not be. A schema whose
//! annotations break the revision's rules (a name that is no HTTP token, two
//! names equal but for case, an annotation on a non-scalar property) gives
//! no bindings: clients drop such tools, so nothing is mirrored for them.

use std::borrow::Cow;

use base64::Engine as _;
use http::HeaderValue;
use serde_json::Value;

/// The prefix of a parameter header's name.
pub const PARAM_PREFIX: &str = "mcp-param-";
const BASE64_PREFIX: &str = "=?base64?";
const BASE64_SUFFIX: &str = "?=";
/// The schema annotation that asks for a header.
const ANNOTATION: &str = "x-mcp-header";

/// `text` as a header value.
pub fn encode(text: &str) -> HeaderValue {
    let plain = !text.is_empty()
        && text.bytes().all(|b| (0x20..0x7f).contains(&b))
        && !text.starts_with(' ')
        && !text.ends_with(' ')
        && !text.starts_with(BASE64_PREFIX);
    if plain && let Ok(v) = HeaderValue::from_str(text) {
        return v;
    }
    let encoded = base64::engine::general_purpose::STANDARD.encode(text.as_bytes());
    // Base64 and the sentinel are visible ASCII: always a valid value.
    HeaderValue::from_str(&format!("{BASE64_PREFIX}{encoded}{BASE64_SUFFIX}"))
        .unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// A header value as text: plain visible ASCII, or UTF-8 in the base64
/// form; `None` when it is neither.
pub fn decode(raw: &[u8]) -> Option<Cow<'_, str>> {
    if let Some(inner) = raw
        .strip_prefix(BASE64_PREFIX.as_bytes())
        .and_then(|r| r.strip_suffix(BASE64_SUFFIX.as_bytes()))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .ok()?;
        return String::from_utf8(bytes).ok().map(Cow::Owned);
    }
    std::str::from_utf8(raw).ok().map(Cow::Borrowed)
}

/// One annotated argument: its header's name (after `Mcp-Param-`, as the
/// schema writes it) and where the argument is in `arguments`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Binding {
    pub header: Box<str>,
    pub path: Box<[Box<str>]>,
}

impl Binding {
    /// The full header name, lowercase.
    pub fn header_name(&self) -> String {
        let mut name = String::with_capacity(PARAM_PREFIX.len() + self.header.len());
        name.push_str(PARAM_PREFIX);
        name.extend(self.header.chars().map(|c| c.to_ascii_lowercase()));
        name
    }

    /// What the header must say for `arguments`: `None` when the argument
    /// is absent or `null` (no header then).
    pub fn value_in(&self, arguments: &Value) -> Option<String> {
        let mut at = arguments;
        for key in &self.path {
            at = at.get(&**key)?;
        }
        match at {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            Value::Bool(b) => Some(b.to_string()),
            Value::Null | Value::Array(_) | Value::Object(_) => None,
        }
    }
}

/// A tool's parameter headers.
pub type Bindings = Vec<Binding>;

/// The bindings a tool's `inputSchema` asks for; `Err` says why the
/// annotations are invalid.
pub fn bindings(input_schema: &Value) -> Result<Bindings, String> {
    let mut out = Vec::new();
    walk(input_schema, &mut Vec::new(), &mut out)?;
    for (i, a) in out.iter().enumerate() {
        if out[..i]
            .iter()
            .any(|b| b.header.eq_ignore_ascii_case(&a.header))
        {
            return Err(format!("{ANNOTATION} {:?} is given twice", a.header));
        }
    }
    Ok(out)
}

fn walk(schema: &Value, path: &mut Vec<Box<str>>, out: &mut Bindings) -> Result<(), String> {
    let Some(properties) = schema.get("properties").and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, property) in properties {
        path.push(key.as_str().into());
        if let Some(annotation) = property.get(ANNOTATION) {
            let header = annotation
                .as_str()
                .filter(|h| is_token(h))
                .ok_or_else(|| format!("{ANNOTATION} of {key:?} is not an HTTP token"))?;
            let scalar = matches!(
                property.get("type").and_then(Value::as_str),
                Some("string" | "integer" | "number" | "boolean")
            );
            if !scalar {
                return Err(format!("{ANNOTATION} on {key:?}, which is not a scalar"));
            }
            out.push(Binding {
                header: header.into(),
                path: path.clone().into_boxed_slice(),
            });
        }
        walk(property, path, out)?;
        path.pop();
    }
    Ok(())
}

/// RFC 9110 `token` (1*tchar).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Tools of a `tools/list` result (raw JSON) that have parameter headers,
/// by name; a tool whose annotations are invalid has none. A result that
/// mentions no annotation is not parsed.
pub fn tools_with_bindings(result: &str) -> Vec<(String, Bindings)> {
    if !result.contains(ANNOTATION) {
        return Vec::new();
    }
    let Ok(Value::Object(result)) = serde_json::from_str::<Value>(result) else {
        return Vec::new();
    };
    let Some(Value::Array(tools)) = result.get("tools") else {
        return Vec::new();
    };
    tools
        .iter()
        .filter_map(|tool| {
            let name = tool.get("name")?.as_str()?;
            let found = bindings(tool.get("inputSchema")?).ok()?;
            (!found.is_empty()).then(|| (name.to_owned(), found))
        })
        .collect()
}

/// Checks that the parameter headers of a request (`header` looks one up
/// by its lowercase name) say what `arguments` say; `Err` names the first
/// disagreement.
pub fn check<'h>(
    bindings: &[Binding],
    arguments: &Value,
    header: impl Fn(&str) -> Option<&'h [u8]>,
) -> Result<(), String> {
    for b in bindings {
        let name = b.header_name();
        match (b.value_in(arguments), header(&name)) {
            (None, None) => {}
            (Some(_), None) => return Err(format!("the {name} header is missing")),
            (None, Some(_)) => {
                return Err(format!(
                    "the {name} header is given but the argument is not"
                ));
            }
            (Some(expected), Some(raw)) => {
                if decode(raw).as_deref() != Some(expected.as_str()) {
                    return Err(format!(
                        "the {name} header does not say what the argument says"
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn values_round_trip_plain_or_in_base64() {
        for text in [
            "eu-west-1",
            "héllo",
            " padded",
            "=?base64?x?=",
            "a\r\nX-Evil: 1",
        ] {
            let v = encode(text);
            assert_eq!(decode(v.as_bytes()).as_deref(), Some(text), "{text:?}");
        }
        assert_eq!(encode("plain"), "plain");
        assert_eq!(encode("héllo"), "=?base64?aMOpbGxv?=");
        assert_eq!(decode(b"=?base64?!!?="), None);
    }

    #[test]
    fn annotations_at_any_depth_become_bindings() {
        let schema = json!({"type": "object", "properties": {
            "region": {"type": "string", "x-mcp-header": "Region"},
            "opts": {"type": "object", "properties": {
                "dry": {"type": "boolean", "x-mcp-header": "Dry-Run"}}},
            "n": {"type": "integer"}}});
        let found = bindings(&schema).expect("valid");
        assert_eq!(found.len(), 2);
        let args = json!({"region": "eu", "opts": {"dry": true}, "n": 3});
        let by_name = |n: &str| found.iter().find(|b| &*b.header == n).expect(n);
        assert_eq!(by_name("Region").value_in(&args).as_deref(), Some("eu"));
        assert_eq!(by_name("Dry-Run").value_in(&args).as_deref(), Some("true"));
        assert_eq!(by_name("Dry-Run").header_name(), "mcp-param-dry-run");
        assert_eq!(by_name("Region").value_in(&json!({"region": null})), None);

        for bad in [
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "A B"}}}),
            json!({"properties": {"a": {"type": "object", "x-mcp-header": "A"}}}),
            json!({"properties": {"a": {"type": "string", "x-mcp-header": "X"},
                                  "b": {"type": "string", "x-mcp-header": "x"}}}),
        ] {
            assert!(bindings(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_must_say_what_the_body_says() {
        let schema =
            json!({"properties": {"region": {"type": "string", "x-mcp-header": "Region"}}});
        let b = bindings(&schema).expect("valid");
        let args = json!({"region": "héllo"});
        let good = encode("héllo");
        assert!(
            check(&b, &args, |n| (n == "mcp-param-region")
                .then_some(good.as_bytes()))
            .is_ok()
        );
        assert!(check(&b, &args, |_| None).is_err(), "missing");
        assert!(
            check(&b, &args, |_| Some(&b"other"[..])).is_err(),
            "different"
        );
        assert!(
            check(&b, &json!({}), |_| Some(&b"x"[..])).is_err(),
            "no argument"
        );
        assert!(check(&b, &json!({}), |_| None).is_ok());
    }

    #[test]
    fn only_annotated_tools_are_listed() {
        let result = r#"{"tools":[{"name":"a","inputSchema":{"properties":{"r":{"type":"string","x-mcp-header":"R"}}}},
            {"name":"b","inputSchema":{"properties":{}}},
            {"name":"c","inputSchema":{"properties":{"r":{"type":"array","x-mcp-header":"R"}}}}]}"#;
        let found = tools_with_bindings(result);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "a");
        assert!(tools_with_bindings(r#"{"tools":[]}"#).is_empty());
    }
}
