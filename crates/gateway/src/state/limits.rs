//! Rate limits and connection counts.
//!
//! [`RateLimits`] counts, in the state store (shared by a cluster, kept across restarts),
//! MAIL FROM and RCPT TO commands per client (an IPv4 address, or an IPv6 client's
//! `/ipv6_prefix` network), per sender domain and per authenticated user in the sliding
//! `[rate_limits] window`, and new connections per address and per prefix in the fixed
//! `connection_window`. [`ConnectionTracker`] counts the connections each address and prefix
//! holds on this node, in memory: a guard per connection gives its slot back when dropped, so
//! a crash never leaves a stale count. A prefix is the client's /`ipv4_prefix` or
//! /`ipv6_prefix` network. Attempts over a limit count too, so a client that keeps hammering
//! stays limited.
//!
//! How it fails: when the store is unavailable the store-backed limits let everything through
//! (fail open; the store logs the outage). The caller answers `451 4.7.1` to an exceeded
//! message or recipient limit and `421 4.7.0` (then closes) to a connection limit.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::{Store, Window, canonical_ip, host_of, network_of};
use crate::config::{Cidr, RateLimitsSection};

/// A limit that was exceeded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exceeded {
    /// The `[rate_limits]` key of the limit.
    pub limit: &'static str,
    /// What was counted: an address, a prefix or a sender domain.
    pub subject: String,
    pub count: u64,
    pub max: u32,
    /// The account, when the limit is one of an account's (`*_per_user`).
    pub user: Option<String>,
}

/// The store-backed rate limits.
pub struct RateLimits {
    store: Store,
    config: RateLimitsSection,
    exempt: Vec<Cidr>,
}

impl RateLimits {
    pub fn new(store: Store, config: &RateLimitsSection, trusted: &[Cidr]) -> RateLimits {
        let mut exempt = config.exempt.clone();
        exempt.extend_from_slice(trusted);
        RateLimits {
            store,
            config: config.clone(),
            exempt,
        }
    }

    /// What the per-address message and recipient limits count: an IPv4 address, or an IPv6
    /// client's whole `/ipv6_prefix` network (a host that changes its address inside its /64,
    /// as privacy addresses do, is still one client; bans count it the same way).
    fn client_of(&self, ip: IpAddr) -> Cidr {
        network_of(ip, 32, self.config.ipv6_prefix)
    }

    fn is_exempt(&self, ip: IpAddr) -> bool {
        self.exempt.iter().any(|n| n.contains(ip))
    }

    /// Counts one event under `key`; `Err` when it makes the count exceed `max` (0 = no limit).
    async fn count(
        &self,
        limit: &'static str,
        kind: &str,
        subject: String,
        max: u32,
        window: Window,
    ) -> Result<(), Exceeded> {
        if max == 0 {
            return Ok(());
        }
        let key = format!("rate:{kind}:{subject}");
        match self.store.hit(&key, 1, window).await {
            Ok(count) if count > u64::from(max) => Err(Exceeded {
                limit,
                subject,
                count,
                max,
                user: None,
            }),
            _ => Ok(()),
        }
    }

    /// A new connection from `ip`.
    pub async fn connection(&self, ip: IpAddr) -> Result<(), Exceeded> {
        if self.is_exempt(ip) {
            return Ok(());
        }
        let c = &self.config;
        let w = Window::Fixed(c.connection_window.0);
        self.count(
            "connection_rate_per_address",
            "conn",
            host_of(ip).to_string(),
            c.connection_rate_per_address,
            w,
        )
        .await?;
        self.count(
            "connection_rate_per_prefix",
            "conn",
            network_of(ip, c.ipv4_prefix, c.ipv6_prefix).to_string(),
            c.connection_rate_per_prefix,
            w,
        )
        .await
    }

    /// A MAIL FROM from `ip` with a sender in `sender_domain` (`None` for the null sender),
    /// by the authenticated `user` if any.
    pub async fn message(
        &self,
        ip: IpAddr,
        sender_domain: Option<&str>,
        user: Option<&str>,
    ) -> Result<(), Exceeded> {
        self.per_message(ip, sender_domain, user, "msg").await
    }

    /// A RCPT TO from `ip` in a transaction from `sender_domain`, by `user` if any.
    pub async fn recipient(
        &self,
        ip: IpAddr,
        sender_domain: Option<&str>,
        user: Option<&str>,
    ) -> Result<(), Exceeded> {
        self.per_message(ip, sender_domain, user, "rcpt").await
    }

    async fn per_message(
        &self,
        ip: IpAddr,
        sender_domain: Option<&str>,
        user: Option<&str>,
        kind: &str,
    ) -> Result<(), Exceeded> {
        let c = &self.config;
        let w = Window::Sliding(c.window.0);
        let msg = kind == "msg";
        // An account's limit holds from every address: a stolen password is used from
        // anywhere, including the webmail host on loopback.
        if let Some(user) = user.filter(|u| !u.is_empty() && u.len() <= 255) {
            let (max, key) = if msg {
                (c.messages_per_user, "messages_per_user")
            } else {
                (c.recipients_per_user, "recipients_per_user")
            };
            let user = user.to_lowercase();
            self.count(key, kind, format!("user:{user}"), max, w)
                .await
                .map_err(|e| Exceeded {
                    user: Some(user),
                    ..e
                })?;
        }
        if self.is_exempt(ip) {
            return Ok(());
        }
        let (per_address, per_domain, address_key, domain_key) = if msg {
            (
                c.messages_per_address,
                c.messages_per_sender_domain,
                "messages_per_address",
                "messages_per_sender_domain",
            )
        } else {
            (
                c.recipients_per_address,
                c.recipients_per_sender_domain,
                "recipients_per_address",
                "recipients_per_sender_domain",
            )
        };
        self.count(
            address_key,
            kind,
            self.client_of(ip).to_string(),
            per_address,
            w,
        )
        .await?;
        if let Some(domain) = sender_domain.filter(|d| !d.is_empty() && d.len() <= 255) {
            self.count(
                domain_key,
                kind,
                format!("@{}", domain.to_ascii_lowercase()),
                per_domain,
                w,
            )
            .await?;
        }
        Ok(())
    }
}

type Counts = Arc<Mutex<HashMap<Cidr, u32>>>;

/// Connections held per address and per prefix on this node.
pub struct ConnectionTracker {
    per_address: u32,
    per_prefix: u32,
    v4: u8,
    v6: u8,
    exempt: Vec<Cidr>,
    counts: Counts,
}

/// A connection's slot; given back when dropped.
pub struct ConnectionGuard {
    counts: Counts,
    keys: Vec<Cidr>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for k in &self.keys {
            if let Some(n) = counts.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    counts.remove(k);
                }
            }
        }
    }
}

impl ConnectionTracker {
    pub fn new(config: &RateLimitsSection, trusted: &[Cidr]) -> ConnectionTracker {
        let mut exempt = config.exempt.clone();
        exempt.extend_from_slice(trusted);
        ConnectionTracker {
            per_address: config.connections_per_address,
            per_prefix: config.connections_per_prefix,
            v4: config.ipv4_prefix,
            v6: config.ipv6_prefix,
            exempt,
            counts: Arc::default(),
        }
    }

    /// Takes a slot for a connection from `ip`, or says which limit it would exceed.
    pub fn try_acquire(&self, ip: IpAddr) -> Result<ConnectionGuard, Exceeded> {
        let ip = canonical_ip(ip);
        let mut keys = Vec::new();
        if !self.exempt.iter().any(|n| n.contains(ip)) {
            if self.per_address > 0 {
                keys.push((host_of(ip), self.per_address, "connections_per_address"));
            }
            if self.per_prefix > 0 {
                keys.push((
                    network_of(ip, self.v4, self.v6),
                    self.per_prefix,
                    "connections_per_prefix",
                ));
            }
        }
        let mut counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        for (k, max, limit) in &keys {
            let n = counts.get(k).copied().unwrap_or(0);
            if n >= *max {
                return Err(Exceeded {
                    limit,
                    subject: k.to_string(),
                    count: u64::from(n) + 1,
                    max: *max,
                    user: None,
                });
            }
        }
        for (k, _, _) in &keys {
            *counts.entry(*k).or_insert(0) += 1;
        }
        Ok(ConnectionGuard {
            counts: self.counts.clone(),
            keys: keys.into_iter().map(|(k, _, _)| k).collect(),
        })
    }

    /// Connections held by `ip`'s address (for tests and diagnostics).
    pub fn held(&self, ip: IpAddr) -> u32 {
        let counts = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        counts.get(&host_of(ip)).copied().unwrap_or(0)
    }
}
