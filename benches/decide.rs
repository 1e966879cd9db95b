//! Route match + decide at 10, 1,000 and 10,000 routes with 100 roles (wildcards included),
//! against a naive baseline that scans routes and role patterns linearly.
//!
//! Run: `cargo bench --bench decide`. Goal (not a test): ≤ 200 ns median at 1,000 routes.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use http::Method;
use portcullis::policy::{
    self, Caller, Mode, Pattern, Policy, PolicyDef, Requirement, RoleDef, Rule, SubjectData,
    TenantData,
};
use portcullis::route::{RouteTableBuilder, canonicalize};

const ROLES: usize = 100;
const SERVICES: usize = 20;

struct Fixture {
    policy: Policy,
    table: portcullis::route::RouteTable,
    rules: Vec<Rule>,
    tenant: policy::TenantGrants,
    principal: policy::PrincipalGrants,
    naive: Naive,
    /// Paths to look up, cycling over the table (a mix of allows and denies).
    paths: Vec<String>,
}

/// The baseline: routes as segment lists scanned in order, roles as pattern lists.
struct Naive {
    routes: Vec<(Method, Vec<String>, String)>,
    role_patterns: Vec<Vec<Pattern>>,
    held_roles: Vec<usize>,
}

impl Naive {
    fn lookup(&self, method: &Method, path: &str) -> Option<&str> {
        let segments: Vec<&str> = path.split('/').collect();
        self.routes
            .iter()
            .find(|(m, pattern, _)| {
                m == method
                    && pattern.len() == segments.len()
                    && pattern
                        .iter()
                        .zip(&segments)
                        .all(|(p, s)| p.starts_with('{') || p == s)
            })
            .map(|(_, _, perm)| perm.as_str())
    }

    fn allowed(&self, permission: &str) -> bool {
        self.held_roles
            .iter()
            .any(|&r| self.role_patterns[r].iter().any(|p| p.matches(permission)))
    }
}

fn permission(i: usize) -> String {
    format!(
        "svc{}.res{}.{}",
        i % SERVICES,
        i,
        ["view", "edit", "delete"][i % 3]
    )
}

fn fixture(routes: usize) -> Fixture {
    let route_permissions: Vec<String> = (0..routes).map(permission).collect();
    // 100 roles: service-wide wildcards, `*.view`-style, and concrete grants, with inheritance.
    let roles: Vec<RoleDef> = (0..ROLES)
        .map(|r| RoleDef {
            name: format!("role{r}"),
            permissions: match r % 4 {
                0 => vec![format!("svc{}.*", r % SERVICES)],
                1 => vec![format!("svc{}.*.view", r % SERVICES)],
                2 => (0..5).map(|k| permission((r * 7 + k) % routes)).collect(),
                _ => vec![format!("svc{}.res{}.*", r % SERVICES, r % routes)],
            },
            own: vec![format!("svc{}.*.edit", (r + 1) % SERVICES)],
            inherits: if r > 0 && r % 10 == 0 {
                vec![format!("role{}", r - 1)]
            } else {
                Vec::new()
            },
            level: None,
            all_scopes: false,
        })
        .collect();
    let def = PolicyDef {
        separator: '.',
        roles: roles.clone(),
        aliases: Vec::new(),
        tiers: vec!["starter".into(), "growth".into()],
        require_tier: vec![("svc3.*".into(), "growth".into())],
        require_feature: Vec::new(),
        mfa: vec!["svc4.*.delete".into()],
        route_permissions: route_permissions.clone(),
    };
    let policy = Policy::compile(&def).expect("bench policy compiles");
    let mut builder = RouteTableBuilder::new();
    let mut rules = Vec::with_capacity(routes);
    let mut naive_routes = Vec::with_capacity(routes);
    for (i, perm) in route_permissions.iter().enumerate() {
        let path_pattern = format!("/api/svc{}/res{i}/{{id}}", i % SERVICES);
        builder
            .insert(&Method::GET, &path_pattern, i)
            .expect("bench routes do not conflict");
        rules.push(Rule {
            requirement: Requirement::Permission(policy.permission_id(perm).expect("in universe")),
            has_owner: false,
            has_scope: false,
            mfa: false,
            mode: Mode::Enforce,
        });
        naive_routes.push((
            Method::GET,
            path_pattern.split('/').map(str::to_owned).collect(),
            perm.clone(),
        ));
    }
    // Spread lookups over the whole table.
    let step = (routes / 64).max(1);
    let paths = (0..routes.min(64))
        .map(|k| {
            let i = k * step;
            format!("/api/svc{}/res{i}/42", i % SERVICES)
        })
        .collect();
    let tenant_data = TenantData {
        tier: Some("growth".into()),
        features: Vec::new(),
        custom_roles: Vec::new(),
    };
    let held_roles = vec![0, 1, 2, 3, 10, 37];
    let subject = SubjectData {
        roles: held_roles.iter().map(|r| format!("role{r}")).collect(),
        grant: vec!["svc9.*.view".into()],
        deny: vec!["svc0.res0.*".into()],
        scopes: Vec::new(),
    };
    let (tenant, _) = policy.tenant(&tenant_data);
    let (principal, _) = policy.principal(&tenant, &subject);
    let role_patterns = roles
        .iter()
        .map(|r| {
            r.permissions
                .iter()
                .chain(&r.own)
                .map(|p| Pattern::parse(p, '.').expect("valid"))
                .collect()
        })
        .collect();
    Fixture {
        policy,
        table: builder.build(),
        rules,
        tenant,
        principal,
        naive: Naive {
            routes: naive_routes,
            role_patterns,
            held_roles,
        },
        paths,
    }
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_match_and_decide");
    for routes in [10usize, 1_000, 10_000] {
        let f = fixture(routes);
        let mut n = 0usize;
        group.bench_with_input(BenchmarkId::new("portcullis", routes), &f, |b, f| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let path = &f.paths[n % f.paths.len()];
                let path = canonicalize(black_box(path)).expect("canonical");
                let found = f.table.lookup(&Method::GET, &path).expect("route");
                let caller = Caller {
                    subject: "u1",
                    mfa: false,
                    owner: None,
                    scope: None,
                };
                let verdict = policy::decide(
                    &f.policy,
                    &f.rules[found.id],
                    Some((&caller, &f.tenant, &f.principal)),
                );
                black_box(verdict.is_allow())
            })
        });
        let mut n = 0usize;
        group.bench_with_input(BenchmarkId::new("naive_linear_scan", routes), &f, |b, f| {
            b.iter(|| {
                n = n.wrapping_add(1);
                let path = &f.paths[n % f.paths.len()];
                let perm = f
                    .naive
                    .lookup(&Method::GET, black_box(path))
                    .expect("route");
                black_box(f.naive.allowed(perm))
            })
        });
    }
    group.finish();

    // Decide alone, at 1,000 routes (the pure function the issue budgets at 200 ns).
    let f = fixture(1_000);
    let caller = Caller {
        subject: "u1",
        mfa: false,
        owner: None,
        scope: None,
    };
    c.bench_function("decide_only/1000", |b| {
        let mut n = 0usize;
        b.iter(|| {
            n = n.wrapping_add(1);
            let rule = &f.rules[(n * 15) % f.rules.len()];
            black_box(
                policy::decide(
                    &f.policy,
                    black_box(rule),
                    Some((&caller, &f.tenant, &f.principal)),
                )
                .is_allow(),
            )
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
