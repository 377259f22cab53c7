//! nginx in front of an app under test, as a deployment puts it (deploy/spin-up/nginx.conf):
//! an edge cache for the edge-cache measurement, a per-address `limit_req` for the login
//! flood benchmark. Needs nginx (Debian's `nginx-light`; `scripts/deps.sh --edge`).

use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use spin_test_host::client::HttpClient;

use crate::{data_dir, free_port};

pub struct Nginx {
    child: Child,
    pub dir: PathBuf,
    pub base: String,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // TERM, not KILL: the master then stops its workers too.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

/// The nginx binary, if one is installed.
pub fn nginx_binary() -> Option<PathBuf> {
    ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// nginx on a free port in front of `origin` (`host:port`, as upstream `origin`), with
/// `http` added to its `http` block and `locations` to its server (`{dir}` in either is its
/// own directory). Every request is logged with whether the cache answered it.
pub async fn start_nginx(name: &str, origin: &str, http: &str, locations: &str) -> Nginx {
    let binary =
        nginx_binary().expect("nginx is not installed: `apt-get install nginx-light` (Debian)");
    let dir = data_dir().join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("cache")).unwrap();
    let port = free_port();
    let d = dir.display().to_string();
    let http = http.replace("{dir}", &d);
    let locations = locations.replace("{dir}", &d);
    let conf = format!(
        r#"worker_processes 1;
worker_rlimit_nofile 16384;
error_log {d}/error.log warn;
pid {d}/nginx.pid;
events {{ worker_connections 8192; }}
http {{
    log_format edge '$request_method $uri $status $upstream_cache_status $upstream_addr';
    access_log {d}/access.log edge;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    upstream origin {{ server {origin}; keepalive 256; }}
    {http}
    server {{
        listen 127.0.0.1:{port};
        {locations}
    }}
}}
"#
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    // The worker may run as another user than the master; it writes the cache.
    let _ = Command::new("chmod").args(["-R", "777"]).arg(&dir).status();
    let child = Command::new(binary)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .args(["-g", "daemon off;"])
        .spawn()
        .unwrap();
    // Owned at once, so a failed start still stops it (Drop).
    let nginx = Nginx {
        child,
        dir,
        base: format!("http://127.0.0.1:{port}"),
    };
    let probe = HttpClient::new(nginx.base.clone()).with_timeout(Duration::from_secs(2));
    for _ in 0..100 {
        if probe.get("/healthz").await.is_ok() {
            return nginx;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "nginx did not start: {:?}",
        std::fs::read_to_string(nginx.dir.join("error.log"))
    );
}
