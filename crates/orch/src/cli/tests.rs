//! The CLI's pure helpers: table alignment, `orch scale` arguments, ages.

use super::*;

#[test]
fn tables_are_aligned() {
    let rows =
        vec![vec!["web-1".into(), "12".into(), "running".into()], vec!["web-10".into(), "-".into(), "backoff".into()]];
    assert_eq!(
        table(&["NAME", "PID", "STATUS"], &rows),
        "NAME     PID   STATUS\nweb-1    12    running\nweb-10   -     backoff\n"
    );
}

#[test]
fn scale_arguments() {
    assert_eq!(parse_scale("data=5").unwrap(), ("data".into(), 5));
    assert_eq!(parse_scale("data=-1").unwrap(), ("data".into(), -1));
    assert!(matches!(parse_scale("data"), Err(Failure::Usage(_))));
    assert!(matches!(parse_scale("data=five"), Err(Failure::Usage(_))));
    assert!(matches!(parse_scale("=5"), Err(Failure::Usage(_))));
}

#[test]
fn ages() {
    assert_eq!(age(None), "-");
    assert_eq!(age(Some(&kit::time::now_iso())), "0s");
    assert_eq!(age(Some(&kit::time::iso_from_millis(kit::time::unix_millis() - 7_200_000))), "2h");
}
