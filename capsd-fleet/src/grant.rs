//! Least privilege with etcd's authentication (RBAC): a user and role per host that may write
//! only that host's keys and add documents, and a read-only role for readers.
//!
//! A host's role (`capsd-host-ID`) has read-write on exactly its own keys: `P/hosts/ID`,
//! `P/claims/ID` and `P/refs/Q/ID` for every query an agent publishes
//! ([`crate::published_queries`], one exact key each), and read-write on `P/docs/` (a
//! document is put only when absent, in a transaction that compares its version, which
//! needs read). etcd refuses that user any write to another host's keys. It can still
//! overwrite or delete a shared document: readers check each document against its hash, so
//! such a document is never believed (the hosts referring to it are `unknown`, named), and
//! its own agent puts a missing one back on its next change.
//!
//! The readers' role (`capsd-reader`) has read on `P/`. Run these as etcd's root.

use crate::etcd::{prefix_end, Client, Perm};
use crate::{FleetError, Layout};

fn e(err: crate::etcd::EtcdError) -> FleetError {
    FleetError::etcd("", err)
}

/// Make (or update) `user` with password `password` and role `capsd-host-ID`; returns the role.
pub async fn grant_host(
    client: &Client,
    layout: &Layout,
    id: &str,
    user: &str,
    password: &str,
) -> Result<String, FleetError> {
    crate::validate_host_id(id)?;
    let role = format!("capsd-host-{id}");
    client.role_add(&role).await.map_err(e)?;
    let mut exact = vec![layout.host(id), layout.claim(id)];
    exact.extend(crate::published_queries().iter().map(|q| layout.host_doc(id, q)));
    for key in exact {
        client.role_grant(&role, Perm::ReadWrite, key.as_bytes(), &[]).await.map_err(e)?;
    }
    let docs = layout.docs();
    client.role_grant(&role, Perm::ReadWrite, docs.as_bytes(), &prefix_end(docs.as_bytes())).await.map_err(e)?;
    client.user_add(user, password).await.map_err(e)?;
    client.user_grant_role(user, &role).await.map_err(e)?;
    Ok(role)
}

/// Make (or update) `user` with password `password` and the read-only role `capsd-reader`.
pub async fn grant_reader(client: &Client, layout: &Layout, user: &str, password: &str) -> Result<String, FleetError> {
    let role = "capsd-reader".to_owned();
    client.role_add(&role).await.map_err(e)?;
    let all = layout.all();
    client.role_grant(&role, Perm::Read, all.as_bytes(), &prefix_end(all.as_bytes())).await.map_err(e)?;
    client.user_add(user, password).await.map_err(e)?;
    client.user_grant_role(user, &role).await.map_err(e)?;
    Ok(role)
}
