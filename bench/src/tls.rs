//! The https-upstream scenario: mcpgw in front of the same counter server over plain
//! http and over https (TLS 1.3 with a throwaway CA, made here with the `openssl`
//! command, given to mcpgw as the upstream's `ca_file`). Per repetition, back to back:
//! (c) mcpgw with the plain upstream, (t) a second mcpgw with the https upstream, at
//! keep-alive C = 16. The claim is (t) / (c) throughput and the CPU per request each
//! gateway spends: what TLS to the upstream costs once connections are pooled.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context as _, Result, ensure};

use crate::compare::{Interleaved, Scenario, Settings, spec, warm_up};
use crate::load::Probe;
use crate::mcp::{Endpoint, Era};
use crate::procs::Proc;

/// The scenario's targets, in the order every repetition runs them.
pub(crate) const TARGETS: [&str; 2] = ["mcpgw", "mcpgw, https upstream"];

/// Concurrency of the scenario.
pub(crate) const CONCURRENCY: usize = 16;

/// A CA and a certificate for 127.0.0.1 signed by it, in `dir`: (CA, cert, key).
pub(crate) fn make_pki(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let openssl = |args: &[&str]| -> Result<()> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .context("running openssl (Debian package openssl) for the https scenario")?;
        ensure!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec[..],
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=mcpgw-bench CA",
            ][..],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec[..],
            &[
                "-keyout",
                "tls.key",
                "-out",
                "tls.csr",
                "-subj",
                "/CN=127.0.0.1",
            ][..],
        ]
        .concat(),
    )?;
    std::fs::write(dir.join("tls.cnf"), "subjectAltName=IP:127.0.0.1\n")?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "tls.pem",
        "-days",
        "2",
        "-extfile",
        "tls.cnf",
    ])?;
    Ok((dir.join("ca.pem"), dir.join("tls.pem"), dir.join("tls.key")))
}

/// Runs the scenario against `endpoints` (mcpgw plain, mcpgw https), whose CPU
/// `probes` are in the same order.
pub(crate) async fn run(
    settings: &Settings,
    endpoints: [&Endpoint; 2],
    probes: [&Probe; 2],
    ticks_per_second: u64,
    procs: &[&Proc],
) -> Result<Scenario> {
    let warm = spec(
        settings,
        endpoints[1],
        CONCURRENCY,
        false,
        Duration::from_secs(1),
        None,
        Era::Stateful,
    );
    warm_up(warm, "mcpgw with an https upstream", procs).await?;
    let name = format!("https upstream, keep-alive C={CONCURRENCY}");
    let duration = Duration::from_secs_f64(settings.duration_secs);
    let spec_of = |i: usize| {
        spec(
            settings,
            endpoints[i],
            CONCURRENCY,
            false,
            duration,
            Some(probes[i].clone()),
            Era::Stateful,
        )
    };
    let at = Interleaved {
        name: &name,
        concurrency: CONCURRENCY,
        new_connection: false,
        targets: &TARGETS,
    };
    at.run(settings, spec_of, ticks_per_second, procs).await
}
