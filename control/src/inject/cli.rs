//! `straitctl inject -f FILE|-`: writes the injected YAML to stdout and a line per workload
//! to stderr, like `istioctl kube-inject`. Asking for injection is the opt-in: every workload
//! is injected unless it opts out (`strait.dev/inject: disabled`), so `straitctl inject -f
//! app.yaml | kubectl apply -f -` never silently deploys a pod without its proxy. Needs no
//! control: injection is local; the mesh's trust bundle comes from a file.

use std::io::Read;
use std::path::PathBuf;

use super::pod::Scope;
use super::settings::Settings;
use super::workload::{inject_documents, Change};

/// Arguments of `straitctl inject`.
#[derive(Debug, Clone, clap::Args)]
pub struct InjectArgs {
    /// YAML (or JSON) file with Deployments, StatefulSets, DaemonSets, Jobs, CronJobs,
    /// ReplicaSets, Pods; `-` reads stdin. Each is injected unless annotated
    /// `strait.dev/inject: disabled`; other kinds pass through unchanged. Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub paths: Vec<PathBuf>,
    /// Proxy image (also used by the `strait-init` container).
    #[arg(long, default_value = super::settings::DEFAULT_PROXY_IMAGE)]
    pub proxy_image: String,
    /// Control URL the proxies connect to.
    #[arg(long, default_value = super::settings::DEFAULT_CONTROL_ADDRESS)]
    pub control_address: String,
    /// The mesh's trust domain (the control's `--trust-domain`).
    #[arg(long, default_value = super::settings::DEFAULT_TRUST_DOMAIN)]
    pub trust_domain: String,
    /// The mesh's trust bundle, PEM (`straitctl identity bundle > roots.pem`): how each proxy
    /// verifies the control before its first certificate.
    #[arg(long, value_name = "FILE", env = "STRAIT_CA_FILE", required = true)]
    pub trust_bundle: PathBuf,
    /// Namespace of workloads that name none (where `kubectl apply` will create them): their
    /// proxies' identity is `spiffe://TD/ns/NAMESPACE/sa/SA`.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
}

impl InjectArgs {
    /// The injection settings these flags describe (the trust bundle read from its file).
    pub fn settings(&self) -> Result<Settings, String> {
        let file = &self.trust_bundle;
        let trust_bundle = std::fs::read_to_string(file)
            .map_err(|e| format!("--trust-bundle {}: {e}", file.display()))?;
        if !trust_bundle.contains("-----BEGIN CERTIFICATE-----") {
            return Err(format!(
                "--trust-bundle {}: no PEM certificate in it (straitctl identity bundle > roots.pem)",
                file.display()
            ));
        }
        crate::ca::spiffe::check_trust_domain(&self.trust_domain)
            .map_err(|e| format!("--trust-domain: {e}"))?;
        Ok(Settings {
            proxy_image: self.proxy_image.clone(),
            control_address: self.control_address.clone(),
            trust_domain: self.trust_domain.clone(),
            trust_bundle,
            ..Settings::default()
        })
    }
}

/// Runs the command; returns the exit code (0 ok, 1 a document could not be injected, 2 a
/// file could not be read).
pub fn run(args: &InjectArgs) -> u8 {
    // Running the command is the opt-in, as a namespace labelled for injection is.
    let scope = Scope::Everything;
    let settings = match args.settings() {
        Ok(settings) => settings,
        Err(e) => {
            eprintln!("straitctl inject: {e}");
            return 2;
        }
    };
    let mut output = String::new();
    for path in &args.paths {
        let (name, text) = if path.as_os_str() == "-" {
            let mut text = String::new();
            if let Err(e) = std::io::stdin().read_to_string(&mut text) {
                eprintln!("straitctl inject: cannot read stdin: {e}");
                return 2;
            }
            ("<stdin>".to_owned(), text)
        } else {
            match std::fs::read_to_string(path) {
                Ok(text) => (path.display().to_string(), text),
                Err(e) => {
                    eprintln!("straitctl inject: cannot read {}: {e}", path.display());
                    return 2;
                }
            }
        };
        match inject_documents(&text, &args.namespace, scope, &settings) {
            Ok((injected, reports)) => {
                output.push_str(&injected);
                for report in reports {
                    match report.change {
                        Change::Injected => eprintln!("{} injected", report.object),
                        Change::Skipped(why) => {
                            eprintln!("{} skipped: {}", report.object, why.reason())
                        }
                    }
                }
            }
            Err(e) => {
                eprintln!("straitctl inject: {name}: {e}");
                return 1;
            }
        }
    }
    print!("{output}");
    0
}
