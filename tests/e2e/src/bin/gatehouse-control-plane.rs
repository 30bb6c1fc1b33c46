//! Starts a control plane by hand (`tests/control-plane/up`): prints the environment to use it
//! and runs until interrupted. The harness's watchdog stops the servers and removes the temp
//! dir when this process exits, however it exits.

use std::io::Write;

fn main() -> anyhow::Result<()> {
    let cp = gatehouse_e2e::ControlPlane::start()?;
    let bins = cp.binaries();
    let mut out = std::io::stdout().lock();
    writeln!(out, "export KUBECONFIG={}", cp.kubeconfig().display())?;
    writeln!(out, "export GATEHOUSE_KUBECTL={}", bins.kubectl.display())?;
    writeln!(out, "export GATEHOUSE_HELM={}", bins.helm.display())?;
    writeln!(
        out,
        "# logs: {}/{{etcd,kube-apiserver}}.log; Ctrl-C to stop",
        cp.dir().display()
    )?;
    out.flush()?;
    drop(out);
    loop {
        std::thread::park();
    }
}
