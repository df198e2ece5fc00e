//! Endpoints ("virtual servers") and how several upstreams appear as one.
//!
//! An endpoint with one upstream is transparent: names, cursors and results
//! pass unchanged. With several, tool and prompt names are namespaced as
//! `{upstream id}{separator}{name}` (separator from config, `__` by default),
//! lists are fetched from every upstream concurrently and merged, an upstream
//! that fails drops out of the list with a warning, and pagination uses a
//! gateway cursor that records, per upstream, the upstream's own cursor.
//! Resource URIs are not rewritten; `resources/read` is routed by the URI →
//! upstream map learned from `resources/list`, falling back to asking every
//! upstream.
//!
//! Cache hints (2026-07-28 `ttlMs`/`cacheScope`): a merged page carries them
//! only when every upstream's part did and none was left out: the smallest
//! ttl, and `private` if any part is. Otherwise it carries none, and a
//! stateless client is told not to cache it (`ttlMs` 0, `private`).

use std::borrow::Cow;
use std::fmt::Write;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::time::Instant;
use tracing::{debug, warn};

use http::Response;
use http_body_util::BodyExt;

use crate::authz::{Counted, Kind};
use crate::endpoints::Endpoint;
use crate::http::body::Body;
use crate::jsonrpc::{self, Answer, RawObject};
use crate::route::call::passthrough;
use crate::route::env::Env;
use crate::route::reply::{Accept, rpc};
use crate::route::source::Source;
use crate::upstream::UpstreamServer;

/// The four list methods and what differs between them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ListKind {
    Tools,
    Prompts,
    Resources,
    ResourceTemplates,
}

impl ListKind {
    pub(crate) fn from_method(m: &str) -> Option<Self> {
        Some(match m {
            "tools/list" => Self::Tools,
            "prompts/list" => Self::Prompts,
            "resources/list" => Self::Resources,
            "resources/templates/list" => Self::ResourceTemplates,
            _ => return None,
        })
    }

    fn method(self) -> &'static str {
        match self {
            Self::Tools => "tools/list",
            Self::Prompts => "prompts/list",
            Self::Resources => "resources/list",
            Self::ResourceTemplates => "resources/templates/list",
        }
    }

    fn items_key(self) -> &'static str {
        match self {
            Self::Tools => "tools",
            Self::Prompts => "prompts",
            Self::Resources => "resources",
            Self::ResourceTemplates => "resourceTemplates",
        }
    }

    fn renames(self) -> bool {
        matches!(self, Self::Tools | Self::Prompts)
    }

    /// What authorization rules match its items on.
    fn authz_kind(self) -> Kind {
        match self {
            Self::Tools => Kind::Tool,
            Self::Prompts => Kind::Prompt,
            Self::Resources | Self::ResourceTemplates => Kind::Resource,
        }
    }
}

/// Whether the caller may see a listed item (`raw`, as the client gets it).
/// An item without the member rules match on is kept: the rules cannot
/// name it, and the client cannot call it by name either.
fn visible(ctx: Env<'_>, endpoint: &Endpoint, kind: ListKind, raw: &str) -> bool {
    let Some(rules) = &endpoint.authz else {
        return true;
    };
    /// The members rules match on, borrowed from the item (copied only
    /// when escaped); every other member is skipped, not kept.
    #[derive(Deserialize)]
    struct Keys<'a> {
        #[serde(borrow, default)]
        name: Option<Cow<'a, str>>,
        #[serde(borrow, default)]
        uri: Option<Cow<'a, str>>,
        #[serde(rename = "uriTemplate", borrow, default)]
        uri_template: Option<Cow<'a, str>>,
    }
    let Ok(keys) = serde_json::from_str::<Keys<'_>>(raw) else {
        return true;
    };
    let key = match kind {
        ListKind::Tools | ListKind::Prompts => keys.name,
        ListKind::Resources => keys.uri,
        ListKind::ResourceTemplates => keys.uri_template,
    };
    key.is_none_or(|key| rules.decide(kind.authz_kind(), &key, ctx.caller).allowed)
}

/// A list on an endpoint with one upstream and authorization rules: the
/// upstream's answer (read whole), its items filtered for the caller, the
/// rest of it (cursor, cache hints, `_meta`) as it was. The upstream's own
/// errors pass unchanged.
pub(crate) async fn filtered_list<S: Source>(
    ctx: Env<'_>,
    src: &S,
    kind: ListKind,
    body: bytes::Bytes,
    id: &str,
    accept: Accept,
    progress: bool,
) -> Response<Body> {
    let endpoint = src.endpoint();
    let whole = Accept {
        json: true,
        sse: false,
    };
    let resp = passthrough(ctx, src, &endpoint.upstreams[0], body, id, whole, progress).await;
    let status = resp.status();
    let message = match resp.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => {
            warn!(session = %src.who(), error = %e, "list answer could not be read");
            return ctx.rpc_error(
                accept,
                id,
                jsonrpc::INTERNAL_ERROR,
                "the upstream answer could not be read",
            );
        }
    };
    if kind == ListKind::Tools
        && let Some(Answer::Result(result)) = jsonrpc::answer(&message)
    {
        endpoint.upstreams[0].tool_params.learn(result.get());
    }
    let filtered = filter_answer(ctx, &endpoint, kind, &message).unwrap_or(message);
    rpc(accept, status, filtered)
}

/// `message` (a JSON-RPC result of a list) without the items the caller
/// may not see; `None` when it is not such a result or nothing is hidden.
fn filter_answer(
    ctx: Env<'_>,
    endpoint: &Endpoint,
    kind: ListKind,
    message: &[u8],
) -> Option<bytes::Bytes> {
    let Some(Answer::Result(result)) = jsonrpc::answer(message) else {
        return None;
    };
    let obj: RawObject<'_> = serde_json::from_str(result.get()).ok()?;
    let items: Vec<&RawValue> = serde_json::from_str(obj.get(kind.items_key())?.get()).ok()?;
    let mut kept = String::with_capacity(result.get().len());
    kept.push('[');
    let mut hidden = 0u64;
    for item in &items {
        if !visible(ctx, endpoint, kind, item.get()) {
            hidden += 1;
            continue;
        }
        if kept.len() > 1 {
            kept.push(',');
        }
        kept.push_str(item.get());
    }
    kept.push(']');
    if let Some(rules) = &endpoint.authz {
        rules.count(ctx.metrics, kind.authz_kind(), Counted::Hidden, hidden);
    }
    if hidden == 0 {
        return None;
    }
    let new_result = jsonrpc::with_member(result.get(), kind.items_key(), &kept)?;
    let id = jsonrpc::response_kind(message, false).map_or("null", |(id, _)| id);
    Some(jsonrpc::result(id, &new_result))
}

/// Why a merged list could not be produced.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ListError {
    #[error("invalid cursor")]
    BadCursor,
}

/// One page of a list over every upstream of a multi-upstream endpoint.
/// Returns the raw `result` object.
pub(crate) async fn merged_list<S: Source>(
    ctx: Env<'_>,
    src: &S,
    kind: ListKind,
    cursor: Option<&str>,
) -> Result<String, ListError> {
    let endpoint = src.endpoint();
    let n = endpoint.upstreams.len();
    let wanted: Vec<(usize, Option<String>)> = match cursor {
        None => (0..n).map(|pos| (pos, None)).collect(),
        Some(c) => decode_cursor(c, n).ok_or(ListError::BadCursor)?,
    };
    // Concurrently, within this request: an abandoned request stops asking.
    let fetches = wanted.iter().map(|(pos, upstream_cursor)| {
        let server = &endpoint.upstreams[*pos];
        async move {
            let page = fetch_page(src, server, kind, upstream_cursor.as_deref()).await;
            page.map(|page| (*pos, page))
        }
    });
    let mut pages: Vec<(usize, Page)> = futures_util::future::join_all(fetches)
        .await
        .into_iter()
        .flatten()
        .collect();
    // Deterministic order: by upstream position, as configured.
    pages.sort_by_key(|(pos, _)| *pos);

    let mut out = String::with_capacity(pages.iter().map(|(_, p)| p.bytes).sum::<usize>() + 64);
    out.push('{');
    jsonrpc::push_json_string(&mut out, kind.items_key());
    out.push_str(":[");
    let mut first = true;
    let mut routes: Vec<(String, Arc<str>)> = Vec::new();
    let mut listed: std::collections::HashSet<String> = std::collections::HashSet::new();
    let mut next = Vec::new();
    let mut hidden = 0u64;
    for (pos, page) in &pages {
        for item in &page.items {
            let before = routes.len();
            let rendered = render_item(&endpoint, *pos, kind, item.get(), &mut routes);
            if !visible(ctx, &endpoint, kind, &rendered) {
                hidden += 1;
                routes.truncate(before);
                continue;
            }
            // One URI, one upstream: the first upstream (in configured
            // order) that lists a URI owns it; the same URI from a later one
            // is left out of the merged list.
            if let Some((uri, id)) = routes.get(before)
                && !listed.insert(uri.clone())
            {
                warn!(upstream = %id, uri = %uri, "resource URI already listed by an earlier upstream of this endpoint; left out");
                routes.truncate(before);
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            out.push_str(&rendered);
        }
        if let Some(c) = &page.next_cursor {
            next.push((*pos, c.clone()));
        }
    }
    out.push(']');
    if let Some(rules) = &endpoint.authz {
        rules.count(ctx.metrics, kind.authz_kind(), Counted::Hidden, hidden);
    }
    if pages.len() == wanted.len()
        && let Some((ttl, public)) = pages
            .iter()
            .map(|(_, p)| p.cache)
            .try_fold((u64::MAX, true), |(ttl, public), part| {
                part.map(|(t, p)| (ttl.min(t), public && p))
            })
        && !pages.is_empty()
    {
        let _ = write!(
            out,
            ",\"ttlMs\":{ttl},\"cacheScope\":\"{}\"",
            if public { "public" } else { "private" }
        );
    }
    if !next.is_empty() {
        out.push_str(",\"nextCursor\":");
        jsonrpc::push_json_string(&mut out, &encode_cursor(&next));
    }
    out.push('}');
    if !routes.is_empty()
        && let Ok(mut map) = src.relay().resource_routes.lock()
    {
        let position = |id: &str| endpoint.upstreams.iter().position(|u| &*u.id == id);
        for (uri, id) in routes {
            // Across pages too, the earlier upstream keeps a URI.
            match map.get(&uri) {
                Some(owner) if position(owner).is_some_and(|o| Some(o) < position(&id)) => {}
                _ => {
                    map.insert(uri, id);
                }
            }
        }
    }
    Ok(out)
}

fn render_item<'i>(
    endpoint: &Endpoint,
    pos: usize,
    kind: ListKind,
    raw: &'i str,
    routes: &mut Vec<(String, Arc<str>)>,
) -> Cow<'i, str> {
    #[derive(Deserialize)]
    struct Named<'a> {
        #[serde(borrow)]
        name: Cow<'a, str>,
    }
    #[derive(Deserialize)]
    struct WithUri<'a> {
        #[serde(borrow)]
        uri: Cow<'a, str>,
    }
    if kind == ListKind::Resources
        && let Ok(r) = serde_json::from_str::<WithUri<'_>>(raw)
    {
        routes.push((r.uri.into_owned(), endpoint.upstreams[pos].id.clone()));
    }
    if !kind.renames() {
        return Cow::Borrowed(raw);
    }
    let Ok(named) = serde_json::from_str::<Named<'_>>(raw) else {
        return Cow::Borrowed(raw);
    };
    let public = jsonrpc::json_string(&endpoint.public_name(pos, &named.name));
    jsonrpc::with_member(raw, "name", &public).map_or(Cow::Borrowed(raw), Cow::Owned)
}

struct Page {
    /// Keeps the raw items' backing text alive.
    items: Vec<Box<RawValue>>,
    next_cursor: Option<String>,
    /// The upstream's cache hints: its `ttlMs`, and whether its
    /// `cacheScope` is `public` (anything else counts as private).
    cache: Option<(u64, bool)>,
    bytes: usize,
}

/// One page from one upstream; `None` (with a log line) when it fails.
async fn fetch_page<S: Source>(
    src: &S,
    server: &Arc<UpstreamServer>,
    kind: ListKind,
    cursor: Option<&str>,
) -> Option<Page> {
    #[derive(Deserialize)]
    struct ListResult {
        #[serde(rename = "nextCursor", default)]
        next_cursor: Option<String>,
        #[serde(rename = "ttlMs", default)]
        ttl_ms: Option<u64>,
        #[serde(rename = "cacheScope", default)]
        cache_scope: Option<String>,
    }
    let params = cursor.map(|c| {
        let mut p = String::from("{\"cursor\":");
        jsonrpc::push_json_string(&mut p, c);
        p.push('}');
        p
    });
    let deadline = Instant::now() + server.request_timeout();
    let us = match src.upstream(server).await {
        Ok(us) => us,
        Err(e) => {
            warn!(session = %src.who(), upstream = %server.id, error = %e, method = kind.method(), "upstream left out of the list");
            return None;
        }
    };
    let answer = match us.call(kind.method(), params.as_deref(), deadline).await {
        Ok(a) => a,
        Err(e) => {
            if e.evicts() {
                src.evict(&us, &e).await;
            }
            warn!(session = %src.who(), upstream = %server.id, error = %e, method = kind.method(), "upstream left out of the list");
            return None;
        }
    };
    let result = match jsonrpc::answer(&answer) {
        Some(Answer::Result(r)) => r,
        Some(Answer::Error { code, message }) => {
            // A server without this capability answers -32601: not a failure.
            if code == i64::from(jsonrpc::METHOD_NOT_FOUND) {
                debug!(upstream = %server.id, method = kind.method(), "upstream does not implement it");
            } else {
                warn!(upstream = %server.id, code, %message, method = kind.method(), "upstream list failed; left out");
            }
            return None;
        }
        None => {
            warn!(upstream = %server.id, method = kind.method(), "upstream list answer is not JSON-RPC; left out");
            return None;
        }
    };
    if kind == ListKind::Tools {
        server.tool_params.learn(result.get());
    }
    let obj: RawObject<'_> = serde_json::from_str(result.get()).ok()?;
    let items: Vec<Box<RawValue>> = obj
        .get(kind.items_key())
        .and_then(|raw| serde_json::from_str(raw.get()).ok())
        .unwrap_or_default();
    let (next_cursor, cache) = serde_json::from_str::<ListResult>(result.get())
        .map(|r| {
            let public = r.cache_scope.as_deref() == Some("public");
            (r.next_cursor, r.ttl_ms.map(|ttl| (ttl, public)))
        })
        .unwrap_or_default();
    Some(Page {
        bytes: result.get().len(),
        items,
        next_cursor,
        cache,
    })
}

/// Gateway cursor: hex of a JSON array of `[position, upstream cursor]`.
fn encode_cursor(parts: &[(usize, String)]) -> String {
    let json = serde_json::to_string(parts).unwrap_or_default();
    let mut hex = String::with_capacity(json.len() * 2);
    for b in json.bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

fn decode_cursor(cursor: &str, upstreams: usize) -> Option<Vec<(usize, Option<String>)>> {
    if !cursor.len().is_multiple_of(2) || cursor.len() > 64 * 1024 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..cursor.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(cursor.get(i..i + 2)?, 16).ok())
        .collect();
    let parts: Vec<(usize, String)> = serde_json::from_slice(&bytes?).ok()?;
    if parts.is_empty() || parts.iter().any(|(pos, _)| *pos >= upstreams) {
        return None;
    }
    Some(parts.into_iter().map(|(p, c)| (p, Some(c))).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgw_protocol::config::Upstream;

    fn endpoint(ids: &[&str]) -> Endpoint {
        Endpoint {
            path: "/mcp".into(),
            upstreams: ids
                .iter()
                .map(|id| {
                    Arc::new(
                        UpstreamServer::new(
                            &Upstream {
                                connect_timeout_ms: 1,
                                request_timeout_ms: 1,
                                ..Upstream::http(id, "http://127.0.0.1:1/mcp")
                            },
                            None,
                        )
                        .expect("server"),
                    )
                })
                .collect(),
            separator: "__".into(),
            authz: None,
            limiter: None,
        }
    }

    #[tokio::test]
    async fn names_resolve_by_prefix_only_when_namespaced() {
        assert_eq!(endpoint(&[]).resolve("x"), None);
        let one = endpoint(&["a"]);
        assert_eq!(one.resolve("a__x"), Some((0, "a__x")));
        let two = endpoint(&["a", "a_b"]);
        assert_eq!(two.resolve("a__x"), Some((0, "x")));
        assert_eq!(two.resolve("a_b__x"), Some((1, "x")));
        assert_eq!(two.resolve("c__x"), None);
        assert_eq!(two.resolve("x"), None);
    }

    #[tokio::test]
    async fn items_are_renamed_and_resources_recorded() {
        let two = endpoint(&["a", "b"]);
        let mut routes = Vec::new();
        let tool = render_item(
            &two,
            1,
            ListKind::Tools,
            r#"{"name":"inc","inputSchema":{"type":"object"}}"#,
            &mut routes,
        );
        assert_eq!(tool, r#"{"name":"b__inc","inputSchema":{"type":"object"}}"#);
        let res = render_item(
            &two,
            0,
            ListKind::Resources,
            r#"{"uri":"x://1","name":"one"}"#,
            &mut routes,
        );
        assert_eq!(res, r#"{"uri":"x://1","name":"one"}"#);
        assert_eq!(routes, vec![("x://1".to_owned(), Arc::from("a"))]);
    }

    #[tokio::test]
    async fn lists_are_filtered_for_the_caller_and_the_rest_kept() {
        use mcpgw_protocol::config::{AuthzRule, Effect, Endpoint as Configured, When};
        let mut one = endpoint(&["a"]);
        one.authz = crate::authz::Rules::compile(&Configured {
            path: "/mcp".into(),
            upstreams: vec!["a".into()],
            auth_audience: None,
            auth_required_scopes: None,
            authz_default: Effect::Allow,
            authz: vec![AuthzRule {
                effect: Effect::Deny,
                tools: Some(vec!["del*".into()]),
                resources: Some(vec!["x://secret/*".into()]),
                when: Some(When {
                    groups: Some(vec!["contractors".into()]),
                    ..When::default()
                }),
                ..AuthzRule::default()
            }],
            rate_limit: None,
        });
        let metrics = crate::metrics::Metrics::new().expect("metrics");
        let outcome = crate::metrics::OutcomeSlot::new();
        let contractor = crate::authz::Claims {
            sub: "bob".into(),
            groups: Box::from([Box::from("contractors")]),
            ..crate::authz::Claims::default()
        };
        let ctx = Env {
            metrics: &metrics,
            outcome: &outcome,
            tool_call: false,
            learns_tools: false,
            notes_route: false,
            caller: Some(&contractor),
        };
        let tools = br#"{"jsonrpc":"2.0","id":"q1","result":{"tools":[{"name":"delete","x":1},{"name":"list"},{"name":"delete_all"}],"nextCursor":"c2"}}"#;
        let filtered = filter_answer(ctx, &one, ListKind::Tools, tools).expect("filtered");
        assert_eq!(
            std::str::from_utf8(&filtered).expect("utf8"),
            r#"{"jsonrpc":"2.0","id":"q1","result":{"tools":[{"name":"list"}],"nextCursor":"c2"}}"#
        );
        let resources = br#"{"jsonrpc":"2.0","id":2,"result":{"resources":[{"uri":"x://open"}]}}"#;
        assert!(
            filter_answer(ctx, &one, ListKind::Resources, resources).is_none(),
            "nothing hidden"
        );
        let templates = br#"{"jsonrpc":"2.0","id":2,"result":{"resourceTemplates":[{"uriTemplate":"x://secret/{id}"},{"uriTemplate":"x://open/{id}"}]}}"#;
        let filtered =
            filter_answer(ctx, &one, ListKind::ResourceTemplates, templates).expect("filtered");
        assert!(
            !std::str::from_utf8(&filtered)
                .expect("utf8")
                .contains("secret")
        );
        let error = br#"{"jsonrpc":"2.0","id":2,"error":{"code":-32601,"message":"no"}}"#;
        assert!(filter_answer(ctx, &one, ListKind::Tools, error).is_none());
        // Someone else sees everything.
        let ctx = Env {
            caller: None,
            ..ctx
        };
        assert!(filter_answer(ctx, &one, ListKind::Tools, tools).is_none());
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let parts = vec![(0, "p2".to_owned()), (2, "\"q\"".to_owned())];
        let c = encode_cursor(&parts);
        assert_eq!(
            decode_cursor(&c, 3),
            Some(vec![
                (0, Some("p2".to_owned())),
                (2, Some("\"q\"".to_owned()))
            ])
        );
        assert_eq!(decode_cursor(&c, 2), None);
        assert_eq!(decode_cursor("zz", 3), None);
        assert_eq!(decode_cursor("abc", 3), None);
        assert_eq!(decode_cursor(&encode_cursor(&[]), 3), None);
    }
}
