//! Explain traces: why `decide` answered what it did, step by step (DESIGN.md §7, `explain`).
//!
//! Pure, like the rest of `policy`. The outcome and each permission's result come from the very
//! code `decide` runs (`eval::Ctx::check`, then `decide` itself), so a trace cannot disagree with
//! the live gateway; the rest is annotation: which role (through which inheritance chain and
//! which pattern) grants each required permission, which override or entitlement pattern
//! matched, and what the owner, scope and MFA checks compared. Annotation re-matches patterns
//! against one name at a time, which is fine off the request path and never done on it.

use serde::Serialize;

use super::eval::Ctx;
use super::permission::Pattern;
use super::{Caller, Outcome, PermId, Policy, PrincipalGrants, Requirement, Rule, TenantGrants};

/// The whole trace of one decision, serializable for `explain --format json` and the admin API.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Trace {
    /// `public`, `permission`, `any_of` or `all_of`.
    pub requirement: &'static str,
    pub required: Vec<String>,
    /// Route-level MFA (`mfa = true`).
    pub route_mfa: bool,
    /// `None` when no identity was presented or verified.
    pub caller: Option<CallerTrace>,
    pub tenant: Option<TenantTrace>,
    pub principal: Option<PrincipalTrace>,
    /// One entry per required permission, in requirement order.
    pub checks: Vec<PermissionCheck>,
    pub outcome: OutcomeTrace,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct CallerTrace {
    pub subject: String,
    pub mfa: bool,
    /// Value of the route's owner parameter, if the route names one.
    pub owner: Option<String>,
    /// Value of the route's scope parameter, if the route names one.
    pub scope: Option<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TenantTrace {
    /// As stored; `None`: the tenant has no tier (fails every `require_tier`).
    pub tier: Option<String>,
    /// `false` when the stored tier is not one of `[entitlements] tiers` (counts as no tier).
    pub tier_known: bool,
    pub features: Vec<String>,
    pub custom_roles: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PrincipalTrace {
    pub assigned: Vec<AssignedRole>,
    /// Effective role names after alias resolution (what `x-authz-roles` carries).
    pub roles: Vec<String>,
    pub grant: Vec<String>,
    pub deny: Vec<String>,
    /// Empty: unrestricted.
    pub scopes: Vec<String>,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AssignedRole {
    /// As assigned (may be an alias such as `member`).
    pub name: String,
    /// The role it stands for; `None` when unknown (grants nothing).
    pub role: Option<String>,
    /// `builtin`, `custom` (tenant role) or `unknown`.
    pub kind: &'static str,
}

/// Where a held permission comes from.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GrantSource {
    /// Assigned role → inherited role → ... → the role whose pattern matched; `["grant"]` for a
    /// per-user grant override.
    pub via: Vec<String>,
    pub pattern: String,
    /// `full` or `own`.
    pub kind: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FeatureCheck {
    pub feature: String,
    pub patterns: Vec<String>,
    pub tenant_has: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct TierCheck {
    /// The highest tier any matching pattern requires.
    pub required: String,
    pub patterns: Vec<String>,
    pub tenant_tier: Option<String>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OwnerCheck {
    pub owner: Option<String>,
    pub subject: String,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ScopeCheck {
    pub value: Option<String>,
    pub scopes: Vec<String>,
    /// The grant relied on comes from an `all_scopes` role.
    pub all_scopes: bool,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MfaCheck {
    pub route: bool,
    pub patterns: Vec<String>,
    pub has_mfa: bool,
    pub ok: bool,
}

/// One required permission through every stage of `decide`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct PermissionCheck {
    pub permission: String,
    pub features: Vec<FeatureCheck>,
    pub tier: Option<TierCheck>,
    /// Per-user `deny` patterns matching the permission (any one denies).
    pub denied_by: Vec<String>,
    pub sources: Vec<GrantSource>,
    /// `full`, `own` (own-only) or `none`, after deny overrides.
    pub held: &'static str,
    /// Only when the grant is own-only and the route names an owner parameter.
    pub owner: Option<OwnerCheck>,
    /// Only when the route names a scope parameter and the principal has scopes.
    pub scope: Option<ScopeCheck>,
    pub mfa: Option<MfaCheck>,
    /// `pass` or the deny reason this permission alone would give.
    pub result: &'static str,
}

#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct OutcomeTrace {
    pub decision: &'static str,
    pub reason: Option<&'static str>,
    /// The permission the allow rests on, or the one the denial names.
    pub permission: Option<String>,
    pub own_only: bool,
    pub required_tier: Option<String>,
    pub required_feature: Option<String>,
}

/// Trace one decision. `who` is what `decide` gets; the outcome is `decide`'s.
pub fn trace(
    policy: &Policy,
    rule: &Rule,
    who: Option<(&Caller<'_>, &TenantGrants, &PrincipalGrants)>,
) -> Trace {
    let (requirement, ids): (&'static str, Vec<PermId>) = match &rule.requirement {
        Requirement::Public => ("public", Vec::new()),
        Requirement::Permission(id) => ("permission", vec![*id]),
        Requirement::AnyOf(ids) => ("any_of", ids.to_vec()),
        Requirement::AllOf(ids) => ("all_of", ids.to_vec()),
    };
    let verdict = super::decide(policy, rule, who);
    let outcome = outcome_trace(policy, &verdict.outcome);
    let name = |id: PermId| policy.permission_name(id).to_owned();
    let mut out = Trace {
        requirement,
        required: ids.iter().map(|&id| name(id)).collect(),
        route_mfa: rule.mfa,
        caller: None,
        tenant: None,
        principal: None,
        checks: Vec::new(),
        outcome,
    };
    let Some((caller, tenant, principal)) = who else {
        return out;
    };
    out.caller = Some(CallerTrace {
        subject: caller.subject.to_owned(),
        mfa: caller.mfa,
        owner: caller.owner.map(str::to_owned),
        scope: caller.scope.map(str::to_owned),
    });
    out.tenant = Some(TenantTrace {
        tier: tenant.data_tier.clone(),
        tier_known: tenant.tier.is_some(),
        features: tenant.data_features.clone(),
        custom_roles: tenant.custom_defs.iter().map(|r| r.name.clone()).collect(),
    });
    out.principal = Some(principal_trace(policy, tenant, principal));
    if requirement == "public" {
        return out;
    }
    let ctx = Ctx {
        policy,
        rule,
        caller,
        tenant,
        principal,
    };
    out.checks = ids.iter().map(|&id| check_trace(&ctx, id)).collect();
    out
}

fn outcome_trace(policy: &Policy, outcome: &Outcome) -> OutcomeTrace {
    let name = |id: Option<PermId>| id.map(|id| policy.permission_name(id).to_owned());
    match outcome {
        Outcome::Allow {
            own_only,
            relied_on,
        } => OutcomeTrace {
            decision: "allow",
            reason: None,
            permission: name(*relied_on),
            own_only: *own_only,
            required_tier: None,
            required_feature: None,
        },
        Outcome::Deny(d) => OutcomeTrace {
            decision: "deny",
            reason: Some(d.reason.as_str()),
            permission: name(d.permission),
            own_only: false,
            required_tier: d.required_tier.clone(),
            required_feature: d.required_feature.clone(),
        },
    }
}

fn principal_trace(
    policy: &Policy,
    tenant: &TenantGrants,
    principal: &PrincipalGrants,
) -> PrincipalTrace {
    let source = principal.source();
    let assigned = source
        .roles
        .iter()
        .map(|name| {
            if let Some(role) = policy.resolve_role(name) {
                AssignedRole {
                    name: name.clone(),
                    role: Some(role.to_owned()),
                    kind: "builtin",
                }
            } else if tenant.role_index.contains_key(name) {
                AssignedRole {
                    name: name.clone(),
                    role: Some(name.clone()),
                    kind: "custom",
                }
            } else {
                AssignedRole {
                    name: name.clone(),
                    role: None,
                    kind: "unknown",
                }
            }
        })
        .collect();
    PrincipalTrace {
        assigned,
        roles: principal.role_names.to_vec(),
        grant: source.grant.clone(),
        deny: source.deny.clone(),
        scopes: principal.scopes.to_vec(),
    }
}

/// Patterns in `patterns` that parse and match `name`.
fn matching<'p>(
    patterns: impl IntoIterator<Item = &'p String>,
    sep: char,
    name: &str,
) -> Vec<String> {
    patterns
        .into_iter()
        .filter(|p| Pattern::parse(p, sep).is_ok_and(|pat| pat.matches(name)))
        .cloned()
        .collect()
}

fn check_trace(ctx: &Ctx<'_>, id: PermId) -> PermissionCheck {
    let Ctx {
        policy,
        rule,
        caller,
        tenant,
        principal,
    } = ctx;
    let sep = policy.separator();
    let name = policy.permission_name(id);
    let i = id.index();
    let def = policy.definition();

    let features = policy
        .perm_features
        .get(i)
        .map_or(&[][..], |f| &f[..])
        .iter()
        .filter_map(|&f| {
            let feature = policy.features.get(f as usize)?;
            let patterns = def
                .require_feature
                .iter()
                .filter(|(_, feat)| feat == feature)
                .map(|(p, _)| p);
            Some(FeatureCheck {
                feature: feature.clone(),
                patterns: matching(patterns, sep, name),
                tenant_has: tenant.features.get(f as usize),
            })
        })
        .collect();
    let tier = policy
        .perm_tier
        .get(i)
        .copied()
        .flatten()
        .map(|rank| TierCheck {
            required: policy.tier_name(rank).unwrap_or_default().to_owned(),
            patterns: def
                .require_tier
                .iter()
                .filter(|(p, _)| Pattern::parse(p, sep).is_ok_and(|pat| pat.matches(name)))
                .map(|(p, t)| format!("{p} -> {t}"))
                .collect(),
            tenant_tier: tenant
                .tier
                .and_then(|t| policy.tier_name(t))
                .map(str::to_owned),
            ok: tenant.tier.is_some_and(|t| t >= rank),
        });
    let denied_by = matching(&principal.source().deny, sep, name);
    let sources = grant_sources(policy, tenant, principal, name);

    let full = principal.full.get(i);
    let own = principal.own.get(i);
    let denied = principal.deny.get(i);
    let held = match (denied, full, own) {
        (true, _, _) | (false, false, false) => "none",
        (false, true, _) => "full",
        (false, false, true) => "own",
    };
    let owner = (held == "own" && rule.has_owner).then(|| OwnerCheck {
        owner: caller.owner.map(str::to_owned),
        subject: caller.subject.to_owned(),
        ok: caller.owner == Some(caller.subject),
    });
    let scope = (rule.has_scope && !principal.scopes.is_empty() && held != "none").then(|| {
        let bypass = if held == "own" {
            principal.scope_free_own.get(i)
        } else {
            principal.scope_free_full.get(i)
        };
        let in_scope = caller
            .scope
            .is_some_and(|s| principal.scopes.iter().any(|x| x == s));
        ScopeCheck {
            value: caller.scope.map(str::to_owned),
            scopes: principal.scopes.to_vec(),
            all_scopes: bypass,
            ok: bypass || in_scope,
        }
    });
    let mfa_patterns = matching(&def.mfa, sep, name);
    let mfa = (rule.mfa || policy.mfa.get(i)).then_some(MfaCheck {
        route: rule.mfa,
        patterns: mfa_patterns,
        has_mfa: caller.mfa,
        ok: caller.mfa,
    });
    let result = match ctx.check(id) {
        Ok(_) => "pass",
        Err(d) => d.reason.as_str(),
    };
    PermissionCheck {
        permission: name.to_owned(),
        features,
        tier,
        denied_by,
        sources,
        held,
        owner,
        scope,
        mfa,
        result,
    }
}

/// Every (role chain, pattern) granting `name`: depth first through `inherits` from each
/// assigned role, then per-user `grant` patterns.
fn grant_sources(
    policy: &Policy,
    tenant: &TenantGrants,
    principal: &PrincipalGrants,
    name: &str,
) -> Vec<GrantSource> {
    let sep = policy.separator();
    let def = policy.definition();
    // Built-in first (a built-in role of the same name wins), then the tenant's custom roles.
    let lookup = |role: &str| {
        policy
            .resolve_role(role)
            .and_then(|r| def.roles.iter().find(|d| d.name == r))
            .or_else(|| tenant.custom_defs.iter().find(|d| d.name == role))
    };
    let mut out = Vec::new();
    for assigned in &principal.source().roles {
        let mut stack: Vec<(Vec<String>, &str)> = vec![(vec![assigned.clone()], assigned)];
        let mut seen: Vec<String> = Vec::new();
        while let Some((chain, role)) = stack.pop() {
            let Some(role_def) = lookup(role) else {
                continue;
            };
            if seen.contains(&role_def.name) {
                continue;
            }
            seen.push(role_def.name.clone());
            let mut via = chain.clone();
            if via.last().is_some_and(|last| *last != role_def.name) {
                // An alias: show the role it stands for.
                via.push(role_def.name.clone());
            }
            for (patterns, kind) in [(&role_def.permissions, "full"), (&role_def.own, "own")] {
                for pattern in matching(patterns, sep, name) {
                    out.push(GrantSource {
                        via: via.clone(),
                        pattern,
                        kind,
                    });
                }
            }
            // Reverse so the first parent is explored first.
            for parent in role_def.inherits.iter().rev() {
                let mut next = via.clone();
                next.push(parent.clone());
                stack.push((next, parent));
            }
        }
    }
    for pattern in matching(&principal.source().grant, sep, name) {
        out.push(GrantSource {
            via: vec!["grant".to_owned()],
            pattern,
            kind: "full",
        });
    }
    out
}
