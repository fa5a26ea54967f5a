//! Kubernetes: a client for the cluster's API ([`client`]).

pub mod client;
