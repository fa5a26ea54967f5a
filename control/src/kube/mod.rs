//! Kubernetes: a client for the cluster's API ([`client`]) and Services' endpoints from its
//! EndpointSlices ([`endpoints`]).

pub mod client;
pub mod endpoints;
