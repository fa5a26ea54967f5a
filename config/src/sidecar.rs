//! Strait's fixed sidecar layout: the ports and the UID every injected pod uses. One source for
//! the injector (strait-control), the iptables rules (`strait-proxy init-iptables`) and the
//! bootstrap config shipped in the proxy image (`deploy/proxy/sidecar.yaml`).
//!
//! Chosen to collide with neither Istio (15000/15001/15006/15090, UID 1337) nor Linkerd
//! (4140/4143/4191, UID 2102), so a pod can be moved between meshes without surprises.

/// Admin server (`/metrics`, `/ready`, `/live`, `/config`, `/clusters`, `POST /shutdown`),
/// bound on 127.0.0.1 only: the config and the shutdown are for the pod's own containers.
pub const ADMIN_PORT: u16 = 15300;
/// Telemetry listener (`/metrics`, `/ready`, `/live` only), bound on all addresses so the
/// kubelet's probes and Prometheus reach it; never redirected inbound.
pub const TELEMETRY_PORT: u16 = 15303;
/// Where the pod's outbound TCP is redirected (bound on 127.0.0.1).
pub const OUTBOUND_PORT: u16 = 15301;
/// Where the pod's inbound TCP is redirected (bound on 0.0.0.0).
pub const INBOUND_PORT: u16 = 15302;
/// The proxy's UID and GID: its own connections are never redirected.
pub const PROXY_UID: u32 = 1530;
/// Name of the proxy's outbound listener in the sidecar bootstrap.
pub const OUTBOUND_LISTENER: &str = "outbound";
/// Name of the proxy's inbound listener in the sidecar bootstrap.
pub const INBOUND_LISTENER: &str = "inbound";
