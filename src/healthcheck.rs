//! `thinhook healthcheck`: asks this gateway's `/readyz`, for container
//! health checks (a distroless image has no curl). It opens neither the
//! database nor the secrets key: the gateway itself checks those.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use anyhow::Context;

use crate::config::Settings;

/// Ok when `/readyz` on the `listen` address answers 200.
pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let mut address = settings.listen;
    // Listening on every interface: ask it on loopback.
    match address.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => address.set_ip(Ipv4Addr::LOCALHOST.into()),
        IpAddr::V6(ip) if ip.is_unspecified() => address.set_ip(Ipv6Addr::LOCALHOST.into()),
        _ => {}
    }
    let url = format!("http://{address}/readyz");
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .no_proxy()
        .build()?;
    let response = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("{url} did not answer"))?;
    let status = response.status();
    anyhow::ensure!(status.is_success(), "{url} answered {status}");
    Ok(())
}
