//! Authorization rules of one endpoint (`authz_default`,
//! `[[endpoint.authz]]`), compiled once per (re)load: which caller may see
//! and use which tool, prompt and resource. Routing asks [`Rules::decide`]
//! before a call by name or URI and filters lists with it; a denied call is
//! answered like an unknown name (`crate::route`), so a caller cannot tell
//! a hidden tool from one that does not exist.
//!
//! What a rule matches a caller on is [`Claims`]: read once from the token
//! when it is checked (`crate::auth`), carried by the principal (and over
//! the internal socket when a request is forwarded). Without `[auth]` a
//! caller has no claims: rules with a `when` never match it, rules
//! without one apply to it as to everyone (`check-config` refuses rules
//! with `when` when there is no `[auth]`).
//!
//! Cost per request: nothing for an endpoint without rules
//! (`Endpoint::authz` is `None`); otherwise a walk of the rules in order,
//! globs first (no allocation), claims only when a glob matched.

use std::sync::OnceLock;

use mcpgw_protocol::config::{AuthzRule, Effect, Endpoint};
use mcpgw_protocol::glob::Glob;
use prometheus::IntCounter;
use serde::{Deserialize, Serialize};

/// What a caller presents to the rules: the token's `sub`, its scopes, and
/// the values of the configured groups and roles claims.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Claims {
    pub(crate) sub: Box<str>,
    #[serde(default)]
    pub(crate) scopes: Box<[Box<str>]>,
    #[serde(default)]
    pub(crate) groups: Box<[Box<str>]>,
    #[serde(default)]
    pub(crate) roles: Box<[Box<str>]>,
}

/// What is being decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    Tool = 0,
    Prompt = 1,
    Resource = 2,
}

impl Kind {
    pub(crate) const LABELS: [&'static str; 3] = ["tool", "prompt", "resource"];

    pub(crate) fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// How a decision is counted (`mcpgw_authz_decisions_total{decision}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Counted {
    /// A call by name or URI let through.
    Allow = 0,
    /// A call by name or URI refused (answered as unknown).
    Deny = 1,
    /// An item left out of a list.
    Hidden = 2,
}

impl Counted {
    pub(crate) const LABELS: [&'static str; 3] = ["allow", "deny", "hidden"];
}

/// The outcome for one name: allowed or not, and which rule said so
/// (`None`: the endpoint's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Verdict {
    pub(crate) allowed: bool,
    pub(crate) rule: Option<usize>,
}

/// Which names of one kind a rule covers.
enum Cover {
    /// The rule does not list this kind (but lists another).
    Nothing,
    /// The rule lists no kind at all: it covers every name of every kind.
    All,
    /// The names matching one of these (never empty: the config's
    /// validation refuses a rule that lists only empty lists).
    Matching(Box<[Glob]>),
}

impl Cover {
    fn covers(&self, name: &str) -> bool {
        match self {
            Self::Nothing => false,
            Self::All => true,
            Self::Matching(globs) => globs.iter().any(|g| g.matches(name)),
        }
    }
}

/// Which rule decided, as the config names it (`authz[2]`) or
/// `authz_default`.
struct RuleRef(Option<usize>);

impl std::fmt::Display for RuleRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(i) => write!(f, "authz[{i}]"),
            None => f.write_str("authz_default"),
        }
    }
}

/// One compiled rule.
struct Rule {
    allow: bool,
    /// Per [`Kind`].
    patterns: [Cover; 3],
    when: Option<When>,
}

/// A compiled `when`: each written key, its values.
struct When {
    sub: Option<Box<[Box<str>]>>,
    scopes: Option<Box<[Box<str>]>>,
    groups: Option<Box<[Box<str>]>>,
    roles: Option<Box<[Box<str>]>>,
}

fn any_of(wanted: &Option<Box<[Box<str>]>>, has: &[Box<str>]) -> bool {
    wanted
        .as_ref()
        .is_none_or(|w| w.iter().any(|v| has.contains(v)))
}

impl When {
    fn matches(&self, who: Option<&Claims>) -> bool {
        let Some(c) = who else {
            // No claims: only an empty `when` (written `when = {}`) matches.
            return self.sub.is_none()
                && self.scopes.is_none()
                && self.groups.is_none()
                && self.roles.is_none();
        };
        self.sub.as_ref().is_none_or(|subs| subs.contains(&c.sub))
            && any_of(&self.scopes, &c.scopes)
            && any_of(&self.groups, &c.groups)
            && any_of(&self.roles, &c.roles)
    }
}

/// An endpoint's rules, in order, and its default.
pub(crate) struct Rules {
    /// The endpoint's path (the metric's label).
    endpoint: Box<str>,
    default_allow: bool,
    rules: Box<[Rule]>,
    /// `mcpgw_authz_decisions_total` children, per [`Kind`] and
    /// [`Counted`], looked up once each.
    counters: [[OnceLock<IntCounter>; 3]; 3],
}

fn strings(list: Option<&Vec<String>>) -> Option<Box<[Box<str>]>> {
    list.map(|l| l.iter().map(|s| Box::from(s.as_str())).collect())
}

fn compile_rule(rule: &AuthzRule) -> Rule {
    // Patterns were compiled once by the config's validation already; one
    // that fails here (it cannot) is left out rather than matching anything.
    let cover = |list: &Option<Vec<String>>| match list {
        None => Cover::Nothing,
        Some(l) => Cover::Matching(l.iter().filter_map(|p| Glob::new(p).ok()).collect()),
    };
    let all = rule.tools.is_none() && rule.prompts.is_none() && rule.resources.is_none();
    let patterns = if all {
        [Cover::All, Cover::All, Cover::All]
    } else {
        [
            cover(&rule.tools),
            cover(&rule.prompts),
            cover(&rule.resources),
        ]
    };
    Rule {
        allow: rule.effect == Effect::Allow,
        patterns,
        when: rule.when.as_ref().map(|w| When {
            sub: strings(w.sub.as_ref()),
            scopes: strings(w.scopes.as_ref()),
            groups: strings(w.groups.as_ref()),
            roles: strings(w.roles.as_ref()),
        }),
    }
}

impl Rules {
    /// The rules of `e`, or `None` when it has none and allows by default
    /// (nothing to decide: no cost per request).
    pub(crate) fn compile(e: &Endpoint) -> Option<Self> {
        if e.authz.is_empty() && e.authz_default == Effect::Allow {
            return None;
        }
        Some(Self {
            endpoint: Box::from(e.path.as_str()),
            default_allow: e.authz_default == Effect::Allow,
            rules: e.authz.iter().map(compile_rule).collect(),
            counters: Default::default(),
        })
    }

    /// Whether `who` may use the `kind` named `name` (the name the client
    /// sees; a resource's URI): the first rule covering both decides.
    pub(crate) fn decide(&self, kind: Kind, name: &str, who: Option<&Claims>) -> Verdict {
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.patterns[kind as usize].covers(name)
                && rule.when.as_ref().is_none_or(|w| w.matches(who))
            {
                return Verdict {
                    allowed: rule.allow,
                    rule: Some(i),
                };
            }
        }
        Verdict {
            allowed: self.default_allow,
            rule: None,
        }
    }

    /// [`Rules::decide`] for a call by name or URI, counted, and logged
    /// when denied (who, where, what, and the rule that said so).
    pub(crate) fn check(
        &self,
        metrics: &crate::metrics::Metrics,
        kind: Kind,
        name: &str,
        who: Option<&Claims>,
    ) -> bool {
        let v = self.decide(kind, name, who);
        if v.allowed {
            self.count(metrics, kind, Counted::Allow, 1);
            return true;
        }
        self.count(metrics, kind, Counted::Deny, 1);
        // Info, not warn: a client probing names is not the gateway's
        // trouble; the counter shows the rate.
        tracing::info!(
            principal = who.map_or("-", |c| &*c.sub),
            endpoint = %self.endpoint,
            kind = kind.label(),
            name,
            rule = %RuleRef(v.rule),
            "denied by authorization rules; answered as unknown"
        );
        false
    }

    /// Count `n` decisions of `how` on `kind`.
    pub(crate) fn count(
        &self,
        metrics: &crate::metrics::Metrics,
        kind: Kind,
        how: Counted,
        n: u64,
    ) {
        if n == 0 {
            return;
        }
        self.counters[kind as usize][how as usize]
            .get_or_init(|| {
                metrics.authz_decisions.with_label_values(&[
                    &*self.endpoint,
                    kind.label(),
                    Counted::LABELS[how as usize],
                ])
            })
            .inc_by(n);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mcpgw_protocol::config::When as WhenConfig;

    fn claims(sub: &str, groups: &[&str]) -> Claims {
        Claims {
            sub: sub.into(),
            scopes: Box::from([Box::from("mcp")]),
            groups: groups.iter().map(|g| Box::from(*g)).collect(),
            roles: Box::default(),
        }
    }

    fn endpoint(default: Effect, rules: Vec<AuthzRule>) -> Endpoint {
        Endpoint {
            path: "/mcp".into(),
            upstreams: vec!["crm".into(), "docs".into()],
            auth_audience: None,
            auth_required_scopes: None,
            authz_default: default,
            authz: rules,
            rate_limit: None,
        }
    }

    fn list(items: &[&str]) -> Option<Vec<String>> {
        Some(items.iter().map(|s| (*s).to_owned()).collect())
    }

    #[test]
    fn no_rules_and_allow_by_default_compile_to_nothing() {
        assert!(Rules::compile(&endpoint(Effect::Allow, vec![])).is_none());
        let deny_all = Rules::compile(&endpoint(Effect::Deny, vec![])).expect("rules");
        let v = deny_all.decide(Kind::Tool, "crm__x", None);
        assert_eq!(
            v,
            Verdict {
                allowed: false,
                rule: None
            }
        );
    }

    #[test]
    fn the_first_rule_covering_the_kind_name_and_caller_decides() {
        let rules = Rules::compile(&endpoint(
            Effect::Allow,
            vec![
                AuthzRule {
                    effect: Effect::Deny,
                    tools: list(&["crm__delete_*"]),
                    resources: list(&["file:///secret/*"]),
                    when: Some(WhenConfig {
                        groups: list(&["contractors"]),
                        ..WhenConfig::default()
                    }),
                    ..AuthzRule::default()
                },
                AuthzRule {
                    effect: Effect::Allow,
                    tools: list(&["crm__delete_own"]),
                    ..AuthzRule::default()
                },
                AuthzRule {
                    effect: Effect::Deny,
                    tools: list(&["crm__delete_*"]),
                    ..AuthzRule::default()
                },
            ],
        ))
        .expect("rules");
        let contractor = claims("bob", &["staff", "contractors"]);
        let staff = claims("alice", &["staff"]);
        let deny = |rule| Verdict {
            allowed: false,
            rule: Some(rule),
        };
        let allow = |rule| Verdict {
            allowed: true,
            rule: Some(rule),
        };
        assert_eq!(
            rules.decide(Kind::Tool, "crm__delete_own", Some(&contractor)),
            deny(0)
        );
        assert_eq!(
            rules.decide(Kind::Tool, "crm__delete_own", Some(&staff)),
            allow(1)
        );
        assert_eq!(
            rules.decide(Kind::Tool, "crm__delete_all", Some(&staff)),
            deny(2)
        );
        assert_eq!(rules.decide(Kind::Tool, "crm__delete_all", None), deny(2));
        let default = Verdict {
            allowed: true,
            rule: None,
        };
        assert_eq!(
            rules.decide(Kind::Tool, "crm__list", Some(&contractor)),
            default
        );
        // A rule covers only the kinds it lists.
        assert_eq!(
            rules.decide(Kind::Prompt, "crm__delete_x", Some(&contractor)),
            default
        );
        assert_eq!(
            rules.decide(Kind::Resource, "file:///secret/a", Some(&contractor)),
            deny(0)
        );
        assert_eq!(
            rules.decide(Kind::Resource, "file:///secret/a", Some(&staff)),
            default
        );
        // Without claims a `when` never matches.
        assert_eq!(
            rules.decide(Kind::Resource, "file:///secret/a", None),
            default
        );
    }

    #[test]
    fn a_rule_without_lists_covers_everything_and_when_needs_every_key() {
        let rules = Rules::compile(&endpoint(
            Effect::Deny,
            vec![AuthzRule {
                effect: Effect::Allow,
                when: Some(WhenConfig {
                    sub: list(&["alice", "carol"]),
                    scopes: list(&["mcp"]),
                    ..WhenConfig::default()
                }),
                ..AuthzRule::default()
            }],
        ))
        .expect("rules");
        let alice = claims("alice", &[]);
        assert!(rules.decide(Kind::Tool, "docs__x", Some(&alice)).allowed);
        assert!(rules.decide(Kind::Prompt, "p", Some(&alice)).allowed);
        assert!(rules.decide(Kind::Resource, "a://b", Some(&alice)).allowed);
        assert!(
            !rules
                .decide(Kind::Tool, "docs__x", Some(&claims("bob", &[])))
                .allowed
        );
        let unscoped = Claims {
            scopes: Box::default(),
            ..alice.clone()
        };
        assert!(!rules.decide(Kind::Tool, "docs__x", Some(&unscoped)).allowed);
        assert!(!rules.decide(Kind::Tool, "docs__x", None).allowed);
    }
}
