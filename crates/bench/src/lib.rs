//! The benchmarks' one framework, shared by every crate's `benches/` and by the cluster
//! benchmark of `make bench` (`e2e/benches/cluster.rs`):
//! - [`load`]: closed-loop load from a few concurrent workers, each call's latency kept;
//! - [`stats`]: quantiles, median/min/max, and the figures as text (`9.1 ms`, `21 350`);
//! - [`table`]: aligned text tables (plain, with pipes, or Markdown);
//! - [`report`]: the rows of `make bench`, each figure held against its target, rendered as
//!   the table, `target/bench/summary.md` and `target/bench/summary.json`, with the
//!   machine the figures come from.
//!
//! Only benchmarks depend on it (as a dev-dependency), and it depends on kit alone.

pub mod load;
pub mod report;
pub mod stats;
pub mod table;
