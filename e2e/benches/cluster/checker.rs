//! The `checker` step: `orch verify`'s checker alone, no cluster needed.

use bench::report::Row;
use bench::stats::show_count;
use serde_json::Value;

use super::Bench;

impl Bench {
    /// `orch verify`'s checker alone (no cluster): operations checked per second on a
    /// generated linearizable history of 10 000 register operations (5 keys, 8 clients, one
    /// in a hundred writes of unknown outcome), the median of three runs of the binary.
    pub(super) fn checker(&mut self) {
        self.progress.step("orch verify's checker on a 10 000-operation history");
        let mut rates: Vec<f64> = (0..3)
            .map(|_| {
                let out = std::process::Command::new(e2e::orch_bin())
                    .args(["verify", "--bench-checker", "10000"])
                    .output()
                    .expect("running orch verify --bench-checker");
                let v: Value = serde_json::from_slice(&out.stdout).expect("the checker's figures as JSON");
                assert_eq!(v["verdict"], "valid", "{v}");
                v["opsPerSecond"].as_f64().unwrap_or(f64::NAN)
            })
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[1];
        self.rows.push(
            Row::new("checkerOpsPerSecond", "orch verify: operations checked per second", median, "ops/s")
                .shown(format!("{} ops/s", show_count(median)))
                .how("orch verify --bench-checker 10000: a generated linearizable 10 000-operation register history (5 keys, 8 clients), median of 3")
                .detail("runs", rates),
        );
    }
}
