//! `spin-test-host --manifest spin.toml --listen 127.0.0.1:3000`: runs a Spin app on a
//! machine without Spin. Variables come from `SPIN_VARIABLE_*` as with `spin up`; the
//! WASIp3 instance reuse limits take `spin up`'s flags and defaults.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use spin_test_host::{App, AppConfig};

const USAGE: &str = "usage: spin-test-host [--manifest spin.toml] [--listen 127.0.0.1:3000] \
                     [--no-cron] [--max-instance-reuse-count 128] \
                     [--max-instance-concurrent-reuse-count 16]";

fn count(value: Option<String>, flag: &str) -> Result<usize> {
    let value = value.context(USAGE)?;
    match value.parse::<usize>() {
        Ok(n) if n >= 1 => Ok(n),
        _ => bail!("{flag} takes a whole number of at least 1, not `{value}`"),
    }
}

#[tokio::main]
async fn main() -> Result<()> {
    let mut manifest = PathBuf::from("spin.toml");
    let mut listen = "127.0.0.1:3000".to_string();
    let mut cron = true;
    let mut config = AppConfig {
        process_env: true,
        ..AppConfig::default()
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--manifest" | "-f" => manifest = args.next().context(USAGE)?.into(),
            "--listen" => listen = args.next().context(USAGE)?,
            "--no-cron" => cron = false,
            "--max-instance-reuse-count" => {
                config.max_instance_reuse_count = count(args.next(), &arg)?
            }
            "--max-instance-concurrent-reuse-count" => {
                config.max_instance_concurrent_reuse_count = count(args.next(), &arg)?
            }
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    config.manifest = manifest;
    let app = App::load(config).await?;
    let _schedulers = if cron {
        app.spawn_cron_schedulers()
    } else {
        Vec::new()
    };
    let listener = tokio::net::TcpListener::bind(&listen)
        .await
        .with_context(|| format!("binding {listen}"))?;
    println!("Serving http://{}", listener.local_addr()?);
    for (component, expr) in app.cron_triggers() {
        println!(
            "  cron `{expr}` -> {component}{}",
            if cron { "" } else { " (disabled)" }
        );
    }
    tokio::select! {
        _ = spin_test_host::server::serve(app, listener) => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(())
}
