//! Metric state snapshots: written at graceful shutdown, restored at start. (Filled in below.)
