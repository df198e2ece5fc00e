//! An endpoint's authorization rules (`authz_default`, `[[endpoint.authz]]`)
//! and rate limits (`rate_limit`), as configured, and their checks. The
//! worker compiles and enforces them (`worker/src/authz/`,
//! `worker/src/rate_limit.rs`); this module owns the shape, the rate
//! syntax (`"20/s"`) and the refusal of rules that can never match.

use std::fmt;

use serde::de::Error as _;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::error::invalid;
use super::{Config, ConfigError, Endpoint};
use crate::glob::Glob;

/// What a rule (or an endpoint's default) does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Effect {
    #[default]
    Allow,
    Deny,
}

/// One `[[endpoint.authz]]` rule. It covers the kinds whose list it has
/// (no list at all: every tool, prompt and resource) and the callers its
/// `when` names (no `when`: everyone). The first rule that covers a call
/// decides; `authz_default` decides when none does.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthzRule {
    pub effect: Effect,
    /// Globs over tool names as the client sees them (namespaced
    /// `{upstream}{separator}{tool}` on an endpoint with several upstreams).
    pub tools: Option<Vec<String>>,
    /// Globs over prompt names, as for `tools`.
    pub prompts: Option<Vec<String>>,
    /// Globs over resource URIs (and resource template URI templates, as text).
    pub resources: Option<Vec<String>>,
    pub when: Option<When>,
}

/// Which callers a rule covers: every key written must match (any of its
/// values); values are compared exactly.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct When {
    /// The token's `sub`.
    pub sub: Option<Vec<String>>,
    /// Scopes of the token (`scope` or `scp`).
    pub scopes: Option<Vec<String>>,
    /// Values of the claim `auth.groups_claim` names.
    pub groups: Option<Vec<String>>,
    /// Values of the claim `auth.roles_claim` names.
    pub roles: Option<Vec<String>>,
}

impl When {
    /// The keys written, by name, for messages and checks.
    pub fn keys(&self) -> [(&'static str, Option<&[String]>); 4] {
        [
            ("sub", self.sub.as_deref()),
            ("scopes", self.scopes.as_deref()),
            ("groups", self.groups.as_deref()),
            ("roles", self.roles.as_deref()),
        ]
    }

    /// Whether no key is written (matches everyone, like no `when`).
    pub fn is_empty(&self) -> bool {
        self.keys().iter().all(|(_, v)| v.is_none())
    }
}

/// A rate: `tokens` per `per_secs` seconds, written `"20/s"`, `"600/m"`,
/// `"10000/h"` in TOML (and shown so in `/admin/config`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub tokens: u32,
    pub per_secs: u32,
}

impl Rate {
    /// Tokens per second.
    pub fn per_second(self) -> f64 {
        f64::from(self.tokens) / f64::from(self.per_secs)
    }
}

impl std::str::FromStr for Rate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{text:?} is not a rate: write N/s, N/m or N/h (e.g. \"20/s\")");
        let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
        let tokens: u32 = n.trim().parse().map_err(|_| bad())?;
        let per_secs = match unit.trim() {
            "s" => 1,
            "m" => 60,
            "h" => 3600,
            _ => return Err(bad()),
        };
        if tokens == 0 {
            return Err(format!(
                "{text:?}: a rate of 0 refuses everything; remove the limit or give a positive rate"
            ));
        }
        Ok(Self { tokens, per_secs })
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.per_secs {
            1 => "s",
            60 => "m",
            _ => "h",
        };
        write!(f, "{}/{unit}", self.tokens)
    }
}

/// As text where people read it (TOML, `/admin/config`); as two numbers on
/// the control channel (bincode is not self-describing).
impl Serialize for Rate {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        if s.is_human_readable() {
            s.collect_str(self)
        } else {
            (self.tokens, self.per_secs).serialize(s)
        }
    }
}

impl<'de> Deserialize<'de> for Rate {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        if !d.is_human_readable() {
            let (tokens, per_secs) = <(u32, u32)>::deserialize(d)?;
            return Ok(Self { tokens, per_secs });
        }
        String::deserialize(d)?.parse().map_err(D::Error::custom)
    }
}

/// `rate_limit`: token buckets on one endpoint. Each JSON-RPC request (not
/// notifications or responses) takes one token from its caller's bucket
/// and one from the endpoint's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimit {
    /// Each principal's refill rate (callers without a principal: each
    /// client IP address's).
    pub per_principal: Option<Rate>,
    /// Each principal's bucket size; unset: the rate's count (`"20/s"`: 20).
    pub burst: Option<u32>,
    /// The endpoint's refill rate, all callers together.
    pub endpoint: Option<Rate>,
    /// The endpoint bucket's size; unset: the rate's count.
    pub endpoint_burst: Option<u32>,
}

impl Config {
    /// The authorization rules and rate limits of every endpoint: globs
    /// compile, rules can match something, rates and bursts make sense.
    pub(super) fn validate_authz(&self) -> Result<(), ConfigError> {
        let has_auth = self.auth.jwt().is_some();
        if let Some(a) = self.auth.jwt() {
            for (key, claim) in [
                ("auth.groups_claim", &a.groups_claim),
                ("auth.roles_claim", &a.roles_claim),
            ] {
                if claim.is_empty() {
                    return Err(invalid(key, "must name a claim of the token"));
                }
            }
        }
        for (i, e) in self.endpoint.iter().enumerate() {
            self.validate_endpoint_authz(i, e, has_auth)?;
        }
        Ok(())
    }

    fn validate_endpoint_authz(
        &self,
        i: usize,
        e: &Endpoint,
        has_auth: bool,
    ) -> Result<(), ConfigError> {
        // Names are namespaced on an endpoint with several upstreams: a
        // tool or prompt pattern must be able to match under one of them.
        let namespaces: Vec<String> = if e.upstreams.len() > 1 {
            e.upstreams
                .iter()
                .map(|u| format!("{u}{}", self.namespace_separator))
                .collect()
        } else {
            Vec::new()
        };
        for (j, rule) in e.authz.iter().enumerate() {
            let key = |field: &str| format!("endpoint[{i}].authz[{j}].{field}");
            let lists = [
                ("tools", rule.tools.as_deref()),
                ("prompts", rule.prompts.as_deref()),
                ("resources", rule.resources.as_deref()),
            ];
            if lists.iter().any(|(_, l)| l.is_some())
                && lists
                    .iter()
                    .all(|(_, l)| l.is_none_or(<[String]>::is_empty))
            {
                return Err(invalid(
                    format!("endpoint[{i}].authz[{j}]"),
                    "this rule lists no tool, prompt or resource pattern, so it can never \
                     match; leave out tools, prompts and resources to cover everything",
                ));
            }
            for (field, list) in lists {
                for (k, pattern) in list.into_iter().flatten().enumerate() {
                    let glob = Glob::new(pattern)
                        .map_err(|why| invalid(format!("{}[{k}]", key(field)), why.to_string()))?;
                    if field != "resources"
                        && !namespaces.is_empty()
                        && !namespaces.iter().any(|ns| glob.may_match_under(ns))
                    {
                        return Err(invalid(
                            format!("{}[{k}]", key(field)),
                            format!(
                                "{pattern:?} can never match: this endpoint has several \
                                 upstreams, so its {field} are named {}<name> (e.g. \"{}*\")",
                                namespaces.join("<name> or "),
                                namespaces.first().map_or("", String::as_str),
                            ),
                        ));
                    }
                }
            }
            let Some(when) = &rule.when else { continue };
            if !has_auth && !when.is_empty() {
                return Err(invalid(
                    key("when"),
                    "matches on token claims, and without an [auth] table callers have \
                     none: this rule could never match (add [auth], or drop `when` to \
                     apply the rule to everyone)",
                ));
            }
            for (name, values) in when.keys() {
                if values.is_some_and(<[String]>::is_empty) {
                    return Err(invalid(
                        format!("{}.{name}", key("when")),
                        "an empty list matches no caller, so this rule could never match",
                    ));
                }
            }
        }
        if let Some(limit) = &e.rate_limit {
            let key = |field: &str| format!("endpoint[{i}].rate_limit.{field}");
            if limit.per_principal.is_none() && limit.endpoint.is_none() {
                return Err(invalid(
                    format!("endpoint[{i}].rate_limit"),
                    "set per_principal, endpoint or both",
                ));
            }
            for (rate, rate_key, burst, burst_key) in [
                (limit.per_principal, "per_principal", limit.burst, "burst"),
                (
                    limit.endpoint,
                    "endpoint",
                    limit.endpoint_burst,
                    "endpoint_burst",
                ),
            ] {
                match (rate, burst) {
                    (None, Some(_)) => {
                        return Err(invalid(
                            key(burst_key),
                            format!("{burst_key} needs {rate_key} (the rate it refills at)"),
                        ));
                    }
                    (_, Some(0)) => {
                        return Err(invalid(
                            key(burst_key),
                            "must be at least 1 (a bucket of 0 refuses everything)",
                        ));
                    }
                    _ => {}
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_parse_and_print_back() {
        let r: Rate = "20/s".parse().expect("rate");
        assert_eq!(
            r,
            Rate {
                tokens: 20,
                per_secs: 1
            }
        );
        assert_eq!(r.to_string(), "20/s");
        assert_eq!("600/m".parse::<Rate>().map(|r| r.per_second()), Ok(10.0));
        assert_eq!(
            "3/h".parse::<Rate>().map(|r| r.to_string()),
            Ok("3/h".into())
        );
        for bad in ["", "20", "20/d", "x/s", "-1/s", "0/s", "20 per s"] {
            assert!(bad.parse::<Rate>().is_err(), "{bad}");
        }
    }
}
