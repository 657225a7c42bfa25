//! What applying a manifest over the running one changes, per service: a list of typed
//! [`Change`]s that the apply acts on and `POST /api/apply` answers.

use kit::orch_api::{Change, ChangeKind};

use crate::manifest::{Manifest, Service};
use crate::reconcile::{IN_PLACE, revision_parts};

/// What applying `new` over `old` changes, per service. A service whose revision changed
/// (a part of [`revision_parts`]) is rolled, and the summary names the parts: its instances
/// are replaced, or, when only [`IN_PLACE`] parts changed, changed in place. One that
/// differs otherwise is updated without a rollout.
pub fn diff(old: &Manifest, new: &Manifest) -> Vec<Change> {
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
        let parts = revision_parts(old, o).into_iter().zip(revision_parts(new, s));
        let changed: Vec<&str> = parts.filter(|((_, a), (_, b))| a != b).map(|(_, (name, _))| name).collect();
        if !changed.is_empty() {
            let what = if changed.iter().all(|part| IN_PLACE.contains(part)) {
                format!("change the instances of {} in place", s.name)
            } else {
                format!("replace the instances of {} one at a time", s.name)
            };
            let summary = format!("{what} ({} changed)", changed.join(", "));
            changes.push(change(s, ChangeKind::Roll, None, None, summary));
        } else {
            let mut a = o.clone();
            a.replicas = s.replicas;
            if a != *s {
                let summary = format!("update {} (restart, grace or rollout: no restart needed)", s.name);
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

    /// A change: service, kind, from, to, summary.
    type Expected = (&'static str, ChangeKind, Option<u32>, Option<u32>, &'static str);

    #[test]
    fn changes_per_service() {
        let old = "    - { name: a, command: ['true'] }\n    - { name: b, command: [sh], replicas: 2 }\n    - { name: c, command: [sh] }\n    - { name: d, command: [sh] }\n";
        let cases: &[(&str, &[Expected])] = &[
            (old, &[]),
            (
                "    - { name: a, command: ['true'] }\n    - { name: b, command: [sh], replicas: 3 }\n    - { name: c, command: [bash], env: { X: '1' } }\n    - { name: d, command: [sh], restart: { policy: OnFailure } }\n    - { name: e, command: [sh], replicas: 4 }\n",
                &[
                    ("b", ChangeKind::Scale, Some(2), Some(3), "scale b 2 -> 3"),
                    (
                        "c",
                        ChangeKind::Roll,
                        None,
                        None,
                        "replace the instances of c one at a time (command, env changed)",
                    ),
                    ("d", ChangeKind::Update, None, None, "update d (restart, grace or rollout: no restart needed)"),
                    ("e", ChangeKind::Create, None, Some(4), "create e (4 instances)"),
                ],
            ),
            (
                "    - { name: b, command: [sh], replicas: 0 }\n    - { name: c, command: [sh] }\n    - { name: d, command: [sh] }\n",
                &[
                    ("b", ChangeKind::Scale, Some(2), Some(0), "scale b 2 -> 0"),
                    ("a", ChangeKind::Delete, Some(1), Some(0), "delete a (1 instances)"),
                ],
            ),
            // Probes and resources are part of the revision; resources alone change in place.
            (
                "    - { name: a, command: ['true'], resources: { cpu: 100m } }\n    - { name: b, command: [sh], replicas: 2, readiness: { tcp: true, periodMs: 250 } }\n    - { name: c, command: [sh], resources: { memory: 64Mi } }\n    - { name: d, command: [sh], liveness: { tcp: true } }\n",
                &[
                    ("a", ChangeKind::Roll, None, None, "change the instances of a in place (resources changed)"),
                    ("b", ChangeKind::Roll, None, None, "replace the instances of b one at a time (readiness changed)"),
                    ("c", ChangeKind::Roll, None, None, "change the instances of c in place (resources changed)"),
                    ("d", ChangeKind::Roll, None, None, "replace the instances of d one at a time (liveness changed)"),
                ],
            ),
            (
                "    - { name: a, command: ['false'], resources: { cpu: 100m } }\n    - { name: b, command: [sh], replicas: 2 }\n    - { name: c, command: [sh] }\n    - { name: d, command: [sh] }\n",
                &[(
                    "a",
                    ChangeKind::Roll,
                    None,
                    None,
                    "replace the instances of a one at a time (command, resources changed)",
                )],
            ),
        ];
        for (new, expected) in cases {
            let got: Vec<_> = diff(&manifest(old), &manifest(new))
                .into_iter()
                .map(|c| (c.service, c.change, c.from, c.to, c.summary))
                .collect();
            let expected: Vec<_> =
                expected.iter().map(|(s, k, f, t, m)| (s.to_string(), *k, *f, *t, m.to_string())).collect();
            assert_eq!(got, expected, "for:\n{new}");
        }
    }
}
