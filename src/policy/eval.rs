//! `decide`: a handful of bit tests per required permission, no pattern matching, no
//! allocation on allow (a denial allocates only the tier or feature name it reports).
//!
//! Each required permission is checked alone, and the first failing check names the reason:
//! `feature_disabled` → `tier_required` → `denied_by_override` → `missing_permission` →
//! `not_owner` → `scope_denied` → `mfa_required`.

use super::{
    Caller, Denial, Grant, Mode, Outcome, PermId, Policy, PrincipalGrants, Reason, Requirement,
    Rule, TenantGrants, Verdict,
};

/// The facts one decision consults.
pub(super) struct Ctx<'a> {
    pub(super) policy: &'a Policy,
    pub(super) rule: &'a Rule,
    pub(super) caller: &'a Caller<'a>,
    pub(super) tenant: &'a TenantGrants,
    pub(super) principal: &'a PrincipalGrants,
}

fn denial(reason: Reason, id: PermId) -> Denial {
    Denial {
        reason,
        permission: Some(id),
        required_tier: None,
        required_feature: None,
    }
}

impl Ctx<'_> {
    /// Check one permission through every stage. `Ok(own_only)` when it passes.
    pub(super) fn check(&self, id: PermId) -> Result<bool, Denial> {
        let Ctx {
            policy,
            rule,
            caller,
            tenant,
            principal,
        } = self;
        let i = id.index();

        // Entitlements apply whatever the role: a tenant must have bought the feature / tier.
        for &f in policy.perm_features.get(i).map_or(&[][..], |f| &f[..]) {
            if !tenant.features.get(f as usize) {
                return Err(Denial {
                    required_feature: policy.features.get(f as usize).cloned(),
                    ..denial(Reason::FeatureDisabled, id)
                });
            }
        }
        if let Some(&Some(rank)) = policy.perm_tier.get(i)
            && tenant.tier.is_none_or(|t| t < rank)
        {
            return Err(Denial {
                required_tier: policy.tiers.get(rank as usize).cloned(),
                ..denial(Reason::TierRequired, id)
            });
        }

        // Deny beats every grant kind: roles, per-user grants and `own`.
        if principal.deny.get(i) {
            return Err(denial(Reason::DeniedByOverride, id));
        }
        let full = principal.full.get(i);
        if !full && !principal.own.get(i) {
            return Err(denial(Reason::MissingPermission, id));
        }
        // Holding both an `own` and a full grant counts as full.
        let own_only = !full;
        if own_only && rule.has_owner && caller.owner != Some(caller.subject) {
            return Err(denial(Reason::NotOwner, id));
        }

        if rule.has_scope && !principal.scopes.is_empty() {
            // Only the grant relied on (full, or own when own-only) may carry the bypass.
            let bypass = if own_only {
                principal.scope_free_own.get(i)
            } else {
                principal.scope_free_full.get(i)
            };
            let in_scope = caller
                .scope
                .is_some_and(|s| principal.scopes.iter().any(|x| x == s));
            if !bypass && !in_scope {
                return Err(denial(Reason::ScopeDenied, id));
            }
        }

        if (rule.mfa || policy.mfa.get(i)) && !caller.mfa {
            return Err(denial(Reason::MfaRequired, id));
        }
        Ok(own_only)
    }

    fn outcome(&self) -> Outcome {
        let allow = |id: PermId, own_only: bool| Outcome::Allow {
            own_only,
            relied_on: Some(id),
        };
        match &self.rule.requirement {
            Requirement::Public => Outcome::Allow {
                own_only: false,
                relied_on: None,
            },
            Requirement::Permission(id) => match self.check(*id) {
                Ok(own_only) => allow(*id, own_only),
                Err(d) => Outcome::Deny(d),
            },
            Requirement::AllOf(ids) => {
                // List order; the first failing permission decides. The allow rests on an `own`
                // grant if any member does, and then names the first such member.
                let mut relied: Option<(PermId, bool)> = None;
                for &id in ids.iter() {
                    match self.check(id) {
                        Err(d) => return Outcome::Deny(d),
                        Ok(own_only) => match relied {
                            None => relied = Some((id, own_only)),
                            Some((_, false)) if own_only => relied = Some((id, true)),
                            Some(_) => {}
                        },
                    }
                }
                match relied {
                    Some((id, own_only)) => allow(id, own_only),
                    None => Outcome::Deny(empty_requirement()),
                }
            }
            Requirement::AnyOf(ids) => {
                // A full-grant option wins at once; else the first own-only option; else the
                // first option's own failure.
                let mut own_option: Option<PermId> = None;
                let mut first_failure: Option<Denial> = None;
                for &id in ids.iter() {
                    match self.check(id) {
                        Ok(false) => return allow(id, false),
                        Ok(true) => {
                            own_option.get_or_insert(id);
                        }
                        Err(d) => {
                            first_failure.get_or_insert(d);
                        }
                    }
                }
                match (own_option, first_failure) {
                    (Some(id), _) => allow(id, true),
                    (None, Some(d)) => Outcome::Deny(d),
                    (None, None) => Outcome::Deny(empty_requirement()),
                }
            }
        }
    }
}

/// An empty `any_of` / `all_of` (config rejects it) denies rather than vacuously allowing.
fn empty_requirement() -> Denial {
    Denial {
        reason: Reason::MissingPermission,
        permission: None,
        required_tier: None,
        required_feature: None,
    }
}

/// Wrap an outcome: allowed requests, and every request in monitor mode, may be forwarded.
fn verdict(outcome: Outcome, mode: Mode) -> Verdict {
    let grant = match (&outcome, mode) {
        (Outcome::Allow { own_only, .. }, _) => Some(Grant {
            own_only: *own_only,
        }),
        (Outcome::Deny(_), Mode::Monitor) => Some(Grant { own_only: false }),
        (Outcome::Deny(_), Mode::Enforce) => None,
    };
    Verdict { outcome, grant }
}

/// Decide one request. `who` is `None` when no identity was presented or verified (only a
/// public route can then allow). Evaluation order and pinned rules: DESIGN.md §3.
pub fn decide(
    policy: &Policy,
    rule: &Rule,
    who: Option<(&Caller<'_>, &TenantGrants, &PrincipalGrants)>,
) -> Verdict {
    if rule.requirement == Requirement::Public {
        return verdict(
            Outcome::Allow {
                own_only: false,
                relied_on: None,
            },
            rule.mode,
        );
    }
    let Some((caller, tenant, principal)) = who else {
        return Verdict::unauthenticated(Reason::MissingToken, rule.mode);
    };
    let ctx = Ctx {
        policy,
        rule,
        caller,
        tenant,
        principal,
    };
    verdict(ctx.outcome(), rule.mode)
}
