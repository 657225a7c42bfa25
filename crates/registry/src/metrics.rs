//! The registry's own Prometheus figures (beside kit's HTTP and process ones): how many
//! records it holds, read from the store at each scrape ([`Records`], one per server), and
//! how many watches a change woke (the process's counter).

use std::sync::{Arc, LazyLock, Mutex};

use kit::metrics::Counter;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::gauge::ConstGauge;

use crate::store::Store;

pub struct Metrics {
    /// Blocking queries answered because the set changed (not because their wait ran out).
    pub watch_wakeups: Counter,
}

/// The process's registry counters, registered on first use.
pub fn get() -> &'static Metrics {
    static METRICS: LazyLock<Metrics> = LazyLock::new(|| Metrics {
        watch_wakeups: kit::metrics::counter("registry_watch_wakeups", "Watches answered because the set changed"),
    });
    &METRICS
}

/// `registry_records{healthy}`: the store's size at the scrape.
#[derive(Debug)]
pub struct Records(pub Arc<Mutex<Store>>);

impl Collector for Records {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let (healthy, total) = {
            let store = self.0.lock().unwrap_or_else(|e| e.into_inner());
            let healthy = store.list(&crate::store::Filter { service_type: None, healthy: Some(true) }).len();
            (healthy, store.len())
        };
        let gauge = ConstGauge::new(0i64);
        let mut family = encoder.encode_descriptor("registry_records", "Records held", None, gauge.metric_type())?;
        for (label, n) in [("true", healthy), ("false", total - healthy)] {
            ConstGauge::new(n as i64).encode(family.encode_family(&[("healthy", label)])?)?;
        }
        Ok(())
    }
}
