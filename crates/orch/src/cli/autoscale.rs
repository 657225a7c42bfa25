//! What `orch get` shows of autoscaled services: one row each, `current/desired (min-max)`
//! with the target and the last figure measured.

use kit::orch_api::Cluster;

use super::table;

/// The autoscaled services' table (of `service` alone, when given), or `None` if there are none.
pub fn table_of(cluster: &Cluster, service: Option<&str>) -> Option<String> {
    let rows: Vec<Vec<String>> = cluster
        .services
        .iter()
        .filter(|s| service.is_none_or(|name| s.name == name))
        .filter_map(|s| {
            let a = s.autoscale.as_ref()?;
            Some(vec![
                s.name.clone(),
                format!("{}/{} ({}-{})", a.current, a.desired, a.min, a.max),
                a.target.clone(),
                a.measured.clone().unwrap_or_else(|| "-".to_owned()),
            ])
        })
        .collect();
    (!rows.is_empty()).then(|| table(&["AUTOSCALED", "REPLICAS", "TARGET", "MEASURED"], &rows))
}

#[cfg(test)]
mod tests {
    use kit::orch_api::{AutoscaleView, ServiceView};

    use super::*;

    #[test]
    fn autoscaled_services_show_current_desired_and_range() {
        let service = |name: &str, autoscale| ServiceView {
            name: name.into(),
            replicas: 5,
            ready: 2,
            port: None,
            component: None,
            command: Some(vec!["sh".into()]),
            autoscale,
        };
        let view = AutoscaleView {
            current: 2,
            desired: 5,
            min: 2,
            max: 8,
            target: "in flight 8 per instance".into(),
            measured: Some("in flight 19.5 per instance".into()),
            target_value: 8,
            figure: Some(19.5),
        };
        let cluster = Cluster {
            name: "t".into(),
            manifest: "m.yaml".into(),
            data_dir: "data".into(),
            control_url: "http://127.0.0.1:1".into(),
            started_at: "now".into(),
            last_error: None,
            stopping: false,
            services: vec![service("web", Some(view)), service("db", None)],
        };
        let shown = table_of(&cluster, None).unwrap();
        let lines: Vec<&str> = shown.lines().map(str::trim_end).collect();
        assert_eq!(lines.len(), 2, "{shown}");
        assert!(lines[0].starts_with("AUTOSCALED"), "{shown}");
        assert!(lines[1].starts_with("web") && lines[1].contains("2/5 (2-8)"), "{shown}");
        assert!(lines[1].ends_with("in flight 19.5 per instance"), "{shown}");
        assert_eq!(table_of(&cluster, Some("db")), None);
    }
}
