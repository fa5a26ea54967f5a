//! The etcd backend's pure half: where each thing lives in etcd's key space, how stored
//! values become records, and what one watch response means to a replica.
//!
//! ```text
//!  PREFIX policy/lock                          put by every policy commit (the compare target)
//!  PREFIX policy/resources/KIND/NS/NAME        StoredResource; resourceVersion = mod revision
//!  PREFIX policy/history/KIND/NS/NAME/BASE     past versions (BASE: the read revision, 20 digits)
//!  PREFIX registry/instances/ID                Instance, attached to its own lease (the TTL)
//!  PREFIX registry/deregistered/ID             written with the delete: "not an expiry"
//!  PREFIX registry/expired/ID                  created by the one replica that announces it
//!  PREFIX ca/KEY, PREFIX ca_join_tokens/ID     the CA's state; tokens on a lease to their expiry
//!  PREFIX proxies/NODE/REPLICA                 a replica's view of a proxy, on the replica's lease
//! ```

use crate::backend::Remote;
use crate::policy::{set_version, StoredResource};
use crate::registry::Instance;
use crate::store::StoreError;

/// The key layout under one prefix.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// Keys under `prefix` (ends with `/`).
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// Everything the control writes.
    pub fn all(&self) -> &str {
        &self.prefix
    }

    /// The key every policy commit writes and compares.
    pub fn lock(&self) -> String {
        format!("{}policy/lock", self.prefix)
    }

    /// Where current resources live; `key` is `Kind/namespace/name` or a prefix of one.
    pub fn resource(&self, key: &str) -> String {
        format!("{}policy/resources/{key}", self.prefix)
    }

    /// Every past version of `key`.
    pub fn history(&self, key: &str) -> String {
        format!("{}policy/history/{key}/", self.prefix)
    }

    /// One past version of `key`, written by a commit based on revision `base`.
    pub fn history_entry(&self, key: &str, base: u64) -> String {
        format!("{}{base:020}", self.history(key))
    }

    /// Every instance.
    pub fn instances(&self) -> String {
        format!("{}registry/instances/", self.prefix)
    }

    /// One instance.
    pub fn instance(&self, id: &str) -> String {
        format!("{}{id}", self.instances())
    }

    /// The mark a deregistration leaves.
    pub fn deregistered(&self, id: &str) -> String {
        format!("{}registry/deregistered/{id}", self.prefix)
    }

    /// The claim of the replica announcing an expiry.
    pub fn expired(&self, id: &str) -> String {
        format!("{}registry/expired/{id}", self.prefix)
    }

    /// A CA state key.
    pub fn ca(&self, key: &str) -> String {
        format!("{}ca/{key}", self.prefix)
    }

    /// A join token.
    pub fn token(&self, id: &str) -> String {
        format!("{}ca_join_tokens/{id}", self.prefix)
    }

    /// Every replica's view of every proxy.
    pub fn proxies(&self) -> String {
        format!("{}proxies/", self.prefix)
    }

    /// Replica `replica`'s view of proxy `node`.
    pub fn proxy(&self, node: &str, replica: &str) -> String {
        format!("{}{node}/{replica}", self.proxies())
    }

    /// What a watched key is to a replica.
    fn classify<'k>(&self, key: &'k str) -> Option<Watched<'k>> {
        let rest = key.strip_prefix(self.prefix.as_str())?;
        if rest.starts_with("policy/resources/") {
            Some(Watched::Resource)
        } else if let Some(id) = rest.strip_prefix("registry/instances/") {
            Some(Watched::Instance(id))
        } else {
            rest.strip_prefix("registry/deregistered/")
                .map(Watched::Deregistered)
        }
    }
}

enum Watched<'k> {
    Resource,
    Instance(&'k str),
    Deregistered(&'k str),
}

/// A stored resource as read: its version is the key's mod revision.
pub fn resource(key: &str, value: &[u8], mod_revision: i64) -> Result<StoredResource, StoreError> {
    let mut record: StoredResource =
        serde_json::from_slice(value).map_err(|source| StoreError::Decode {
            key: key.to_owned(),
            source,
        })?;
    record.resource_version = u64::try_from(mod_revision).unwrap_or(0);
    if !record.deleted {
        set_version(&mut record.document, record.resource_version);
    }
    Ok(record)
}

/// A stored instance.
pub fn instance(key: &str, value: &[u8]) -> Result<Instance, StoreError> {
    serde_json::from_slice(value).map_err(|source| StoreError::Decode {
        key: key.to_owned(),
        source,
    })
}

/// One event of a watch response.
#[derive(Debug, Clone)]
pub struct Event<'a> {
    /// The key.
    pub key: &'a str,
    /// The value (empty for deletions).
    pub value: &'a [u8],
    /// A put (else a delete).
    pub put: bool,
}

/// What the events of one watch response (all of one or more whole transactions) mean:
/// instances that came and went, then the revision, when they touched policies or instances.
pub fn remote_changes(keys: &Keys, revision: u64, events: &[Event<'_>]) -> Vec<Remote> {
    let classified: Vec<(Watched<'_>, &Event<'_>)> = events
        .iter()
        .filter_map(|e| keys.classify(e.key).map(|w| (w, e)))
        .collect();
    let deregistered = |id: &str| {
        classified
            .iter()
            .any(|(w, e)| e.put && matches!(w, Watched::Deregistered(d) if *d == id))
    };
    let mut out = Vec::new();
    let mut touched = false;
    for (watched, event) in &classified {
        match watched {
            Watched::Resource => touched = true,
            Watched::Instance(id) => {
                touched = true;
                if !event.put {
                    out.push(Remote::InstanceGone {
                        id: (*id).to_owned(),
                        expired: !deregistered(id),
                    });
                } else if let Ok(i) = instance(event.key, event.value) {
                    out.push(Remote::InstancePut(i));
                } else {
                    tracing::warn!(key = event.key, "undecodable instance in the store");
                }
            }
            Watched::Deregistered(_) => {}
        }
    }
    if touched {
        out.push(Remote::Revision(revision));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instance_json(id: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "id": id, "service": "api", "address": "10.0.0.1", "port": 80,
            "namespace": "default", "ttlSeconds": 5, "registeredAt": 1,
        }))
        .unwrap()
    }

    #[test]
    fn a_deleted_instance_without_a_deregistration_mark_expired() {
        let keys = Keys::new("/s/");
        let (a, b) = (keys.instance("a"), keys.instance("b"));
        let mark = keys.deregistered("b");
        let events = [
            Event {
                key: &a,
                value: b"",
                put: false,
            },
            Event {
                key: &b,
                value: b"",
                put: false,
            },
            Event {
                key: &mark,
                value: b"",
                put: true,
            },
        ];
        assert_eq!(
            remote_changes(&keys, 7, &events),
            [
                Remote::InstanceGone {
                    id: "a".into(),
                    expired: true
                },
                Remote::InstanceGone {
                    id: "b".into(),
                    expired: false
                },
                Remote::Revision(7),
            ]
        );
    }

    #[test]
    fn puts_bring_instances_and_only_policy_or_registry_keys_a_revision() {
        let keys = Keys::new("/s/");
        let key = keys.instance("a");
        let value = instance_json("a");
        let changes = remote_changes(
            &keys,
            3,
            &[Event {
                key: &key,
                value: &value,
                put: true,
            }],
        );
        assert!(
            matches!(&changes[..], [Remote::InstancePut(i), Remote::Revision(3)] if i.id == "a")
        );
        let token = keys.token("t");
        let lock = keys.lock();
        let other = [
            Event {
                key: &token,
                value: b"{}",
                put: true,
            },
            Event {
                key: &lock,
                value: b"",
                put: true,
            },
            Event {
                key: "/elsewhere/policy/resources/x",
                value: b"{}",
                put: true,
            },
        ];
        assert!(remote_changes(&keys, 4, &other).is_empty());
        let resource = keys.resource("Service/default/api");
        assert_eq!(
            remote_changes(
                &keys,
                5,
                &[Event {
                    key: &resource,
                    value: b"{}",
                    put: true
                }]
            ),
            [Remote::Revision(5)]
        );
    }

    #[test]
    fn a_resource_takes_its_version_from_the_mod_revision() {
        let stored = serde_json::json!({
            "kind": "Service", "namespace": "default", "name": "api", "resourceVersion": 0,
            "document": {"metadata": {"name": "api"}}, "updatedAt": 1,
        });
        let r = resource("k", &serde_json::to_vec(&stored).unwrap(), 42).unwrap();
        assert_eq!(r.resource_version, 42);
        assert_eq!(r.document["metadata"]["resourceVersion"], "42");
        assert!(resource("k", b"nope", 1).is_err());
    }
}
