//! Tells the test code whether PostgreSQL tests can run: with
//! `TEST_POSTGRES_URL` set, the `postgres_tests` cfg is on; without it the
//! PostgreSQL variants are compiled as `#[ignore]`d tests, so `cargo test`
//! lists each as ignored, with the reason, and counts them in its summary.

fn main() {
    println!("cargo::rerun-if-env-changed=TEST_POSTGRES_URL");
    println!("cargo::rustc-check-cfg=cfg(postgres_tests)");
    if std::env::var_os("TEST_POSTGRES_URL").is_some_and(|url| !url.is_empty()) {
        println!("cargo::rustc-cfg=postgres_tests");
    }
}
