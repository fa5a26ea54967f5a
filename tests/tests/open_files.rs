//! The proxy raises its open-files soft limit to the hard limit at startup: every connection
//! holds descriptors, and containers often start with a soft limit of 1024.
//!
//! Alone in its test binary: it lowers this process's own soft limit, which the proxy inherits.

use rlimit::Resource;
use strait_tests::config::proxy;
use strait_tests::Proxy;

#[test]
fn the_soft_limit_is_raised_to_the_hard_limit() {
    let (_, hard) = rlimit::getrlimit(Resource::NOFILE).expect("getrlimit");
    let low = 256;
    assert!(
        hard > low,
        "hard limit {hard}: too low for this test to tell anything"
    );
    rlimit::setrlimit(Resource::NOFILE, low, hard).expect("lower the soft limit");

    let proxy = Proxy::start(&proxy(""));
    let pid = proxy.pid().expect("running");
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .expect("open files line");
    // "Max open files            SOFT                 HARD                 files"
    let fields: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(
        fields.get(3..5),
        Some(&[&*hard.to_string(), &*hard.to_string()][..]),
        "{line}"
    );
}
