//! What applying a manifest over the running one changes, per service: a list of typed
//! [`Change`]s that the apply acts on and `POST /api/apply` answers.

use kit::orch_api::{Change, ChangeKind};

use crate::manifest::{Manifest, Service};

/// What applying `new` over `old` changes, per service. A service whose revision (see
/// `old_rev`, `new_rev`) changed is rolled; one that differs otherwise is updated in place.
pub fn diff(
    old: &Manifest,
    new: &Manifest,
    old_rev: impl Fn(&Service) -> u64,
    new_rev: impl Fn(&Service) -> u64,
) -> Vec<Change> {
    let change = |s: &Service, change, from, to, summary| Change { service: s.name.clone(), change, from, to, summary };
    let mut changes = Vec::new();
    for s in &new.services {
        let Some(o) = old.service(&s.name) else {
            let summary = format!("create {} ({} instances)", s.name, s.replicas);
            changes.push(change(s, ChangeKind::Create, None, Some(s.replicas), summary));
            continue;
        };
        if o.replicas != s.replicas {
            let summary = format!("scale {} {} -> {}", s.name, o.replicas, s.replicas);
            changes.push(change(s, ChangeKind::Scale, Some(o.replicas), Some(s.replicas), summary));
        }
        if old_rev(o) != new_rev(s) {
            let summary = format!("replace the instances of {} one at a time (spec changed)", s.name);
            changes.push(change(s, ChangeKind::Roll, None, None, summary));
        } else {
            let mut a = o.clone();
            a.replicas = s.replicas;
            if a != *s {
                let summary = format!("update {} (probes, restart or grace: no restart needed)", s.name);
                changes.push(change(s, ChangeKind::Update, None, None, summary));
            }
        }
    }
    for o in &old.services {
        if new.service(&o.name).is_none() {
            let summary = format!("delete {} ({} instances)", o.name, o.replicas);
            changes.push(change(o, ChangeKind::Delete, Some(o.replicas), Some(0), summary));
        }
    }
    changes
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn manifest(services: &str) -> Manifest {
        let text =
            format!("apiVersion: orch/v1\nkind: Cluster\nmetadata: {{ name: test }}\nspec:\n  services:\n{services}");
        crate::manifest::parse(Path::new("/m.yaml"), &text).unwrap_or_else(|e| panic!("{e}"))
    }

    /// The revision of a service as the controller computes it: here, its command.
    fn rev(s: &Service) -> u64 {
        serde_json::to_string(&s.kind).unwrap().len() as u64
    }

    /// A change: service, kind, from, to.
    type Expected = (&'static str, ChangeKind, Option<u32>, Option<u32>);

    #[test]
    fn changes_per_service() {
        let old = "    - { name: a, component: registry }\n    - { name: b, command: [sh], replicas: 2 }\n    - { name: c, command: [sh] }\n    - { name: d, command: [sh] }\n";
        let cases: &[(&str, &[Expected])] = &[
            (old, &[]),
            (
                "    - { name: a, component: registry }\n    - { name: b, command: [sh], replicas: 3 }\n    - { name: c, command: [bash] }\n    - { name: d, command: [sh], restart: { policy: OnFailure } }\n    - { name: e, command: [sh], replicas: 4 }\n",
                &[
                    ("b", ChangeKind::Scale, Some(2), Some(3)),
                    ("c", ChangeKind::Roll, None, None),
                    ("d", ChangeKind::Update, None, None),
                    ("e", ChangeKind::Create, None, Some(4)),
                ],
            ),
            (
                "    - { name: b, command: [sh], replicas: 0 }\n    - { name: c, command: [sh] }\n    - { name: d, command: [sh] }\n",
                &[("b", ChangeKind::Scale, Some(2), Some(0)), ("a", ChangeKind::Delete, Some(1), Some(0))],
            ),
        ];
        for (new, expected) in cases {
            let got: Vec<_> = diff(&manifest(old), &manifest(new), rev, rev)
                .into_iter()
                .map(|c| (c.service, c.change, c.from, c.to))
                .collect();
            let expected: Vec<_> = expected.iter().map(|(s, k, f, t)| (s.to_string(), *k, *f, *t)).collect();
            assert_eq!(got, expected, "for:\n{new}");
        }
    }
}
