//! Expiry of silent records, and kit's client keeping an instance registered through a
//! registry restart.

use std::os::fd::{FromRawFd, IntoRawFd};
use std::time::Duration;

use kit::registry::{Registration, RegistryClient};
use serde_json::Map;

use crate::{TOKEN, TestRegistry, eventually};

#[tokio::test]
async fn silent_records_turn_unhealthy_then_disappear() {
    let reg = TestRegistry::start(&[("STALE_TIMEOUT_MS", "300"), ("REMOVE_TIMEOUT_MS", "600")]).await;
    let client = reg.client();
    let registration: Registration = serde_json::from_value(crate::registration("data-1", "data")).unwrap();
    client.register(&registration).await.unwrap();
    let healthy = client.services(None).await.unwrap();
    assert!(healthy.services[0].healthy);

    let list = eventually(Duration::from_secs(3), "record marked unhealthy", || async {
        let list = client.services(None).await.unwrap();
        (list.total == 1 && !list.services[0].healthy).then_some(list)
    })
    .await;
    assert!(list.index > healthy.index, "going unhealthy is a change");

    eventually(Duration::from_secs(3), "record removed", || async {
        (client.services(None).await.unwrap().total == 0).then_some(())
    })
    .await;
    // Removed by expiry, not on purpose: a late heartbeat gets 404 and the client registers again.
    assert_eq!(client.heartbeat("data-1").await.unwrap(), kit::registry::Beat::Unknown);
    reg.stop().await;
}

#[tokio::test]
async fn client_registers_again_after_a_registry_restart() {
    // One socket, kept open across both registries, as orch keeps it across a restart.
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let spare = std_listener.try_clone().unwrap().into_raw_fd();
    let first = TestRegistry::start_on(tokio::net::TcpListener::from_std(std_listener).unwrap(), &[]);

    let interval = Duration::from_millis(300);
    let registration = Registration {
        service_id: "auth-1".into(),
        service_type: "auth".into(),
        url: "http://localhost:3001".into(),
        name: None,
        metadata: Map::new(),
    };
    let client = RegistryClient::new(&first.url, Some(kit::secret::Secret::new(TOKEN)));
    let instance = kit::Shutdown::new();
    let task = tokio::spawn(kit::registry::maintain(client.clone(), registration, interval, instance.clone(), true));

    eventually(Duration::from_secs(3), "first registration", || async {
        client.services(None).await.ok().filter(|l| l.total == 1)
    })
    .await;
    let url = first.url.clone();
    first.stop().await;

    // SAFETY: `spare` is a listening socket this test owns and hands over once.
    #[allow(unsafe_code)]
    let reopened = unsafe { std::net::TcpListener::from_raw_fd(spare) };
    let second = TestRegistry::start_on(tokio::net::TcpListener::from_std(reopened).unwrap(), &[]);
    assert_eq!(second.url, url);
    let restarted = std::time::Instant::now();
    assert_eq!(client.services(None).await.unwrap().total, 0, "the new registry starts empty");

    let list = eventually(Duration::from_secs(3), "registration after the restart", || async {
        client.services(None).await.ok().filter(|l| l.total == 1)
    })
    .await;
    assert!(restarted.elapsed() <= interval + Duration::from_millis(500), "listed again within one heartbeat");
    assert_eq!(list.services[0].service_id, "auth-1");

    // Shutting the instance down deregisters it.
    instance.trigger();
    task.await.unwrap();
    assert_eq!(client.services(None).await.unwrap().total, 0);
    second.stop().await;
}
