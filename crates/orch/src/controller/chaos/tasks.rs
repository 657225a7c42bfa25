//! The tasks that drive an experiment through the controller's [`Handle`] for the control
//! API: starting one (the controller records it, a balancer fault is posted between two
//! calls to it) and stopping one (its balancer faults are removed between two calls).
//! Talking to the balancer takes time, so it happens here, never on the controller. An
//! experiment's timers are not tasks: they are deadlines of the controller's loop.

use balancer::faults::FaultSpec;
use kit::orch_api::{Experiment, StoppedExperiments};

use super::experiments::{PostedFault, Why};
use super::faults::{Balancer, BalancerClient};
use crate::chaos::Spec;
use crate::controller::{CallError, Handle};

fn gone() -> CallError {
    CallError::Gone
}

/// What the controller answers when an experiment starts.
pub enum Begun {
    /// Done (kill, pause): the experiment object.
    Done(Experiment),
    /// A balancer fault to post to these balancer instances, then to report back with
    /// `chaos_faults_posted`.
    Faults { id: u64, balancers: Vec<Balancer>, body: FaultSpec, client: BalancerClient },
}

/// What ending an experiment finds on the controller.
pub enum Ending {
    /// No such experiment.
    Unknown,
    /// It is ending already (stopped, or its time is up).
    Already,
    /// It ends now: these balancer faults are to be removed, with this client.
    Now { faults: Vec<PostedFault>, client: BalancerClient },
}

/// `POST /api/chaos`: starts an experiment. Runs as its own task, so a client that goes
/// away midway leaves no half-started experiment.
pub async fn start(handle: Handle, spec: Spec) -> Result<Experiment, CallError> {
    let begun = handle.call(move |c| c.chaos_start(spec)).await.ok_or_else(gone)??;
    match begun {
        Begun::Done(v) => Ok(v),
        Begun::Faults { id, balancers, body, client } => {
            let posts = balancers.into_iter().map(|balancer| {
                let (client, body) = (client.clone(), &body);
                async move {
                    let result = client.post(&balancer.url, body).await;
                    (balancer, result)
                }
            });
            let results = futures_util::future::join_all(posts).await;
            handle.call(move |c| c.chaos_faults_posted(id, results, client)).await.ok_or_else(gone)?
        }
    }
}

/// Ends experiment `id`: the controller resumes what it paused and hands over its balancer
/// faults, which are removed before it is gone from the list. The experiment as it ended;
/// `None` if there was none to end (unknown, already ending, or orch is stopping).
pub async fn finish(handle: &Handle, id: u64, why: Why) -> Option<Experiment> {
    let Ending::Now { faults, client } = handle.call(move |c| c.chaos_ending(id, why)).await? else {
        return None;
    };
    client.delete_all(&faults).await;
    handle.call(move |c| c.chaos_ended(id, why)).await?
}

/// `DELETE /api/chaos[/:id]`: ends one experiment, or all; the stopped ones.
pub async fn stop(handle: Handle, id: Option<String>) -> Result<StoppedExperiments, CallError> {
    let ids = match id {
        Some(raw) => {
            let known = handle.call(|c| c.chaos_ids()).await.ok_or_else(gone)?;
            let id = raw.parse::<u64>().ok().filter(|id| known.contains(id));
            vec![id.ok_or_else(|| CallError::NotFound(format!("no chaos experiment {raw:?}")))?]
        }
        None => handle.call(|c| c.chaos_ids()).await.ok_or_else(gone)?,
    };
    let ends = ids.iter().map(|&id| {
        let handle = handle.clone();
        async move { finish(&handle, id, Why::Stopped).await }
    });
    let stopped = futures_util::future::join_all(ends).await.into_iter().flatten().collect();
    Ok(StoppedExperiments { stopped })
}
