//! The write side of the Redis schema (DESIGN.md §5), for `portcullis roles` and reviews.
//!
//! Off the request path: one plain connection per command. Every change is a read-modify-write
//! of one hash under `WATCH`, committed with `MULTI`/`EXEC` together with the invalidation
//! `PUBLISH`, so a concurrent writer makes the transaction retry instead of being overwritten,
//! and gateways evict exactly when the data changes. Reading parses as strictly as the store.

use std::collections::HashMap;

use redis::AsyncCommands;
use redis::aio::MultiplexedConnection;
use serde::{Deserialize, Serialize};

use crate::config::{RedisSettings, RedisTarget};
use crate::policy::{RoleDef, SubjectData, TenantData};

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("invalid data under `{key}`: {message}")]
    Data { key: String, message: String },
    #[error("`{key}` kept changing under concurrent writers; try again")]
    Contention { key: String },
}

/// A custom role's JSON in `{prefix}:{tenant}:roles`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CustomRoleJson {
    #[serde(default)]
    pub permissions: Vec<String>,
    #[serde(default)]
    pub own: Vec<String>,
    #[serde(default)]
    pub inherits: Vec<String>,
}

/// A connection to the grant data.
pub struct Admin {
    conn: MultiplexedConnection,
    prefix: String,
}

const RETRIES: usize = 5;

fn list(key: &str, field: &str, value: &str) -> Result<Vec<String>, AdminError> {
    serde_json::from_str(value).map_err(|e| AdminError::Data {
        key: key.to_owned(),
        message: format!("`{field}` is not a JSON array of strings: {e}"),
    })
}

fn json(v: &[String]) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "[]".to_owned())
}

impl Admin {
    pub async fn connect(settings: &RedisSettings) -> Result<Admin, AdminError> {
        let auth = |mut rs: redis::RedisConnectionInfo| {
            if let Some(user) = &settings.username {
                rs = rs.set_username(user);
            }
            if let Some(password) = &settings.password {
                rs = rs.set_password(password);
            }
            rs
        };
        let conn = match &settings.target {
            RedisTarget::Url(url) => {
                let info = redis::IntoConnectionInfo::into_connection_info(url.as_str())?;
                let rs = auth(info.redis_settings().clone());
                redis::Client::open(info.set_redis_settings(rs))?
                    .get_multiplexed_async_connection()
                    .await?
            }
            // Writes go to the master the sentinels name now.
            RedisTarget::Sentinel(s) => {
                let node = auth(redis::RedisConnectionInfo::default().set_db(s.db));
                let mut node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(node);
                if s.tls {
                    node = node.set_tls_mode(redis::TlsMode::Secure);
                }
                let mut client = redis::sentinel::SentinelClient::build(
                    s.sentinels.clone(),
                    s.master_name.as_str(),
                    Some(node),
                    redis::sentinel::SentinelServerType::Master,
                )?;
                client.get_async_connection().await?
            }
        };
        Ok(Admin {
            conn,
            prefix: settings.prefix.clone(),
        })
    }

    pub fn user_key(&self, tenant: &str, subject: &str) -> String {
        format!("{}:{tenant}:user:{subject}", self.prefix)
    }

    fn tenant_key(&self, tenant: &str) -> String {
        format!("{}:{tenant}:tenant", self.prefix)
    }

    fn roles_key(&self, tenant: &str) -> String {
        format!("{}:{tenant}:roles", self.prefix)
    }

    fn channel(&self) -> String {
        format!("{}:invalidate", self.prefix)
    }

    async fn hash(&self, key: &str) -> Result<HashMap<String, String>, AdminError> {
        let mut conn = self.conn.clone();
        Ok(conn.hgetall(key).await?)
    }

    /// A principal's assignment (empty when absent).
    pub async fn subject(&self, tenant: &str, subject: &str) -> Result<SubjectData, AdminError> {
        let key = self.user_key(tenant, subject);
        parse_subject(&key, &self.hash(&key).await?)
    }

    /// A tenant's record and custom roles.
    pub async fn tenant(&self, tenant: &str) -> Result<TenantData, AdminError> {
        let entitlements = self.entitlements(tenant).await?;
        let mut data = TenantData {
            tier: entitlements.tier,
            features: entitlements.features,
            ..TenantData::default()
        };
        let key = self.roles_key(tenant);
        let mut roles: Vec<(String, String)> = self.hash(&key).await?.into_iter().collect();
        roles.sort();
        for (name, value) in roles {
            let role: CustomRoleJson =
                serde_json::from_str(&value).map_err(|e| AdminError::Data {
                    key: key.clone(),
                    message: format!("custom role `{name}`: {e}"),
                })?;
            data.custom_roles.push(RoleDef {
                name,
                permissions: role.permissions,
                own: role.own,
                inherits: role.inherits,
                level: None,
                all_scopes: false,
            });
        }
        Ok(data)
    }

    /// Subjects with an assignment in `tenant` (SCAN, never KEYS: admin tooling must not
    /// block the Redis the gateways read).
    pub async fn subjects(&self, tenant: &str) -> Result<Vec<String>, AdminError> {
        let prefix = self.user_key(tenant, "");
        let mut conn = self.conn.clone();
        let mut out = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(format!("{prefix}*"))
                .arg("COUNT")
                .arg(500)
                .query_async(&mut conn)
                .await?;
            out.extend(
                keys.iter()
                    .filter_map(|k| k.strip_prefix(&prefix).map(str::to_owned)),
            );
            if next == 0 {
                break;
            }
            cursor = next;
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// Read-modify-write one principal atomically. `change` sees the current data and returns
    /// the new data (or an error, which aborts). Returns `(before, after)`.
    pub async fn update_subject<E>(
        &self,
        tenant: &str,
        subject: &str,
        mut change: impl FnMut(&SubjectData) -> Result<SubjectData, E>,
    ) -> Result<Result<(SubjectData, SubjectData), E>, AdminError> {
        let key = self.user_key(tenant, subject);
        let payload = format!("{tenant}:{subject}");
        for _ in 0..RETRIES {
            let mut conn = self.conn.clone();
            redis::cmd("WATCH")
                .arg(&key)
                .query_async::<()>(&mut conn)
                .await?;
            let before = parse_subject(&key, &conn.hgetall(&key).await?)?;
            let after = match change(&before) {
                Ok(after) => after,
                Err(e) => {
                    redis::cmd("UNWATCH").query_async::<()>(&mut conn).await?;
                    return Ok(Err(e));
                }
            };
            let mut pipe = redis::pipe();
            pipe.atomic().del(&key).ignore();
            let fields = [
                ("roles", &after.roles),
                ("grant", &after.grant),
                ("deny", &after.deny),
                ("scopes", &after.scopes),
            ];
            for (field, values) in fields {
                if !values.is_empty() {
                    pipe.hset(&key, field, json(values)).ignore();
                }
            }
            pipe.publish(self.channel(), &payload).ignore();
            // EXEC answers nil when a watched key changed: retry on fresh data.
            let done: Option<()> = pipe.query_async(&mut conn).await?;
            if done.is_some() {
                return Ok(Ok((before, after)));
            }
        }
        Err(AdminError::Contention { key })
    }

    /// A tenant custom role as stored (the raw JSON text), `None` when the tenant has none of
    /// that name. Raw, so a definition the store would refuse can still be shown and reset.
    pub async fn custom_role(
        &self,
        tenant: &str,
        name: &str,
    ) -> Result<Option<String>, AdminError> {
        let key = self.roles_key(tenant);
        Ok(self.hash(&key).await?.remove(name))
    }

    /// Set (or with `None`, delete) a tenant custom role if its stored text is still
    /// `expected` (what `custom_role` returned when the change was audited).
    ///
    /// The check and the write are one transaction: the stored text is re-read under `WATCH`
    /// on the same connection that runs the `MULTI`/`EXEC`, so `expected` is exactly the state
    /// the write replaces; on a concurrent change nothing is written (`Commit::Changed`).
    pub async fn replace_custom_role(
        &self,
        tenant: &str,
        name: &str,
        expected: Option<&str>,
        role: Option<&CustomRoleJson>,
    ) -> Result<Commit, AdminError> {
        let key = self.roles_key(tenant);
        let text = role.map(|r| serde_json::to_string(r).unwrap_or_default());
        self.commit_if_unchanged(
            &key,
            // A role change touches every principal holding it: invalidate the whole tenant.
            tenant,
            &expected.map(str::to_owned),
            |hash| Ok(hash.get(name).cloned()),
            |pipe| {
                match &text {
                    Some(text) => pipe.hset(&key, name, text).ignore(),
                    None => pipe.hdel(&key, name).ignore(),
                };
            },
        )
        .await
    }

    /// A tenant's entitlements (`{prefix}:{tenant}:tenant`), parsed as strictly as the store.
    pub async fn entitlements(&self, tenant: &str) -> Result<Entitlements, AdminError> {
        let key = self.tenant_key(tenant);
        parse_entitlements(&key, &self.hash(&key).await?)
    }

    /// Set a tenant's tier and/or features if its entitlements are still `expected` (what
    /// `entitlements` returned when the change was audited). Fields not given are kept.
    ///
    /// Re-read under `WATCH` on the connection that runs the `MULTI`/`EXEC`, like
    /// `replace_custom_role`: on a concurrent change nothing is written.
    pub async fn replace_entitlements(
        &self,
        tenant: &str,
        expected: &Entitlements,
        tier: Option<&str>,
        features: Option<&[String]>,
    ) -> Result<Commit, AdminError> {
        let key = self.tenant_key(tenant);
        self.commit_if_unchanged(
            &key,
            tenant,
            expected,
            |hash| parse_entitlements(&key, hash),
            |pipe| {
                if let Some(tier) = tier {
                    pipe.hset(&key, "tier", tier).ignore();
                }
                if let Some(features) = features {
                    pipe.hset(&key, "features", json(features)).ignore();
                }
            },
        )
        .await
    }

    /// `WATCH key`, read the hash, and when `read` of it is `expected`, run `write` and the
    /// invalidation `PUBLISH` of `payload` in one `MULTI`/`EXEC`. An aborted `EXEC` (the key was
    /// written meanwhile) retries on fresh data, so a write that left it as expected is fine.
    async fn commit_if_unchanged<T: PartialEq>(
        &self,
        key: &str,
        payload: &str,
        expected: &T,
        read: impl Fn(&HashMap<String, String>) -> Result<T, AdminError>,
        write: impl Fn(&mut redis::Pipeline),
    ) -> Result<Commit, AdminError> {
        for _ in 0..RETRIES {
            let mut conn = self.conn.clone();
            redis::cmd("WATCH")
                .arg(key)
                .query_async::<()>(&mut conn)
                .await?;
            let current = match read(&conn.hgetall(key).await?) {
                Ok(current) => current,
                Err(err) => {
                    redis::cmd("UNWATCH").query_async::<()>(&mut conn).await?;
                    return Err(err);
                }
            };
            if current != *expected {
                redis::cmd("UNWATCH").query_async::<()>(&mut conn).await?;
                return Ok(Commit::Changed);
            }
            let mut pipe = redis::pipe();
            pipe.atomic();
            write(&mut pipe);
            pipe.publish(self.channel(), payload).ignore();
            let done: Option<()> = pipe.query_async(&mut conn).await?;
            if done.is_some() {
                return Ok(Commit::Done);
            }
        }
        Err(AdminError::Contention {
            key: key.to_owned(),
        })
    }
}

/// The outcome of a checked write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum Commit {
    /// Written, together with its invalidation.
    Done,
    /// The record was no longer what the change was computed from; nothing was written.
    Changed,
}

/// A tenant's entitlements: the `tier` and `features` fields of `{prefix}:{tenant}:tenant`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Entitlements {
    pub tier: Option<String>,
    pub features: Vec<String>,
}

impl Entitlements {
    /// The entitlements after setting `tier` and/or `features` (what is not given is kept).
    pub fn with(&self, tier: Option<&str>, features: Option<&[String]>) -> Entitlements {
        Entitlements {
            tier: tier.map(str::to_owned).or_else(|| self.tier.clone()),
            features: features.map_or_else(|| self.features.clone(), <[String]>::to_vec),
        }
    }
}

fn parse_entitlements(
    key: &str,
    hash: &HashMap<String, String>,
) -> Result<Entitlements, AdminError> {
    let mut data = Entitlements::default();
    for (field, value) in hash {
        match field.as_str() {
            "tier" => data.tier = Some(value.clone()),
            "features" => data.features = list(key, field, value)?,
            other => {
                return Err(AdminError::Data {
                    key: key.to_owned(),
                    message: format!("unknown field `{other}`"),
                });
            }
        }
    }
    Ok(data)
}

fn parse_subject(key: &str, hash: &HashMap<String, String>) -> Result<SubjectData, AdminError> {
    let mut data = SubjectData::default();
    for (field, value) in hash {
        let values = list(key, field, value)?;
        match field.as_str() {
            "roles" => data.roles = values,
            "grant" => data.grant = values,
            "deny" => data.deny = values,
            "scopes" => data.scopes = values,
            other => {
                return Err(AdminError::Data {
                    key: key.to_owned(),
                    message: format!("unknown field `{other}`"),
                });
            }
        }
    }
    Ok(data)
}
