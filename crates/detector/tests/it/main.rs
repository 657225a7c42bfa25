//! The detector over real HTTP, in-process on 127.0.0.1:0, with an in-process registry
//! and small fakes: backends whose health the test controls, a balancer's `/api/metrics`
//! and orch's control API (`/api/instances`, `/api/events`), built from the contract.

mod api;
mod guard;
mod health;
mod orch;
mod socket;
mod support;
mod webhook;

pub use support::*;
