//! The control-plane VIP's failover gap as a client of the API port sees it, on a LAN of
//! network namespaces (root): three control-plane nodes, a stand-in API server on each
//! (tests/cplab). Crash (kill -9 of the leader) and graceful handover (SIGTERM), with the
//! default timings and fast ones. Results go to BENCHMARKS.md.
//!
//! ```text
//! cargo bench --bench control_plane_failover
//! ```
//!
//! Anchor: kube-vip documents an average control-plane failover of about 3 s.

#[path = "../tests/agentlab/mod.rs"]
mod agentlab;
#[path = "../tests/cplab/mod.rs"]
mod cplab;
#[path = "../tests/netlab/mod.rs"]
mod netlab;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use agentlab::{AgentFlags, gap_after};
use cplab::CpLab;

const TRIALS: usize = 5;

fn main() {
    run(
        "default timings (--lease-duration 3s --renew-interval 1s)",
        AgentFlags::default(),
    );
    run(
        "fast timings (--lease-duration 1s --renew-interval 250ms)",
        AgentFlags {
            lease_duration: "1s",
            renew_interval: "250ms",
            ..AgentFlags::default()
        },
    );
}

fn run(title: &str, flags: AgentFlags) {
    let cp = CpLab::new("cp-bench", flags, &[]);
    cp.start_all();
    let mut crash = Vec::new();
    let mut graceful = Vec::new();
    for _ in 0..TRIALS {
        crash.push(trial(&cp, "KILL"));
        graceful.push(trial(&cp, "TERM"));
    }
    println!("control-plane VIP, {title}, {TRIALS} trials each");
    report("crash (kill -9 of the leader)", &mut crash);
    report("graceful (SIGTERM of the leader)", &mut graceful);
}

/// Signals the leader, measures the gap seen by the client, restarts the old leader and waits
/// until exactly one node holds the VIP again.
fn trial(cp: &CpLab, signal: &str) -> Duration {
    let leader = cp.wait_single_holder(None, Duration::from_secs(20));
    cp.reach(Duration::from_secs(10));
    let prober = cp.prober(Duration::from_millis(10));
    std::thread::sleep(Duration::from_millis(300));
    let at = Instant::now();
    cp.lab.signal_agent(&leader, signal);
    let deadline = at + Duration::from_secs(15);
    let gap = loop {
        std::thread::sleep(Duration::from_millis(50));
        let samples = prober_samples(&prober);
        if let Some((gap, _)) = gap_after(&samples, at, &leader) {
            break gap;
        }
        assert!(Instant::now() < deadline, "no failover\n{}", cp.lab.logs());
    };
    drop(prober);
    let _ = cp.lab.wait_agent_exit(&leader, Duration::from_secs(10));
    cp.start(&leader);
    // Settle: the restarted node removes a crash's leftover VIP and stands by.
    std::thread::sleep(Duration::from_secs(2));
    cp.wait_single_holder(None, Duration::from_secs(20));
    gap
}

fn prober_samples(prober: &agentlab::Prober) -> Vec<(Instant, Option<String>)> {
    prober.samples()
}

fn report(name: &str, gaps: &mut [Duration]) {
    gaps.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let median = gaps[gaps.len() / 2];
    println!(
        "  {name}: median {:.0} ms, min {:.0} ms, max {:.0} ms ({:?})",
        ms(median),
        ms(gaps[0]),
        ms(gaps[gaps.len() - 1]),
        gaps.iter()
            .map(|g| format!("{:.0}", ms(*g)))
            .collect::<Vec<_>>()
    );
}
