//! Allocation throughput and memory on a /64.
//!
//! `cargo bench --bench range_alloc`: allocate 1,000,000 addresses one by one from a /64 (lowest
//! free each time), free every other one, allocate 500,000 again; report ns per allocation and
//! memory. Then the same shape through the full allocator (`decide` + `Ledger::apply`) with
//! 100,000 Services, which also builds one ledger entry per address.

use std::hint::black_box;
use std::time::Instant;

use vipam::core::allocate::{Context, Ledger, decide};
use vipam::core::pool::{BlockSpec, Pool, PoolSet, PoolSpec};
use vipam::core::range::{Family, RangeSet, ip_value};
use vipam::core::request::{RequestPolicy, ServiceView};

#[path = "common.rs"]
mod common;

fn main() {
    let pool = Pool::parse(PoolSpec::new(
        "v6",
        vec![BlockSpec::cidr("2001:db8:1::/64")],
    ))
    .unwrap();
    assert_eq!(pool.capacity(), 1u128 << 64);
    let rss_start = common::status_kib("VmRSS");

    let mut used = RangeSet::new();
    let n = 1_000_000u64;
    let start = Instant::now();
    let mut allocated = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let ip = pool.first_free(Family::V6, &used).expect("space");
        used.insert(ip_value(&ip));
        allocated.push(ip_value(&ip));
    }
    let first = start.elapsed();
    println!(
        "allocate {n} one by one from a /64: {:.1} ns/allocation ({} range(s) held)",
        first.as_nanos() as f64 / n as f64,
        used.range_count()
    );

    let start = Instant::now();
    for v in allocated.iter().step_by(2) {
        used.remove(*v);
    }
    let freed = start.elapsed();
    println!(
        "free every other one ({}): {:.1} ns/free ({} ranges held)",
        n / 2,
        freed.as_nanos() as f64 / (n / 2) as f64,
        used.range_count()
    );
    // The list of handed-out addresses (16 MB) is only needed to free them; measure without it.
    drop(allocated);
    let rss_fragmented = common::status_kib("VmRSS");
    println!(
        "memory with {} ranges held: RSS {} KiB above the start ({:.0} bytes per range)",
        used.range_count(),
        rss_fragmented.saturating_sub(rss_start),
        rss_fragmented.saturating_sub(rss_start) as f64 * 1024.0 / used.range_count() as f64
    );

    let start = Instant::now();
    for _ in 0..n / 2 {
        let ip = pool.first_free(Family::V6, &used).expect("space");
        used.insert(ip_value(&ip));
    }
    let second = start.elapsed();
    println!(
        "allocate {} again into the gaps: {:.1} ns/allocation ({} range(s) held)",
        n / 2,
        second.as_nanos() as f64 / (n / 2) as f64,
        used.range_count()
    );
    println!(
        "memory after the gaps are filled again: RSS {} KiB (peak {} KiB, start {} KiB)",
        common::status_kib("VmRSS"),
        common::status_kib("VmHWM"),
        rss_start
    );

    // The full allocator, one Service at a time.
    let pools = PoolSet::new(vec![pool]);
    let ctx = Context::default();
    let mut ledger = Ledger::new();
    let services = 100_000;
    let policy = RequestPolicy::default();
    let requests: Vec<_> = (0..services)
        .map(|i| {
            ServiceView {
                namespace: format!("ns{}", i % 100),
                name: format!("svc{i}"),
                service_type: Some("LoadBalancer".into()),
                ip_families: vec!["IPv6".into()],
                ports: vec![(None, 443)],
                ..ServiceView::default()
            }
            .request(&policy)
            .unwrap()
            .unwrap()
        })
        .collect();
    let start = Instant::now();
    for request in &requests {
        let decision = decide(request, &pools, &ledger, &ctx).expect("space");
        ledger.apply(request, black_box(&decision), &ctx);
    }
    let full = start.elapsed();
    println!(
        "decide + apply for {services} Services (one ledger entry each): {:.1} ns/Service; \
         peak RSS {} KiB",
        full.as_nanos() as f64 / services as f64,
        common::status_kib("VmHWM")
    );
}
