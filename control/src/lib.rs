//! `strait-control`: the companion control process of the Strait sidecar.
//!
//! Not built yet. The registry, policy store, config push and event bus are tracked by the
//! control-process issue; until then proxies run from local YAML (`strait-proxy --config`).
