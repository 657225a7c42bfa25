//! Partitions: the links between instances and the registry, which orch can cut. With
//! `ORCH_PARTITIONS=1` in orch's environment, every instance that talks to the registry
//! (every one but the registry's own) is given a [`Link`] of its own: a TCP relay on a
//! loopback port of orch's that its `SERVICE_REGISTRY_URL` names instead of the registry.
//! The link outlives the instance's processes (a restarted process finds the same port).
//!
//! A cut link closes every connection it relays at once and closes each new one as it is
//! accepted, until it is healed: the instance's registrations, heartbeats and watches fail
//! (a refusing network, not a silent one), so the registry expires it while its process
//! runs on, still serving whoever reaches it directly. Nothing else is cut: the balancer
//! and orch's probes still reach the instance (the balancer stops routing to it once the
//! registry no longer lists it as healthy). Without the variable nothing changes: instances
//! talk to the registry directly, and a partition experiment is refused.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

use crate::reconcile::InstanceId;

/// orch's environment variable that gives instances links.
pub const VAR: &str = "ORCH_PARTITIONS";

/// One instance's link to the registry.
pub struct Link {
    port: u16,
    cut: watch::Sender<bool>,
    relay: AbortHandle,
}

impl Link {
    /// A link on a new loopback port to the registry's `upstream` port. Needs a tokio runtime.
    pub fn open(upstream: u16) -> std::io::Result<Link> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let port = listener.local_addr()?.port();
        let (cut, _) = watch::channel(false);
        let relay = tokio::spawn(relay(listener, SocketAddr::from(([127, 0, 0, 1], upstream)), cut.clone()));
        Ok(Link { port, cut, relay: relay.abort_handle() })
    }

    /// The URL an instance is given as the registry's.
    pub fn url(&self) -> String {
        format!("http://localhost:{}", self.port)
    }

    /// Cuts (true) or heals (false) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        // Its connections are tasks of the relay's `JoinSet`: they end with it.
        self.relay.abort();
    }
}

/// Accepts on `listener` and relays each connection to `upstream` while the link is whole.
async fn relay(listener: TcpListener, upstream: SocketAddr, cut: watch::Sender<bool>) {
    let mut connections = JoinSet::new();
    loop {
        let mut conn = match listener.accept().await {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of descriptors, say: a moment's rest rather than a spinning loop.
                tracing::debug!(error = %e, "link: accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        while connections.try_join_next().is_some() {}
        if *cut.borrow() {
            drop(conn);
            continue;
        }
        let mut rx = cut.subscribe();
        connections.spawn(async move {
            let Ok(mut up) = TcpStream::connect(upstream).await else { return };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut conn, &mut up) => {}
                _ = rx.wait_for(|cut| *cut) => {}
            }
        });
    }
}

/// The links of a cluster's instances; `None` inside when partitions are off.
#[derive(Default)]
pub struct Links {
    links: Option<BTreeMap<InstanceId, Link>>,
}

impl Links {
    /// Links for every instance when `on`, else none.
    pub fn new(on: bool) -> Self {
        Self { links: on.then(BTreeMap::new) }
    }

    pub fn enabled(&self) -> bool {
        self.links.is_some()
    }

    /// The registry URL instance `id` is given: its link's (made now if it has none yet, to
    /// the registry's `upstream` port); `None` when partitions are off or no port was free.
    pub fn url_for(&mut self, id: &InstanceId, upstream: u16) -> Option<String> {
        let links = self.links.as_mut()?;
        if !links.contains_key(id) {
            match Link::open(upstream) {
                Ok(link) => {
                    links.insert(id.clone(), link);
                }
                Err(e) => {
                    tracing::warn!(instance = %id, error = %e, "no link to the registry: it talks to it directly");
                    return None;
                }
            }
        }
        links.get(id).map(Link::url)
    }

    pub fn get(&self, id: &InstanceId) -> Option<&Link> {
        self.links.as_ref()?.get(id)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// An echo server on a loopback port.
    async fn echo() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((mut conn, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 64];
                    while let Ok(n @ 1..) = conn.read(&mut buf).await {
                        if conn.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        port
    }

    async fn round_trip(conn: &mut TcpStream) -> std::io::Result<Vec<u8>> {
        conn.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), conn.read_exact(&mut buf)).await??;
        Ok(buf.to_vec())
    }

    #[tokio::test]
    async fn a_cut_link_closes_its_connections_and_a_healed_one_relays_again() {
        let mut links = Links::new(true);
        let id = InstanceId::new("data", 1);
        let url = links.url_for(&id, echo().await).unwrap();
        assert_eq!(links.url_for(&id, 1), Some(url.clone()), "the same link for the instance's next process");
        let addr = url.trim_start_matches("http://localhost:").parse::<u16>().unwrap();
        let connect = || TcpStream::connect(("127.0.0.1", addr));
        let mut before = connect().await.unwrap();
        assert_eq!(round_trip(&mut before).await.unwrap(), b"ping");

        let link = links.get(&id).unwrap();
        link.set_cut(true);
        // The open connection is closed: its next exchange fails (an end of file or a reset).
        assert!(round_trip(&mut before).await.is_err());
        // So is a new one.
        let mut during = connect().await.unwrap();
        assert!(round_trip(&mut during).await.is_err());

        link.set_cut(false);
        let mut after = connect().await.unwrap();
        assert_eq!(round_trip(&mut after).await.unwrap(), b"ping");

        assert!(Links::new(false).url_for(&id, 1).is_none(), "off: instances talk to the registry directly");
    }
}
