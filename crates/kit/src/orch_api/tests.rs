//! The control API's wire types against the contract's JSON: status and kind strings,
//! request bodies as clients send them.

use super::*;

#[test]
fn statuses_and_kinds_are_the_strings_of_the_contract() {
    for status in Status::ALL {
        assert_eq!(serde_json::to_value(status).unwrap(), status.as_str());
        assert_eq!(serde_json::from_value::<Status>(status.as_str().into()).unwrap(), status);
    }
    assert_eq!(serde_json::to_value(EventKind::LivenessFailed).unwrap(), "liveness-failed");
    assert_eq!(serde_json::from_value::<EventKind>("not-ready".into()).unwrap(), EventKind::NotReady);
    assert_eq!(serde_json::to_value(ChangeKind::Roll).unwrap(), "roll");
    assert!(serde_json::from_value::<Status>("exited".into()).is_err());
}

#[test]
fn an_apply_request_reads_as_before() {
    let body: ApplyRequest = serde_json::from_str(r#"{"path": "/m.yaml", "dryRun": true}"#).unwrap();
    assert_eq!(body, ApplyRequest { path: Some("/m.yaml".into()), dry_run: true });
    assert_eq!(serde_json::to_string(&body).unwrap(), r#"{"path":"/m.yaml","dryRun":true}"#);
    assert!(serde_json::from_str::<ApplyRequest>(r#"{"dry_run": true}"#).is_err());
}

#[test]
fn a_chaos_request_and_experiment_read_as_the_contract_says() {
    let body: ChaosRequest =
        serde_json::from_str(r#"{"action": "kill", "target": "data", "everyMs": 1000, "forMs": 5000}"#).unwrap();
    assert_eq!(body.action, Some(ChaosAction::Kill));
    assert_eq!((body.every_ms, body.for_ms, body.duration_ms), (Some(1000), Some(5000), None));
    assert_eq!(
        serde_json::to_string(&body).unwrap(),
        r#"{"action":"kill","target":"data","everyMs":1000,"forMs":5000}"#
    );
    assert!(serde_json::from_str::<ChaosRequest>(r#"{"action": "kill", "target": "x", "every_ms": 1}"#).is_err());

    let kill = Experiment {
        id: "1".into(),
        action: ChaosAction::Kill,
        target: "data-2".into(),
        service: "data".into(),
        description: "kill data-2".into(),
        started_at: "2026-01-01T00:00:00.000Z".into(),
        ends_at: None,
        injected: 1,
        last: None,
        every_ms: None,
        for_ms: None,
        duration_ms: None,
        paused: None,
        latency_ms: None,
        percent: None,
        status: None,
        balancers: None,
    };
    let v = serde_json::to_value(&kill).unwrap();
    assert_eq!(
        v,
        serde_json::json!({
            "id": "1", "action": "kill", "target": "data-2", "service": "data", "description": "kill data-2",
            "startedAt": "2026-01-01T00:00:00.000Z", "endsAt": null, "injected": 1, "last": null,
        })
    );
    assert_eq!(serde_json::from_value::<Experiment>(v).unwrap(), kill);
}
