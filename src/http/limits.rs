//! `RateLimit-Policy` and `RateLimit` headers (the IETF httpapi
//! ratelimit-headers draft) on every response to a request that the API
//! rate limit admitted or refused. A token bucket of `burst` tokens
//! refilled at `rate` per second is advertised as a quota of `burst`
//! requests per window of `burst / rate` seconds.

use actix_web::Error;
use actix_web::HttpMessage as _;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;

use crate::auth::Admitted;
use crate::rate_limit::Policy;

pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The policy's name in both headers: one bucket per client.
const POLICY_NAME: &str = "per-client";

/// Both headers: the policy, and what is left of it (`remaining` requests,
/// full again in `reset_secs`).
pub fn headers(policy: Policy, remaining: u32, reset_secs: u64) -> [(HeaderName, HeaderValue); 2] {
    let value = |text: String| HeaderValue::try_from(text).expect("digits and ASCII only");
    [
        (
            RATELIMIT_POLICY,
            value(format!(
                "\"{POLICY_NAME}\";q={};w={}",
                policy.burst,
                policy.window_secs()
            )),
        ),
        (
            RATELIMIT,
            value(format!("\"{POLICY_NAME}\";r={remaining};t={reset_secs}")),
        ),
    ]
}

pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let mut response = next.call(req).await?;
    let admitted = response.request().extensions().get::<Admitted>().copied();
    if let Some(admitted) = admitted {
        let map = response.headers_mut();
        for (name, value) in headers(admitted.policy, admitted.remaining, admitted.reset_secs) {
            map.insert(name, value);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_headers_are_structured_fields_of_the_draft() {
        let [(policy_name, policy), (name, left)] = headers(
            Policy {
                rate: 200.0,
                burst: 400,
            },
            12,
            2,
        );
        assert_eq!(policy_name, "ratelimit-policy");
        assert_eq!(policy, "\"per-client\";q=400;w=2");
        assert_eq!(name, "ratelimit");
        assert_eq!(left, "\"per-client\";r=12;t=2");
    }
}
