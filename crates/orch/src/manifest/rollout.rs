//! `rollout:` of one service checked and filled in: the surge and unavailability budgets
//! of its rolling replacement, the progress deadline, and automatic rollback.

use super::check::Checker;
use super::raw::{Int, RawRollout};
use super::{MAX_REPLICAS, NodePath, Rollout};

/// The default rollout: one instance replaced at a time, in place (its socket kept).
pub const DEFAULT_ROLLOUT: Rollout =
    Rollout { max_surge: 0, max_unavailable: 1, progress_deadline_ms: 30_000, auto_rollback: true };

impl Checker {
    /// `fixed_port`: the service's ports are fixed, so there is no port for a surge instance.
    pub(super) fn rollout(&mut self, at: NodePath, raw: Option<RawRollout>, fixed_port: bool) -> Rollout {
        let Some(raw) = raw else { return DEFAULT_ROLLOUT };
        let d = DEFAULT_ROLLOUT;
        let max = i128::from(MAX_REPLICAS);
        let max_surge = self.range(at.key("maxSurge"), "maxSurge", raw.max_surge, d.max_surge.into(), 0, max) as u32;
        let max_unavailable =
            self.range(at.key("maxUnavailable"), "maxUnavailable", raw.max_unavailable, 0, 0, max) as u32;
        // Kubernetes' rule: an explicit maxSurge alone means nothing goes down.
        let max_unavailable = match (raw.max_unavailable, raw.max_surge) {
            (None, Some(Int(s))) if s > 0 => 0,
            (None, _) => d.max_unavailable,
            (Some(_), _) => max_unavailable,
        };
        if max_surge == 0 && max_unavailable == 0 {
            self.problem(
                at.key("maxUnavailable"),
                "maxSurge and maxUnavailable are both 0: no instance could ever be replaced",
                "set maxSurge: 1 (start a new instance first) or maxUnavailable: 1 (replace in place)",
            );
        }
        if max_surge > 0 && fixed_port {
            self.problem(
                at.key("maxSurge"),
                "maxSurge needs automatic ports: the service's instances have fixed ports, none is free for a surge instance",
                "omit port (automatic ports), or use maxSurge: 0 and maxUnavailable: 1",
            );
        }
        let progress_deadline_ms = self.range(
            at.key("progressDeadlineMs"),
            "progressDeadlineMs",
            raw.progress_deadline_ms,
            d.progress_deadline_ms.into(),
            100,
            3_600_000,
        ) as u64;
        Rollout {
            max_surge,
            max_unavailable,
            progress_deadline_ms,
            auto_rollback: raw.auto_rollback.unwrap_or(d.auto_rollback),
        }
    }
}
