//! `spin-test-host --manifest spin.toml --listen 127.0.0.1:3000`: runs a Spin app on a
//! machine without Spin. Variables come from `SPIN_VARIABLE_*` as with `spin up`.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use spin_test_host::{App, AppConfig};

const USAGE: &str =
    "usage: spin-test-host [--manifest spin.toml] [--listen 127.0.0.1:3000] [--no-cron]";

#[tokio::main]
async fn main() -> Result<()> {
    let mut manifest = PathBuf::from("spin.toml");
    let mut listen = "127.0.0.1:3000".to_string();
    let mut cron = true;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--manifest" | "-f" => manifest = args.next().context(USAGE)?.into(),
            "--listen" => listen = args.next().context(USAGE)?,
            "--no-cron" => cron = false,
            "--help" | "-h" => {
                println!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    let app = App::load(AppConfig {
        manifest,
        env: Default::default(),
        process_env: true,
    })
    .await?;
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
