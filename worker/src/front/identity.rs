//! Who an endpoint is to its clients, in either era: its capabilities,
//! `serverInfo` and instructions, made from what its upstreams said of
//! themselves when their sessions opened (the `initialize` answer of the
//! stateful era, the `server/discover` answer of the stateless one).

use std::sync::Arc;

use serde_json::{Map, Value};

use crate::endpoints::Endpoint;
use crate::upstream::UpstreamSession;

/// Capabilities the gateway relays for any upstream, offered when no
/// upstream could be asked: list changes, resource subscriptions, logging,
/// completions.
const GATEWAY_CAPABILITIES: &str = concat!(
    "{\"tools\":{\"listChanged\":true},\"prompts\":{\"listChanged\":true},",
    "\"resources\":{\"subscribe\":true,\"listChanged\":true},",
    "\"logging\":{},\"completions\":{}}"
);

/// Capability families the gateway serves on a federated endpoint (merged
/// lists, routing by name or URI, broadcast `logging/setLevel`).
const FEDERATED_CAPABILITIES: [&str; 5] =
    ["tools", "prompts", "resources", "logging", "completions"];

pub(crate) struct EndpointIdentity {
    pub(crate) capabilities: Value,
    pub(crate) server_info: Value,
    pub(crate) instructions: Option<String>,
}

impl EndpointIdentity {
    /// One upstream (transparent): its `serverInfo`, `instructions` and
    /// capabilities as it gave them. Several (federated): the gateway's
    /// `serverInfo`, the capability families any upstream has (each
    /// boolean flag set if any upstream sets it), and each upstream's
    /// instructions under its id. No upstream reached: the gateway's own.
    /// `opened` is in endpoint order, so federated instructions read the
    /// same each time.
    pub(crate) fn of(endpoint: &Endpoint, opened: &[Arc<UpstreamSession>]) -> Self {
        let gateway_info =
            serde_json::json!({"name": "mcpgw", "version": env!("CARGO_PKG_VERSION")});
        let parse = |raw: &str| serde_json::from_str::<Value>(raw).ok();
        if opened.is_empty() {
            return Self {
                capabilities: parse(GATEWAY_CAPABILITIES).unwrap_or_default(),
                server_info: gateway_info,
                instructions: None,
            };
        }
        if !endpoint.namespaced() {
            let us = &opened[0];
            let identity = us.identity();
            return Self {
                capabilities: parse(us.capabilities()).unwrap_or_else(|| Value::Object(Map::new())),
                server_info: identity
                    .and_then(|i| i.server_info.as_deref())
                    .and_then(parse)
                    .unwrap_or(gateway_info),
                instructions: identity
                    .and_then(|i| i.instructions.as_deref())
                    .map(str::to_owned),
            };
        }
        let mut caps = Map::new();
        for us in opened {
            let Some(Value::Object(theirs)) = parse(us.capabilities()) else {
                continue;
            };
            for family in FEDERATED_CAPABILITIES {
                let Some(Value::Object(flags)) = theirs.get(family) else {
                    continue;
                };
                let Value::Object(ours) = caps
                    .entry(family)
                    .or_insert_with(|| Value::Object(Map::new()))
                else {
                    continue;
                };
                for (flag, on) in flags {
                    if on == &Value::Bool(true) {
                        ours.insert(flag.clone(), Value::Bool(true));
                    }
                }
            }
        }
        let labelled: Vec<String> = opened
            .iter()
            .filter_map(|us| {
                let text = us.identity()?.instructions.as_deref()?;
                Some(format!("[upstream {}]\n{text}", us.server.id))
            })
            .collect();
        Self {
            capabilities: Value::Object(caps),
            server_info: gateway_info,
            instructions: (!labelled.is_empty()).then(|| labelled.join("\n\n")),
        }
    }
}
