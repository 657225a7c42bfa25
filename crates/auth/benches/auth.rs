//! Auth throughput against one in-process instance over real HTTP (loopback), with the
//! default argon2id costs (m=19456 KiB, t=2, p=1): logins/s (one argon2 verify each) and
//! token verifications/s; then one argon2id verification at a time without HTTP (the
//! hasher, its working memory reused), beside the same hash in a fresh 19 MiB mapping each
//! time (what every hash cost before: the page faults and zeroing of 19 MiB). Client and
//! server share this process and the machine's cores.
//!
//! `cargo bench -p auth --bench auth` (or `make bench-all`).

use std::sync::Arc;
use std::time::Duration;

use bench::load::{expect_status, measure};
use serde_json::json;

fn rss_kib() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let data_dir = dir.path().display().to_string();
        let vars = kit::Vars::from_pairs([
            ("DATA_DIR", data_dir.as_str()),
            ("REGISTER", "false"),
            ("LOGIN_MAX_FAILURES", "1000000"),
            ("LOGIN_ACCOUNT_MAX_FAILURES", "1000000"),
        ]);
        let config = auth::Config::from_vars(&vars).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let shutdown = kit::Shutdown::new();
        let server = tokio::spawn(auth::serve(config, listener, shutdown.clone()));

        let client = reqwest::Client::new();
        kit_ready(&client, &base).await;
        let account = json!({"username": "bench", "email": "bench@example.com", "password": "pass123"});
        let res = client.post(format!("{base}/api/auth/register")).json(&account).send().await;
        expect_status(res, 201).await.unwrap();
        let token: String = {
            let res = client
                .post(format!("{base}/api/auth/login"))
                .json(&json!({"username": "bench", "password": "pass123"}))
                .send()
                .await
                .unwrap();
            res.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned()
        };
        let before = rss_kib();

        let mut rows = Vec::new();
        let (c, url) = (client.clone(), format!("{base}/api/auth/login"));
        rows.push(
            measure("login", 200, 8, move |_| {
                let req = c.post(&url).json(&json!({"username": "bench", "password": "pass123"}));
                async move { expect_status(req.send().await, 200).await }
            })
            .await,
        );
        let after_logins = rss_kib();
        let (c, url) = (client.clone(), format!("{base}/api/auth/login"));
        rows.push(
            measure("login (wrong password)", 100, 8, move |_| {
                let req = c.post(&url).json(&json!({"username": "bench", "password": "wrong!"}));
                async move { expect_status(req.send().await, 401).await }
            })
            .await,
        );
        let (c, url) = (client.clone(), format!("{base}/api/auth/verify"));
        rows.push(
            measure("verify", 20_000, 32, move |_| {
                let req = c.get(&url).bearer_auth(&token);
                async move { expect_status(req.send().await, 200).await }
            })
            .await,
        );
        // The cost floor of a login: one argon2id verification, no HTTP, one at a time.
        let hasher = Arc::new(
            auth::Hasher::new(auth::Argon2Params { memory_kib: 19_456, iterations: 2, parallelism: 1 }, 1)
                .await
                .unwrap(),
        );
        let stored = hasher.hash("pass123".into()).await.unwrap();
        rows.push(
            measure("argon2id verify (no HTTP)", 30, 1, move |_| {
                let (hasher, stored) = (hasher.clone(), stored.clone());
                async move {
                    let slot = hasher.slot().await.map_err(|e| e.to_string())?;
                    let (ok, _) =
                        hasher.verify(slot, "pass123".into(), Some(stored)).await.map_err(|e| e.to_string())?;
                    if ok { Ok(()) } else { Err("no match".into()) }
                }
            })
            .await,
        );
        // What each hash cost before the buffers were reused: 19 MiB freshly mapped and
        // faulted in (the same argon2 work, the hasher's `MAPPED_BLOCKS` capacity).
        let argon2 = argon2::Argon2::new(
            argon2::Algorithm::Argon2id,
            argon2::Version::V0x13,
            argon2::Params::new(19_456, 2, 1, None).unwrap(),
        );
        rows.push(
            measure("argon2id hash, fresh mapping each (no HTTP)", 30, 1, move |i| {
                let argon2 = argon2.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let blocks = argon2.params().block_count();
                        let mut memory: Vec<argon2::Block> = Vec::with_capacity(blocks.max(33 * 1024));
                        memory.resize(blocks, argon2::Block::default());
                        let mut out = [0u8; 32];
                        let salt = (i as u128).to_le_bytes();
                        argon2.hash_password_into_with_memory(b"pass123", &salt, &mut out, &mut memory[..])
                    })
                    .await
                    .map_err(|e| e.to_string())?
                    .map_err(|e| e.to_string())
                }
            })
            .await,
        );
        bench::load::table(&rows).print();
        println!(
            "process RSS (server and client): {} KiB before the logins, {} KiB after 200 logins (peak {} KiB)",
            before.0, after_logins.0, after_logins.1
        );
        shutdown.trigger();
        server.await.unwrap().unwrap();
    });
}

async fn kit_ready(client: &reqwest::Client, base: &str) {
    kit::testing::eventually(Duration::from_secs(10), "auth ready", || {
        let req = client.get(format!("{base}/ready"));
        async move { req.send().await.ok().filter(|r| r.status() == 200).map(|_| ()) }
    })
    .await;
}
