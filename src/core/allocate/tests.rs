use super::*;
use crate::core::pool::{BlockSpec, Pool, PoolSpec};
use crate::core::request::{ANN_IPS, ANN_POOL, ANN_SHARING_CROSS_NAMESPACE, ANN_SHARING_KEY};
use crate::core::request::{RequestPolicy, ServiceView};
use proptest::prelude::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pools(specs: Vec<PoolSpec>) -> PoolSet {
    PoolSet::new(specs.into_iter().map(|s| Pool::parse(s).unwrap()).collect())
}

fn lan() -> PoolSet {
    pools(vec![PoolSpec::new(
        "lan",
        vec![BlockSpec::range("192.0.2.10", "192.0.2.14")],
    )])
}

struct Svc(ServiceView);

fn svc(ns: &str, name: &str) -> Svc {
    Svc(ServiceView {
        namespace: ns.into(),
        name: name.into(),
        service_type: Some("LoadBalancer".into()),
        ports: vec![(None, 80)],
        ..ServiceView::default()
    })
}

impl Svc {
    fn ann(mut self, k: &str, v: &str) -> Svc {
        self.0.annotations.insert(k.into(), v.into());
        self
    }
    fn port(mut self, proto: &str, port: i32) -> Svc {
        self.0.ports = vec![(Some(proto.into()), port)];
        self
    }
    fn req(&self) -> Request {
        self.0.request(&RequestPolicy::default()).unwrap().unwrap()
    }
}

const CTX: Context = Context {
    now: 1000,
    sticky_release_secs: 600,
};

fn run(ledger: &mut Ledger, pools: &PoolSet, s: &Svc) -> Result<Decision, Denial> {
    let r = s.req();
    let d = decide(&r, pools, ledger, &CTX)?;
    ledger.apply(&r, &d, &CTX);
    Ok(d)
}

#[test]
fn auto_takes_the_lowest_free_address_of_the_first_pool() {
    let mut l = Ledger::new();
    let p = pools(vec![
        PoolSpec::new("b", vec![BlockSpec::range("192.0.2.20", "192.0.2.21")]),
        PoolSpec::new("a", vec![BlockSpec::range("192.0.2.10", "192.0.2.10")]),
    ]);
    let d = run(&mut l, &p, &svc("x", "one")).unwrap();
    assert_eq!(
        d.assignments,
        vec![Assignment {
            ip: ip("192.0.2.10"),
            pool: "a".into(),
            how: How::Auto
        }]
    );
    assert_eq!(
        run(&mut l, &p, &svc("x", "two")).unwrap().ips(),
        vec![ip("192.0.2.20")]
    );
    assert_eq!(
        run(&mut l, &p, &svc("x", "three")).unwrap().ips(),
        vec![ip("192.0.2.21")]
    );
    let err = run(&mut l, &p, &svc("x", "four")).unwrap_err();
    assert_eq!(err.kind, DenialKind::Exhausted);
    assert_eq!(
        err.message,
        "no free IPv4 address for x/four in a (192.0.2.10; 1 of 1 allocated), \
         b (192.0.2.20-192.0.2.21; 2 of 2 allocated)"
    );
}

#[test]
fn existing_assignments_are_kept() {
    let mut l = Ledger::new();
    let p = lan();
    run(&mut l, &p, &svc("x", "one")).unwrap();
    let again = run(&mut l, &p, &svc("x", "one")).unwrap();
    assert_eq!(again.assignments[0].how, How::Kept);
    assert_eq!(again.ips(), vec![ip("192.0.2.10")]);
    // The pool is edited away entirely: the Service still keeps its address.
    let moved = pools(vec![PoolSpec::new(
        "other",
        vec![BlockSpec::cidr("198.51.100.0/24")],
    )]);
    let kept = run(&mut l, &moved, &svc("x", "one")).unwrap();
    assert_eq!(
        (kept.ips(), kept.assignments[0].how.clone()),
        (vec![ip("192.0.2.10")], How::Kept)
    );
    // And with no pools at all.
    let kept = run(&mut l, &PoolSet::default(), &svc("x", "one")).unwrap();
    assert_eq!(kept.ips(), vec![ip("192.0.2.10")]);
}

#[test]
fn a_changed_pin_moves_and_drops_the_old_address() {
    let mut l = Ledger::new();
    let p = lan();
    run(&mut l, &p, &svc("x", "one")).unwrap();
    let d = run(&mut l, &p, &svc("x", "one").ann(ANN_IPS, "192.0.2.13")).unwrap();
    assert_eq!(
        d.assignments[0],
        Assignment {
            ip: ip("192.0.2.13"),
            pool: "lan".into(),
            how: How::Pinned
        }
    );
    assert_eq!(d.dropped, vec![ip("192.0.2.10")]);
    assert!(l.get(&ip("192.0.2.10")).unwrap().is_released());
    // Reserved for x/one: another Service cannot pin it, auto skips it.
    let err = run(&mut l, &p, &svc("y", "two").ann(ANN_IPS, "192.0.2.10")).unwrap_err();
    assert_eq!(err.kind, DenialKind::Reserved);
    assert!(
        err.message.contains("x/one released 0s ago"),
        "{}",
        err.message
    );
    assert_eq!(
        run(&mut l, &p, &svc("y", "two")).unwrap().ips(),
        vec![ip("192.0.2.11")]
    );
}

#[test]
fn released_addresses_come_back_to_their_owner_within_the_sticky_period() {
    let mut l = Ledger::new();
    let p = lan();
    run(&mut l, &p, &svc("x", "one")).unwrap();
    run(&mut l, &p, &svc("x", "two")).unwrap();
    l.release(&ServiceRef::new("x", "one"), &CTX);
    // Someone else asks: 192.0.2.10 is reserved, so they get .12.
    assert_eq!(
        run(&mut l, &p, &svc("x", "three")).unwrap().ips(),
        vec![ip("192.0.2.12")]
    );
    let d = run(&mut l, &p, &svc("x", "one")).unwrap();
    assert_eq!(
        (d.ips(), d.assignments[0].how.clone()),
        (vec![ip("192.0.2.10")], How::Reclaimed)
    );
    // After expiry the address is free for anyone.
    l.release(&ServiceRef::new("x", "one"), &CTX);
    let later = Context {
        now: CTX.now + 600,
        ..CTX
    };
    let r = svc("x", "four").req();
    let d = decide(&r, &p, &l, &later).unwrap();
    assert_eq!(d.ips(), vec![ip("192.0.2.10")]);
    assert_eq!(l.expire(&later), vec![ip("192.0.2.10")]);
}

#[test]
fn pins_must_lie_in_a_usable_pool() {
    let mut l = Ledger::new();
    let p = pools(vec![
        PoolSpec::new("lan", vec![BlockSpec::range("192.0.2.10", "192.0.2.14")]),
        {
            let mut s = PoolSpec::new("team", vec![BlockSpec::cidr("198.51.100.0/24")]);
            s.namespaces = vec!["team".into()];
            s
        },
    ]);
    let err = run(&mut l, &p, &svc("x", "a").ann(ANN_IPS, "203.0.113.5")).unwrap_err();
    assert_eq!(err.kind, DenialKind::PinOutsidePools);
    assert_eq!(
        err.message,
        "vipam.io/ips pins 203.0.113.5, which is outside every IPPool; the pools this Service may use are lan (192.0.2.10-192.0.2.14)"
    );
    let err = run(&mut l, &p, &svc("x", "a").ann(ANN_IPS, "198.51.100.7")).unwrap_err();
    assert!(
        err.message.contains(
            "which is in IPPool team, but that pool is namespaces [team] does not include x"
        ),
        "{}",
        err.message
    );
    let err = run(&mut l, &p, &svc("x", "a").ann(ANN_IPS, "198.51.100.0")).unwrap_err();
    assert_eq!(err.kind, DenialKind::PinOutsidePools);
    let d = run(&mut l, &p, &svc("team", "a").ann(ANN_IPS, "198.51.100.7")).unwrap();
    assert_eq!(d.assignments[0].pool, "team");
    let err = run(&mut l, &p, &svc("team", "b").ann(ANN_IPS, "198.51.100.255")).unwrap_err();
    assert_eq!(err.kind, DenialKind::PinUnusable);
    assert!(
        err.message.contains("network or broadcast"),
        "{}",
        err.message
    );
    let err = run(&mut l, &p, &svc("x", "a").ann(ANN_POOL, "nope")).unwrap_err();
    assert_eq!(
        (err.kind, err.message.as_str()),
        (
            DenialKind::UnknownPool,
            "vipam.io/pool names IPPool nope that does not exist"
        )
    );
}

#[test]
fn sharing_rules() {
    let mut l = Ledger::new();
    let p = lan();
    let pin = "192.0.2.12";
    run(
        &mut l,
        &p,
        &svc("a", "web")
            .ann(ANN_IPS, pin)
            .ann(ANN_SHARING_KEY, "k")
            .port("TCP", 443),
    )
    .unwrap();
    // No key.
    let err = run(&mut l, &p, &svc("a", "other").ann(ANN_IPS, pin)).unwrap_err();
    assert_eq!(err.kind, DenialKind::IpInUse);
    assert_eq!(err.others, vec![ServiceRef::new("a", "web")]);
    assert!(err.message.contains("192.0.2.12 is already used by Service a/web with sharing key \"k\"; this Service has no sharing key"), "{}", err.message);
    // Other key.
    let err = run(
        &mut l,
        &p,
        &svc("a", "other")
            .ann(ANN_IPS, pin)
            .ann(ANN_SHARING_KEY, "j"),
    )
    .unwrap_err();
    assert!(
        err.message.contains("this Service's sharing key is \"j\""),
        "{}",
        err.message
    );
    // Same key, same port.
    let err = run(
        &mut l,
        &p,
        &svc("a", "other")
            .ann(ANN_IPS, pin)
            .ann(ANN_SHARING_KEY, "k")
            .port("TCP", 443),
    )
    .unwrap_err();
    assert_eq!(err.kind, DenialKind::PortClash);
    assert!(
        err.message.contains("Service a/web already uses TCP/443"),
        "{}",
        err.message
    );
    // Same key, other protocol: fine.
    let d = run(
        &mut l,
        &p,
        &svc("a", "dns")
            .ann(ANN_IPS, pin)
            .ann(ANN_SHARING_KEY, "k")
            .port("UDP", 443),
    )
    .unwrap();
    assert_eq!(d.assignments[0].how, How::Shared("k".into()));
    // Cross-namespace needs consent on both sides.
    let err = run(
        &mut l,
        &p,
        &svc("b", "x")
            .ann(ANN_IPS, pin)
            .ann(ANN_SHARING_KEY, "k")
            .ann(ANN_SHARING_CROSS_NAMESPACE, "a")
            .port("TCP", 8080),
    )
    .unwrap_err();
    assert_eq!(err.kind, DenialKind::CrossNamespace);
    assert!(
        err.message.contains("a/dns does not allow namespace b"),
        "{}",
        err.message
    );
    // Auto with a key joins the existing shared address.
    let d = run(
        &mut l,
        &p,
        &svc("a", "auto").ann(ANN_SHARING_KEY, "k").port("TCP", 9000),
    )
    .unwrap();
    assert_eq!(d.ips(), vec![ip(pin)]);
    // Auto with a key whose address is full on that port gets a fresh one.
    let d = run(
        &mut l,
        &p,
        &svc("a", "auto2")
            .ann(ANN_SHARING_KEY, "k")
            .port("TCP", 9000),
    )
    .unwrap();
    assert_eq!(
        (d.ips(), d.assignments[0].how.clone()),
        (vec![ip("192.0.2.10")], How::Auto)
    );
    let e = l.get(&ip(pin)).unwrap();
    assert_eq!(e.members.len(), 3);
}

#[test]
fn local_traffic_policy_needs_the_same_selector() {
    let mut l = Ledger::new();
    let p = lan();
    let mut a = svc("a", "one")
        .ann(ANN_IPS, "192.0.2.11")
        .ann(ANN_SHARING_KEY, "k");
    a.0.external_traffic_policy = Some("Local".into());
    a.0.selector = [("app".to_string(), "x".to_string())].into();
    run(&mut l, &p, &a).unwrap();
    let mut b = svc("a", "two")
        .ann(ANN_IPS, "192.0.2.11")
        .ann(ANN_SHARING_KEY, "k")
        .port("UDP", 53);
    b.0.selector = [("app".to_string(), "y".to_string())].into();
    let err = run(&mut l, &p, &b).unwrap_err();
    assert_eq!(err.kind, DenialKind::SelectorMismatch);
    b.0.selector = [("app".to_string(), "x".to_string())].into();
    run(&mut l, &p, &b).unwrap();
}

#[test]
fn dual_stack_policies() {
    let p = pools(vec![
        PoolSpec::new("v4", vec![BlockSpec::range("192.0.2.10", "192.0.2.11")]),
        PoolSpec::new("v6", vec![BlockSpec::cidr("2001:db8::/126")]),
    ]);
    let only_v4 = pools(vec![PoolSpec::new(
        "v4",
        vec![BlockSpec::range("192.0.2.10", "192.0.2.11")],
    )]);
    let mut s = svc("x", "dual");
    s.0.ip_family_policy = Some("RequireDualStack".into());
    let d = decide(&s.req(), &p, &Ledger::new(), &CTX).unwrap();
    assert_eq!(d.ips(), vec![ip("192.0.2.10"), ip("2001:db8::")]);
    let err = decide(&s.req(), &only_v4, &Ledger::new(), &CTX).unwrap_err();
    assert_eq!(err.kind, DenialKind::NoPool);
    assert!(
        err.message.contains("v4: has no IPv6 addresses"),
        "{}",
        err.message
    );
    s.0.ip_family_policy = Some("PreferDualStack".into());
    let d = decide(&s.req(), &only_v4, &Ledger::new(), &CTX).unwrap();
    assert_eq!(d.ips(), vec![ip("192.0.2.10")]);
    s.0.ip_family_policy = None;
    s.0.ip_families = vec!["IPv6".into()];
    let d = decide(&s.req(), &p, &Ledger::new(), &CTX).unwrap();
    assert_eq!(d.ips(), vec![ip("2001:db8::")]);
}

#[test]
fn pool_annotation_change_moves_the_address() {
    let mut l = Ledger::new();
    let p = pools(vec![
        PoolSpec::new("a", vec![BlockSpec::range("192.0.2.10", "192.0.2.11")]),
        PoolSpec::new("b", vec![BlockSpec::range("192.0.2.20", "192.0.2.21")]),
    ]);
    run(&mut l, &p, &svc("x", "s")).unwrap();
    let d = run(&mut l, &p, &svc("x", "s").ann(ANN_POOL, "b")).unwrap();
    assert_eq!(
        (d.ips(), d.dropped.clone()),
        (vec![ip("192.0.2.20")], vec![ip("192.0.2.10")])
    );
    // Naming the pool it is already in keeps it.
    let d = run(&mut l, &p, &svc("x", "s").ann(ANN_POOL, "a,b")).unwrap();
    assert_eq!(d.assignments[0].how, How::Kept);
}

#[test]
fn an_unchanged_claim_keeps_what_it_holds_even_after_a_pool_edit() {
    let mut l = Ledger::new();
    let p = pools(vec![
        PoolSpec::new("a", vec![BlockSpec::range("192.0.2.10", "192.0.2.11")]),
        PoolSpec::new("b", vec![BlockSpec::range("192.0.2.20", "192.0.2.21")]),
    ]);
    let named = svc("x", "s").ann(ANN_POOL, "a");
    run(&mut l, &p, &named).unwrap();
    // Pool a is edited away from the address: decide alone would move the Service...
    let edited = pools(vec![
        PoolSpec::new("a", vec![BlockSpec::range("192.0.2.12", "192.0.2.13")]),
        PoolSpec::new("b", vec![BlockSpec::range("192.0.2.20", "192.0.2.21")]),
    ]);
    let moved = decide(&named.req(), &edited, &l, &CTX).unwrap();
    assert_eq!(moved.ips(), vec![ip("192.0.2.12")]);
    // ...but an unchanged claim keeps what it holds.
    assert!(same_claim(&named.req(), &named.req()));
    let kept = current_assignment(&named.req(), &l).unwrap();
    assert_eq!(
        (kept.ips(), kept.assignments[0].how.clone()),
        (vec![ip("192.0.2.10")], How::Kept)
    );
    assert!(!same_claim(
        &named.req(),
        &svc("x", "s").ann(ANN_POOL, "b").req()
    ));
    assert!(!same_claim(&named.req(), &named_port(&named)));
    // Nothing held for a requested family: no current assignment.
    assert!(current_assignment(&svc("x", "other").req(), &l).is_none());
}

fn named_port(s: &Svc) -> Request {
    let mut view = s.0.clone();
    view.ports = vec![(None, 8080)];
    view.request(&RequestPolicy::default()).unwrap().unwrap()
}

// ---- property test: random histories never break the invariants ----

#[derive(Debug, Clone)]
enum Op {
    /// Create or update service `svc` (ns = svc % 3) with an optional pin index, key, port.
    Apply {
        svc: u8,
        pin: Option<u8>,
        key: Option<u8>,
        port: u8,
        cross: bool,
    },
    Delete {
        svc: u8,
    },
    /// Replace the pool set with variant `n`.
    Pools {
        n: u8,
    },
    Tick,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0u8..8, proptest::option::of(0u8..6), proptest::option::of(0u8..2), 0u8..3, any::<bool>())
            .prop_map(|(svc, pin, key, port, cross)| Op::Apply { svc, pin, key, port, cross }),
        2 => (0u8..8).prop_map(|svc| Op::Delete { svc }),
        1 => (0u8..3).prop_map(|n| Op::Pools { n }),
        1 => Just(Op::Tick),
    ]
}

fn pool_variant(n: u8) -> PoolSet {
    match n {
        0 => pools(vec![PoolSpec::new(
            "p",
            vec![BlockSpec::range("192.0.2.1", "192.0.2.4")],
        )]),
        1 => pools(vec![
            PoolSpec::new("p", vec![BlockSpec::range("192.0.2.3", "192.0.2.5")]),
            PoolSpec::new("q", vec![BlockSpec::range("192.0.2.1", "192.0.2.2")]),
        ]),
        _ => PoolSet::default(),
    }
}

fn view_for(svc: u8, pin: Option<u8>, key: Option<u8>, port: u8, cross: bool) -> Svc {
    let mut s = svc_named(svc).port(
        if port == 2 { "UDP" } else { "TCP" },
        80 + (port as i32 % 2),
    );
    if let Some(p) = pin {
        s = s.ann(ANN_IPS, &format!("192.0.2.{}", p + 1));
    }
    if let Some(k) = key {
        s = s.ann(ANN_SHARING_KEY, &format!("k{k}"));
        if cross {
            s = s.ann(ANN_SHARING_CROSS_NAMESPACE, "*");
        }
    }
    s
}

fn svc_named(n: u8) -> Svc {
    svc(&format!("ns{}", n % 3), &format!("s{n}"))
}

fn compatible(a: &Member, b: &Member, key: &Option<String>) -> bool {
    key.is_some()
        && (a.service.namespace == b.service.namespace
            || (a.cross_namespace.allows(&b.service.namespace)
                && b.cross_namespace.allows(&a.service.namespace)))
        && a.ports.iter().all(|p| !b.ports.contains(p))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]
    #[test]
    fn random_histories_keep_the_invariants(ops in proptest::collection::vec(op(), 1..40)) {
        let mut ledger = Ledger::new();
        let mut pool_set = pool_variant(0);
        let mut ctx = CTX;
        let mut requests: BTreeMap<u8, Request> = BTreeMap::new();
        for op in ops {
            match op {
                Op::Apply { svc, pin, key, port, cross } => {
                    let request = view_for(svc, pin, key, port, cross).req();
                    let before = ledger.bound_to(&request.service);
                    let first = decide(&request, &pool_set, &ledger, &ctx);
                    // Deterministic.
                    prop_assert_eq!(&first, &decide(&request, &pool_set, &ledger, &ctx));
                    if let Ok(d) = &first {
                        if let Some(p) = &request.pins {
                            prop_assert_eq!(d.ips(), p.value.clone());
                        }
                        let previous = requests.get(&svc);
                        if previous == Some(&request) {
                            // Same request again: nothing moves.
                            prop_assert_eq!(d.ips(), before.clone());
                            prop_assert!(d.dropped.is_empty());
                        }
                        ledger.apply(&request, d, &ctx);
                        requests.insert(svc, request.clone());
                    }
                }
                Op::Delete { svc } => {
                    ledger.release(&svc_named(svc).req().service, &ctx);
                    requests.remove(&svc);
                }
                Op::Pools { n } => {
                    // A pool edit never moves a live Service.
                    pool_set = pool_variant(n);
                    for request in requests.values() {
                        let before = ledger.bound_to(&request.service);
                        if before.is_empty() { continue; }
                        let d = decide(request, &pool_set, &ledger, &ctx);
                        prop_assert_eq!(d.map(|d| d.ips()), Ok(before));
                    }
                }
                Op::Tick => {
                    ctx.now += 400;
                    ledger.expire(&ctx);
                }
            }
            // Never two incompatible Services on one address; every address in one entry only.
            for entry in ledger.entries() {
                for (i, a) in entry.members.iter().enumerate() {
                    for b in &entry.members[i + 1..] {
                        prop_assert!(!entry.is_released());
                        prop_assert!(compatible(a, b, &entry.sharing_key), "{:?}", entry);
                    }
                }
            }
            // A live Service holds at most one address per family.
            for request in requests.values() {
                let held = ledger.bound_to(&request.service);
                prop_assert!(held.len() <= 1, "{:?}", held);
            }
        }
    }
}

#[test]
fn next_expiry_is_the_first_released_entry_plus_the_sticky_period() {
    let ctx = Context {
        now: 1_000,
        sticky_release_secs: 600,
    };
    let mut ledger = Ledger::default();
    assert_eq!(ledger.next_expiry(&ctx), None);
    let entry = |ip: &str, released_at: Option<i64>| LedgerEntry {
        ip: ip.parse().unwrap(),
        pool: "lan".into(),
        sharing_key: None,
        members: Vec::new(),
        released_at,
    };
    ledger.upsert(entry("192.0.2.1", None));
    assert_eq!(ledger.next_expiry(&ctx), None, "bound entries never expire");
    ledger.upsert(entry("192.0.2.2", Some(900)));
    ledger.upsert(entry("192.0.2.3", Some(700)));
    assert_eq!(ledger.next_expiry(&ctx), Some(1_300));
    // At that second the entry is expired, one second before it is not.
    let at = |now| Context { now, ..ctx };
    assert!(ledger.clone().expire(&at(1_299)).is_empty());
    assert_eq!(
        ledger.clone().expire(&at(1_300)),
        vec!["192.0.2.3".parse::<std::net::IpAddr>().unwrap()]
    );
}
