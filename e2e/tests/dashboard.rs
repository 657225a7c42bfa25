//! The dashboard in a real headless Chromium, driven over WebDriver (Debian's chromium and
//! chromium-driver; `scripts/deps.sh` installs them).
//!
//! The test starts a small cluster of real `orch run` processes on sockets it holds: a
//! registry, three compute instances (they register themselves), the balancer and the
//! detector (checking every 500 ms). The page must show every registered instance up; then
//! compute-2 is killed with SIGKILL (its socket stays open, held by the test, so checks of
//! it hang until their timeout, as under orch) and the page must show it down, then up
//! again once it is restarted on the same socket, and finally ride out a restart of the
//! detector itself by reconnecting — all without a reload.
//!
//! The second test runs the whole cluster under a real `orch apply` (the shipped topology on
//! automatic ports): the page shows every instance with the pid orch reports; one instance
//! is killed with SIGKILL by that pid, and the page shows the crash (the "crashed" badge, the
//! restart count, orch's `exited` event in the feed) and the instance up again under its new
//! pid, without a reload. Screenshots go to `target/e2e-screenshots/`.

use std::net::{SocketAddr, TcpListener};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use e2e::topology::Topology;
use e2e::{Proc, eventually, listener};
use fantoccini::{Client, ClientBuilder};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::{Value, json};

const TOKEN: &str = "e2e-dashboard-cluster-token";
const JWT_SECRET: &str = "e2e-dashboard-jwt-secret-0123456789";
const DEADLINE: Duration = Duration::from_secs(30);

/// `program` on the PATH.
fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

fn screenshot_dir() -> PathBuf {
    let dir = e2e::log_dir().parent().expect("target/e2e-logs has a parent").join("e2e-screenshots");
    std::fs::create_dir_all(&dir).expect("creating target/e2e-screenshots");
    dir
}

/// chromedriver and the Chromium it drives, in their own process group, which is killed
/// (by its id) when this is dropped, whatever happened to the session.
struct Browser {
    client: Client,
    driver: Proc,
    _profile: tempfile::TempDir,
}

impl Browser {
    /// Chromium and chromedriver on the PATH, or a clear failure.
    fn binaries() -> (PathBuf, PathBuf) {
        let missing = "run `make deps` (scripts/deps.sh installs Debian's chromium and chromium-driver)";
        let chromium = find("chromium").unwrap_or_else(|| panic!("Chromium is missing: {missing}"));
        let chromedriver = find("chromedriver").unwrap_or_else(|| panic!("chromedriver is missing: {missing}"));
        (chromium, chromedriver)
    }

    async fn start((chromium, chromedriver): (PathBuf, PathBuf)) -> Self {
        let port = {
            let (socket, addr) = listener();
            drop(socket);
            addr.port()
        };
        let log = std::fs::File::create(e2e::log_dir().join("chromedriver.log")).expect("creating the log");
        let mut command = Command::new(chromedriver);
        command
            .arg(format!("--port={port}"))
            .arg("--allowed-ips=127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("cloning the log"))
            .stderr(log)
            .process_group(0);
        let driver = Proc::command("chromedriver", &mut command);
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::new();
        eventually(Duration::from_secs(20), "chromedriver ready", || async {
            let status: Value = http.get(format!("{base}/status")).send().await.ok()?.json().await.ok()?;
            (status["value"]["ready"] == true).then_some(())
        })
        .await;

        let profile = tempfile::tempdir().expect("a profile directory");
        let args = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--hide-scrollbars",
            "--window-size=1440,900",
        ]
        .map(String::from)
        .into_iter()
        .chain([format!("--user-data-dir={}", profile.path().display())])
        .collect::<Vec<_>>();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("browserName".into(), json!("chrome"));
        capabilities.insert("goog:chromeOptions".into(), json!({"binary": chromium, "args": args}));
        let client = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new())
            .capabilities(capabilities)
            .connect(&base)
            .await
            .unwrap_or_else(|e| panic!("starting a Chromium session through chromedriver: {e}"));
        let browser = Self { client, driver, _profile: profile };
        browser.viewport(1440, 900).await;
        browser
    }

    /// Sizes the window so that the page itself (and so each screenshot) is `width` x `height`.
    async fn viewport(&self, width: u64, height: u64) {
        let (outer_w, outer_h) = self.client.get_window_size().await.expect("the window's size");
        let inner = self.eval("return [window.innerWidth, window.innerHeight];").await;
        let (inner_w, inner_h) = (inner[0].as_u64().unwrap(), inner[1].as_u64().unwrap());
        let (w, h) = (outer_w + width - inner_w.min(width), outer_h + height - inner_h.min(height));
        self.client.set_window_size(w as u32, h as u32).await.expect("sizing the window");
    }

    /// Runs `script` (a function body returning a value) in the page.
    async fn eval(&self, script: &str) -> Value {
        self.client.execute(script, vec![]).await.unwrap_or_else(|e| panic!("running {script:?}: {e}"))
    }

    async fn screenshot(&self, name: &str) -> PathBuf {
        let png = self.client.screenshot().await.expect("a screenshot");
        let path = screenshot_dir().join(name);
        std::fs::write(&path, png).expect("writing the screenshot");
        path
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = killpg(Pid::from_raw(self.driver.pid() as i32), Signal::SIGKILL);
    }
}

/// What the page shows: the socket's state, each instance row's status, the number of
/// bars in the distribution chart, and the alert feed's texts.
const PAGE_STATE: &str = r#"
    const rows = {};
    for (const row of document.querySelectorAll('li.instance')) rows[row.dataset.instance] = row.dataset.status;
    return {
        conn: document.getElementById('conn').dataset.state,
        rows,
        bars: document.querySelectorAll('#distribution g[data-instance]').length,
        alerts: [...document.querySelectorAll('#alerts li')].map((li) => li.textContent),
        marker: window.__sameDocument || null,
    };
"#;

/// `(serviceId, type)` of each alert in a `GET /api/alerts` answer.
fn alert_kinds(alerts: &Value) -> Vec<(&str, &str)> {
    let alerts = alerts["alerts"].as_array().expect("alerts is an array");
    alerts.iter().map(|a| (a["serviceId"].as_str().unwrap(), a["type"].as_str().unwrap())).collect()
}

/// The page's state as `script` reads it, once `ready` accepts it.
async fn page_until(browser: &Browser, script: &str, what: &str, ready: impl Fn(&Value) -> bool) -> Value {
    eventually(DEADLINE, what, || async {
        let state = browser.eval(script).await;
        ready(&state).then_some(state)
    })
    .await
}

/// One `orch run` component on a socket this test holds (so it can be restarted in place).
struct Component {
    proc: Proc,
    socket: TcpListener,
    addr: SocketAddr,
    envs: Vec<(String, String)>,
}

impl Component {
    fn start(name: &str, component: &str, envs: Vec<(String, String)>) -> Self {
        let (socket, addr) = listener();
        let proc = Self::spawn(name, component, &socket, &envs);
        Self { proc, socket, addr, envs }
    }

    fn spawn(name: &str, component: &str, socket: &TcpListener, envs: &[(String, String)]) -> Proc {
        let pairs: Vec<(&str, &str)> = envs.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        Proc::component(name, component, socket, &pairs)
    }

    fn restart(&mut self, component: &str) {
        let name = self.proc.name.clone();
        self.proc = Self::spawn(&name, component, &self.socket, &self.envs);
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    async fn ready(&self, http: &reqwest::Client) {
        let url = format!("{}/ready", self.url());
        eventually(DEADLINE, &format!("{} ready", self.proc.name), || async {
            http.get(&url).send().await.ok().filter(|r| r.status() == 200)
        })
        .await;
    }
}

fn envs(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_a_crash_and_the_recovery_live() {
    let binaries = Browser::binaries();
    let http = reqwest::Client::new();
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let database = format!("sqlite://{}", dir.path().join("compute.sqlite").display());

    let registry = Component::start("registry-1", "registry", envs(&[("ORCH_CLUSTER_TOKEN", TOKEN)]));
    registry.ready(&http).await;
    let registry_url = format!("http://localhost:{}", registry.addr.port());
    let common = [
        ("ORCH_CLUSTER_TOKEN", TOKEN),
        ("SERVICE_REGISTRY_URL", registry_url.as_str()),
        ("HEARTBEAT_INTERVAL_MS", "1000"),
        ("SHUTDOWN_GRACE_MS", "1000"),
    ];

    let mut computes = Vec::new();
    for n in 1..=3 {
        let mut env = envs(&common);
        env.extend(envs(&[
            ("SERVICE_TYPE", "compute"),
            ("DATA_DIR", &data_dir),
            ("DATABASE_URL", &database),
            ("JWT_SECRET", JWT_SECRET),
            ("AUTH_REQUIRED", "false"),
            ("COMPUTE_WORKERS", "0"),
        ]));
        computes.push(Component::start(&format!("compute-{n}"), "compute", env));
    }
    for compute in &computes {
        compute.ready(&http).await;
    }

    let mut env = envs(&common);
    env.extend(envs(&[("ROUTES", "/api/compute=compute"), ("HEALTH_CHECK_INTERVAL_MS", "500")]));
    let balancer = Component::start("balancer-1", "balancer", env);
    balancer.ready(&http).await;

    let balancer_url = format!("http://localhost:{}", balancer.addr.port());
    let mut env = envs(&common);
    env.extend(envs(&[
        ("CHECK_INTERVAL_MS", "500"),
        ("CHECK_TIMEOUT_MS", "500"),
        ("LOAD_BALANCER_URL", &balancer_url),
    ]));
    let mut detector = Component::start("detector-1", "detector", env);
    detector.ready(&http).await;

    // Some traffic through the balancer, for the distribution chart, once it routes to all three.
    eventually(DEADLINE, "the balancer routing to three compute instances", || async {
        let status: Value = http.get(format!("{}/status", balancer.url())).send().await.ok()?.json().await.ok()?;
        (status["services"]["compute"]["healthy"] == 3).then_some(())
    })
    .await;
    let through = format!("{}/api/compute/health", balancer.url());
    for _ in 0..30 {
        eventually(DEADLINE, "a request through the balancer", || async {
            http.get(&through).send().await.ok().filter(|r| r.status() == 200)
        })
        .await;
    }

    let browser = Browser::start(binaries).await;
    browser.client.goto(&detector.url()).await.expect("opening the dashboard");

    // Every registered instance is on the page, up.
    let registered: Vec<String> = eventually(DEADLINE, "five instances registered", || async {
        let list: Value =
            http.get(format!("{}/api/registry/services", registry.url())).send().await.ok()?.json().await.ok()?;
        let ids: Vec<String> =
            list["services"].as_array()?.iter().map(|s| s["serviceId"].as_str().unwrap().to_owned()).collect();
        (ids.len() == 5).then_some(ids)
    })
    .await;
    for id in ["compute-1", "compute-2", "compute-3", "balancer-1", "detector-1"] {
        assert!(registered.contains(&id.to_owned()), "{id} registered: {registered:?}");
    }
    let shown = page_until(&browser, PAGE_STATE, "every instance shown up, with traffic", |page| {
        page["conn"] == "live"
            && registered.iter().all(|id| page["rows"][id] == "up")
            && page["bars"].as_u64() >= Some(3)
    })
    .await;
    assert_eq!(shown["rows"].as_object().unwrap().len(), registered.len(), "{shown}");
    browser.eval("window.__sameDocument = 'no reload'; return null;").await;
    browser.screenshot("dashboard-up.png").await;

    // compute-2 dies; its socket stays open (held here), so checks hang until they time out.
    computes[1].proc.kill();
    let down =
        page_until(&browser, PAGE_STATE, "compute-2 shown down", |page| page["rows"]["compute-2"] == "down").await;
    assert_eq!(down["rows"]["compute-1"], "up");
    assert_eq!(down["marker"], "no reload");
    page_until(&browser, PAGE_STATE, "the down alert in the feed", |page| {
        page["alerts"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("compute-2 (compute) is down"))
    })
    .await;
    let down_shot = browser.screenshot("dashboard-down.png").await;

    // Restarted on the same socket: up again, on the same page.
    computes[1].restart("compute");
    let up =
        page_until(&browser, PAGE_STATE, "compute-2 shown up again", |page| page["rows"]["compute-2"] == "up").await;
    assert_eq!(up["marker"], "no reload");
    page_until(&browser, PAGE_STATE, "the recovery in the feed", |page| {
        page["alerts"].as_array().unwrap().iter().any(|a| a.as_str().unwrap().contains("compute-2 (compute) recovered"))
    })
    .await;
    let alerts: Value = http.get(format!("{}/api/alerts", detector.url())).send().await.unwrap().json().await.unwrap();
    let kinds = alert_kinds(&alerts);
    assert!(kinds.contains(&("compute-2", "down")) && kinds.contains(&("compute-2", "recovered")), "{alerts}");
    let shot = browser.screenshot("dashboard.png").await;

    // The detector itself restarts: the page says so, reconnects by itself, and fills again.
    detector.proc.kill();
    page_until(&browser, PAGE_STATE, "the page reconnecting", |page| page["conn"] == "reconnecting").await;
    browser.screenshot("dashboard-reconnecting.png").await;
    detector.restart("detector");
    let back = page_until(&browser, PAGE_STATE, "the page live again with every instance up", |page| {
        page["conn"] == "live" && registered.iter().all(|id| page["rows"][id] == "up")
    })
    .await;
    assert_eq!(back["marker"], "no reload", "reconnected without a reload");
    browser.screenshot("dashboard-reconnected.png").await;

    browser.client.clone().close().await.expect("ending the browser session");
    println!("screenshots: {} and {}", shot.display(), down_shot.display());
    assert!(Path::new(&shot).exists());
}

/// What the page shows of each instance under orch (status, restart count, the crash badge,
/// the pid line) and the orch event feed.
const ORCH_PAGE_STATE: &str = r#"
    const rows = {};
    for (const row of document.querySelectorAll('li.instance')) {
        const restarts = row.querySelector('.restarts');
        const meta = row.querySelector('.inst-meta');
        rows[row.dataset.instance] = {
            status: row.dataset.status,
            restarts: restarts ? restarts.title : null,
            crashed: [...row.querySelectorAll('.pill')].some((p) => p.textContent.startsWith('crashed')),
            meta: meta ? meta.textContent : '',
        };
    }
    return {
        conn: document.getElementById('conn').dataset.state,
        rows,
        events: [...document.querySelectorAll('#events li')].map((li) => [li.dataset.event || '', li.textContent]),
        marker: window.__sameDocument || null,
        autoscale: [...document.querySelectorAll('#autoscale svg.autoscale-chart')]
            .map((c) => [c.dataset.service, c.querySelectorAll('path.replicas').length]),
    };
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_under_orch_shows_a_kill_and_the_restart_live() {
    let binaries = Browser::binaries();
    // compute is autoscaled (within 3-4, on a target this traffic never reaches): its chart.
    let topology = Topology::new().env("detector", "CHECK_INTERVAL_MS", "500").field(
        "compute",
        "autoscale",
        "{ min: 3, max: 4, target: { inFlightPerInstance: 50 } }",
    );
    let cluster = topology.start().await;
    let http = reqwest::Client::new();

    // Some traffic through the balancer, for the distribution chart.
    let balancer = cluster.url_of("balancer-1").await;
    for _ in 0..30 {
        let res = http.get(format!("{balancer}/api/compute/health")).send().await.unwrap();
        assert_eq!(res.status(), 200);
    }

    let browser = Browser::start(binaries).await;
    browser.client.goto(&cluster.url_of("detector-1").await).await.expect("opening the dashboard");

    // Every registered instance is on the page, up, with the pid orch reports.
    let mut registered = topology.backend_instances();
    registered.extend(["balancer-1".to_owned(), "detector-1".to_owned()]);
    let pids = cluster.pids().await;
    let pid_of = |name: &str| pids.iter().find(|(n, ..)| n == name).and_then(|(_, pid, _)| *pid).unwrap();
    let shown = page_until(&browser, ORCH_PAGE_STATE, "every instance shown up with its pid", |page| {
        page["conn"] == "live"
            && registered.iter().all(|id| {
                let row = &page["rows"][id];
                row["status"] == "up" && row["meta"].as_str().unwrap_or("").contains(&format!("pid {}", pid_of(id)))
            })
    })
    .await;
    assert_eq!(shown["rows"].as_object().unwrap().len(), registered.len(), "{shown}");
    assert_eq!(shown["rows"]["data-2"]["restarts"], "0 restarts", "{shown}");
    assert_eq!(shown["rows"]["data-2"]["crashed"], false, "{shown}");
    // The autoscaled service's chart: its replicas over time, drawn once two reads are in.
    page_until(&browser, ORCH_PAGE_STATE, "compute's autoscale chart drawn", |page| {
        page["autoscale"] == json!([["compute", 1]])
    })
    .await;
    browser.eval("window.__sameDocument = 'no reload'; return null;").await;
    browser.screenshot("dashboard-orch-up.png").await;

    // data-2 is killed by its pid; orch restarts it at once.
    let old = cluster.kill("data-2").await;
    let new = cluster.wait_replaced("data-2", old).await["pid"].as_u64().unwrap();
    let after = page_until(&browser, ORCH_PAGE_STATE, "data-2's crash and restart shown", |page| {
        let row = &page["rows"]["data-2"];
        row["status"] == "up"
            && row["crashed"] == true
            && row["restarts"] == "1 restart"
            && row["meta"].as_str().unwrap_or("").contains(&format!("pid {new}"))
            && page["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e[0] == "exited" && e[1].as_str().unwrap().contains("data-2 exited (signal SIGKILL)"))
    })
    .await;
    assert_eq!(after["marker"], "no reload", "shown live, without a reload");
    assert_eq!(after["rows"]["data-1"]["crashed"], false, "{after}");
    assert_eq!(after["rows"]["data-1"]["restarts"], "0 restarts", "{after}");
    let shot = browser.screenshot("dashboard-orch-crash.png").await;
    // The detector raised the alert and noticed the recovery.
    let alerts: Value = http
        .get(format!("{}/api/alerts", cluster.url_of("detector-1").await))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let kinds = alert_kinds(&alerts);
    assert!(kinds.contains(&("data-2", "down")) && kinds.contains(&("data-2", "recovered")), "{alerts}");

    browser.client.clone().close().await.expect("ending the browser session");
    println!("data-2 killed (pid {old}), shown crashed and up again as pid {new}: {}", shot.display());
}
