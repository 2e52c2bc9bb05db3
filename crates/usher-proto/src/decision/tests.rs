use std::collections::HashMap;

use serde_json::json;

use super::*;

fn hub(host: &str, location: &str, weight: u32, apply: bool) -> LinkedHub {
    LinkedHub {
        hostname: host.into(),
        location: Some(location.into()),
        weight,
        apply_allocation_policy: apply,
    }
}

fn three_hubs() -> Vec<LinkedHub> {
    vec![
        hub("a.hub", "westeurope", 1, true),
        hub("b.hub", "eastus", 1, true),
        hub("c.hub", "westeurope", 1, true),
    ]
}

fn enrollment(policy: Option<AllocationPolicy>, hubs: &[&str]) -> EnrollmentView {
    EnrollmentView {
        enabled: true,
        device_id: None,
        allocation_policy: policy,
        iot_hubs: hubs.iter().map(|h| (*h).to_owned()).collect(),
        reprovision_policy: None,
        initial_twin: Some(json!({"tags": {"site": "x"}})),
    }
}

fn inputs<'a>(
    id: &'a str,
    e: &'a EnrollmentView,
    previous: Option<&'a Previous>,
    hubs: &'a [LinkedHub],
) -> Inputs<'a> {
    Inputs {
        registration_id: id,
        enrollment: e,
        previous,
        hubs,
        default_policy: AllocationPolicy::Hashed,
        device_location: None,
        webhook: None,
    }
}

fn hub_of(outcome: &Outcome) -> &str {
    match outcome {
        Outcome::Assigned { assignment, .. } => &assignment.hub,
        other => panic!("not assigned: {other:?}"),
    }
}

#[test]
fn a_disabled_enrollment_creates_nothing_whatever_else_holds() {
    let hubs = three_hubs();
    let mut e = enrollment(Some(AllocationPolicy::Custom), &["a.hub"]);
    e.enabled = false;
    let prev = Previous {
        assigned: Some(Assignment {
            hub: "a.hub".into(),
            device_id: "d".into(),
            substatus: Substatus::InitialAssignment,
        }),
        initial_hub: Some("a.hub".into()),
    };
    for previous in [None, Some(&prev)] {
        assert_eq!(decide(&inputs("d", &e, previous, &hubs)), Outcome::Disabled);
    }
}

#[test]
fn static_takes_the_named_hub_or_with_none_named_the_linked_hubs() {
    let hubs = three_hubs();
    let named = enrollment(Some(AllocationPolicy::Static), &["b.hub"]);
    for n in 0..50 {
        let id = format!("dev-{n}");
        assert_eq!(hub_of(&decide(&inputs(&id, &named, None, &hubs))), "b.hub");
    }
    // None named (Microsoft's Node e2e suite does this): allocated among all linked hubs, as the
    // instance default (hashed) would.
    let unnamed = enrollment(Some(AllocationPolicy::Static), &[]);
    let hashed = enrollment(Some(AllocationPolicy::Hashed), &[]);
    let mut seen = std::collections::HashSet::new();
    for n in 0..50 {
        let id = format!("dev-{n}");
        let got = decide(&inputs(&id, &unnamed, None, &hubs));
        assert_eq!(
            hub_of(&got),
            hub_of(&decide(&inputs(&id, &hashed, None, &hubs)))
        );
        seen.insert(hub_of(&got).to_owned());
    }
    assert_eq!(seen.len(), 3, "spread over every linked hub");
    // A named hub that is not linked fails with 404210.
    let gone = enrollment(Some(AllocationPolicy::Static), &["zz.hub"]);
    assert!(matches!(
        decide(&inputs("d", &gone, None, &hubs)),
        Outcome::Failed {
            code: ErrorCode::LinkedHubNotFound,
            ..
        }
    ));
}

#[test]
fn hashed_follows_weights_within_tolerance_over_10000_devices() {
    let hubs = vec![
        hub("a.hub", "x", 1, true),
        hub("b.hub", "x", 2, true),
        hub("c.hub", "x", 7, true),
    ];
    let e = enrollment(None, &[]);
    let mut counts: HashMap<String, u32> = HashMap::new();
    for n in 0..10_000 {
        let id = format!("device-{n:05}");
        *counts
            .entry(hub_of(&decide(&inputs(&id, &e, None, &hubs))).to_owned())
            .or_default() += 1;
    }
    for (host, share) in [("a.hub", 0.1), ("b.hub", 0.2), ("c.hub", 0.7)] {
        let got = f64::from(counts[host]) / 10_000.0;
        assert!(
            (got - share).abs() < 0.02,
            "{host}: {got} (want {share} ± 0.02)"
        );
    }
}

#[test]
fn hashed_moves_only_the_devices_a_new_hub_takes() {
    let before = vec![hub("a.hub", "x", 1, true), hub("b.hub", "x", 1, true)];
    let mut after = before.clone();
    after.push(hub("c.hub", "x", 1, true));
    let e = enrollment(None, &[]);
    let mut moved = 0;
    for n in 0..10_000 {
        let id = format!("device-{n}");
        let was = decide(&inputs(&id, &e, None, &before));
        let now = decide(&inputs(&id, &e, None, &after));
        if hub_of(&was) != hub_of(&now) {
            assert_eq!(
                hub_of(&now),
                "c.hub",
                "a device only ever moves to the new hub"
            );
            moved += 1;
        }
    }
    // The new hub takes about a third; nobody else moves.
    assert!((3_000..3_700).contains(&moved), "{moved}");
    // A hub with applyAllocationPolicy off takes no part unless named.
    let mut off = before;
    off.push(hub("c.hub", "x", 1000, false));
    for n in 0..200 {
        let id = format!("device-{n}");
        assert_ne!(hub_of(&decide(&inputs(&id, &e, None, &off))), "c.hub");
    }
    let named = enrollment(None, &["c.hub"]);
    assert_eq!(hub_of(&decide(&inputs("d", &named, None, &off))), "c.hub");
}

#[test]
fn geo_latency_prefers_the_devices_location_then_falls_back_to_hashed() {
    let hubs = three_hubs();
    let e = enrollment(Some(AllocationPolicy::GeoLatency), &[]);
    let mut seen = std::collections::HashSet::new();
    for n in 0..200 {
        let id = format!("dev-{n}");
        let mut i = inputs(&id, &e, None, &hubs);
        i.device_location = Some("WestEurope");
        let got = decide(&i);
        assert_ne!(hub_of(&got), "b.hub", "never the other region's hub");
        seen.insert(hub_of(&got).to_owned());
        // No hub in the device's location (or no location known): hashed over all.
        i.device_location = Some("japaneast");
        let far = decide(&i);
        i.device_location = None;
        assert_eq!(hub_of(&far), hub_of(&decide(&i)));
        let hashed = enrollment(Some(AllocationPolicy::Hashed), &[]);
        assert_eq!(
            hub_of(&far),
            hub_of(&decide(&inputs(&id, &hashed, None, &hubs)))
        );
    }
    assert_eq!(seen.len(), 2, "both west-European hubs take devices");
}

#[test]
fn the_instance_default_applies_when_the_enrollment_names_no_policy() {
    let hubs = three_hubs();
    let e = enrollment(None, &[]);
    let mut i = inputs("dev-1", &e, None, &hubs);
    i.default_policy = AllocationPolicy::GeoLatency;
    i.device_location = Some("eastus");
    assert_eq!(hub_of(&decide(&i)), "b.hub");
}

#[test]
fn custom_asks_the_webhook_then_maps_its_answer() {
    let hubs = three_hubs();
    let e = enrollment(Some(AllocationPolicy::Custom), &["a.hub", "b.hub"]);
    assert_eq!(
        decide(&inputs("d", &e, None, &hubs)),
        Outcome::CallWebhook {
            linked_hubs: vec!["a.hub".into(), "b.hub".into()]
        }
    );
    let all = enrollment(Some(AllocationPolicy::Custom), &[]);
    assert!(matches!(
        decide(&inputs("d", &all, None, &hubs)),
        Outcome::CallWebhook { linked_hubs } if linked_hubs.len() == 3
    ));
    let answer = |w: Webhook| {
        let mut i = inputs("d", &e, None, &hubs);
        i.webhook = Some(Box::leak(Box::new(w)));
        decide(&i)
    };
    match answer(Webhook::Answered {
        hub: Some("B.HUB".into()),
        initial_twin: Some(json!({"tags": {"from": "webhook"}})),
        payload: Some(json!({"back": 1})),
    }) {
        Outcome::Assigned {
            assignment,
            twin,
            payload,
            ..
        } => {
            assert_eq!(assignment.hub, "b.hub");
            assert_eq!(
                twin,
                Twin::Initial(Some(json!({"tags": {"from": "webhook"}})))
            );
            assert_eq!(payload, Some(json!({"back": 1})));
        }
        other => panic!("{other:?}"),
    }
    let code = |o: Outcome| match o {
        Outcome::Failed { code, .. } => code,
        other => panic!("{other:?}"),
    };
    for empty in [None, Some(String::new())] {
        let o = answer(Webhook::Answered {
            hub: empty,
            initial_twin: None,
            payload: None,
        });
        assert_eq!(code(o), ErrorCode::CustomAllocationIotHubNotSpecified);
    }
    let elsewhere = answer(Webhook::Answered {
        hub: Some("c.hub".into()),
        initial_twin: None,
        payload: None,
    });
    assert_eq!(
        code(elsewhere),
        ErrorCode::CustomAllocationFailed,
        "not offered"
    );
    assert_eq!(
        code(answer(Webhook::Unauthorized)),
        ErrorCode::CustomAllocationUnauthorizedAccess
    );
    assert_eq!(
        code(answer(Webhook::Failed("status 500".into()))),
        ErrorCode::CustomAllocationFailed
    );
    // The enrollment's twin stays unless the webhook gives one.
    match answer(Webhook::Answered {
        hub: Some("a.hub".into()),
        initial_twin: None,
        payload: None,
    }) {
        Outcome::Assigned { twin, .. } => {
            assert_eq!(twin, Twin::Initial(Some(json!({"tags": {"site": "x"}}))));
        }
        other => panic!("{other:?}"),
    }
}

/// Every reprovision policy × every previous state, for a device whose allocation now lands on
/// `to`: the substatus, the twin and the identity removed.
#[test]
fn re_registration_every_policy_and_previous_state() {
    let hubs = three_hubs();
    let policies: [(&str, Option<ReprovisionPolicy>); 4] = [
        ("absent (migrate)", None),
        (
            "migrate",
            Some(ReprovisionPolicy {
                update_hub_assignment: true,
                migrate_device_data: true,
            }),
        ),
        (
            "reset",
            Some(ReprovisionPolicy {
                update_hub_assignment: true,
                migrate_device_data: false,
            }),
        ),
        (
            "never",
            Some(ReprovisionPolicy {
                update_hub_assignment: false,
                migrate_device_data: false,
            }),
        ),
    ];
    let at = |hub: &str, initial: &str, substatus| Previous {
        assigned: Some(Assignment {
            hub: hub.into(),
            device_id: "dev".into(),
            substatus,
        }),
        initial_hub: Some(initial.into()),
    };
    let never_assigned = Previous {
        assigned: None,
        initial_hub: None,
    };
    let on_same = at("b.hub", "b.hub", InitialAssignment);
    let on_other = at("a.hub", "a.hub", InitialAssignment);
    let back_home = at("a.hub", "b.hub", DeviceDataMigrated);
    let on_unlinked = at("gone.hub", "gone.hub", InitialAssignment);
    let initial = || Twin::Initial(Some(json!({"tags": {"site": "x"}})));
    let from_a = || Twin::MigrateFrom {
        hub: "a.hub".into(),
        device_id: "dev".into(),
    };
    let from_gone = || Twin::MigrateFrom {
        hub: "gone.hub".into(),
        device_id: "dev".into(),
    };
    let a_removed = Some(("a.hub".to_owned(), "dev".to_owned()));
    let gone_removed = Some(("gone.hub".to_owned(), "dev".to_owned()));
    use Substatus::*;
    // (policy, previous, expected hub, substatus, twin, removed)
    #[allow(clippy::type_complexity)]
    let table: Vec<(
        &str,
        Option<&Previous>,
        &str,
        Substatus,
        Twin,
        Option<(String, String)>,
    )> = vec![
        (
            "absent (migrate)",
            None,
            "b.hub",
            InitialAssignment,
            initial(),
            None,
        ),
        (
            "absent (migrate)",
            Some(&never_assigned),
            "b.hub",
            InitialAssignment,
            initial(),
            None,
        ),
        (
            "absent (migrate)",
            Some(&on_same),
            "b.hub",
            InitialAssignment,
            Twin::Keep,
            None,
        ),
        (
            "absent (migrate)",
            Some(&on_other),
            "b.hub",
            DeviceDataMigrated,
            from_a(),
            a_removed.clone(),
        ),
        (
            "absent (migrate)",
            Some(&back_home),
            "b.hub",
            ReprovisionedToInitialAssignment,
            from_a(),
            a_removed.clone(),
        ),
        (
            "absent (migrate)",
            Some(&on_unlinked),
            "b.hub",
            DeviceDataMigrated,
            from_gone(),
            gone_removed.clone(),
        ),
        ("migrate", None, "b.hub", InitialAssignment, initial(), None),
        (
            "migrate",
            Some(&never_assigned),
            "b.hub",
            InitialAssignment,
            initial(),
            None,
        ),
        (
            "migrate",
            Some(&on_same),
            "b.hub",
            InitialAssignment,
            Twin::Keep,
            None,
        ),
        (
            "migrate",
            Some(&on_other),
            "b.hub",
            DeviceDataMigrated,
            from_a(),
            a_removed.clone(),
        ),
        (
            "migrate",
            Some(&back_home),
            "b.hub",
            ReprovisionedToInitialAssignment,
            from_a(),
            a_removed.clone(),
        ),
        (
            "migrate",
            Some(&on_unlinked),
            "b.hub",
            DeviceDataMigrated,
            from_gone(),
            gone_removed.clone(),
        ),
        ("reset", None, "b.hub", InitialAssignment, initial(), None),
        (
            "reset",
            Some(&never_assigned),
            "b.hub",
            InitialAssignment,
            initial(),
            None,
        ),
        (
            "reset",
            Some(&on_same),
            "b.hub",
            DeviceDataReset,
            initial(),
            None,
        ),
        (
            "reset",
            Some(&on_other),
            "b.hub",
            DeviceDataReset,
            initial(),
            a_removed.clone(),
        ),
        (
            "reset",
            Some(&back_home),
            "b.hub",
            ReprovisionedToInitialAssignment,
            initial(),
            a_removed,
        ),
        (
            "reset",
            Some(&on_unlinked),
            "b.hub",
            DeviceDataReset,
            initial(),
            gone_removed.clone(),
        ),
        ("never", None, "b.hub", InitialAssignment, initial(), None),
        (
            "never",
            Some(&never_assigned),
            "b.hub",
            InitialAssignment,
            initial(),
            None,
        ),
        (
            "never",
            Some(&on_same),
            "b.hub",
            InitialAssignment,
            Twin::Keep,
            None,
        ),
        // Never re-provision: stays on its hub while that hub is linked.
        (
            "never",
            Some(&on_other),
            "a.hub",
            InitialAssignment,
            Twin::Keep,
            None,
        ),
        (
            "never",
            Some(&back_home),
            "a.hub",
            DeviceDataMigrated,
            Twin::Keep,
            None,
        ),
        // Its hub is gone: allocated afresh.
        (
            "never",
            Some(&on_unlinked),
            "b.hub",
            InitialAssignment,
            initial(),
            gone_removed,
        ),
    ];
    assert_eq!(table.len(), policies.len() * 6, "every combination");
    for (policy_name, previous, want_hub, want_substatus, want_twin, want_removed) in table {
        let policy = policies.iter().find(|(n, _)| *n == policy_name).unwrap().1;
        let mut e = enrollment(Some(AllocationPolicy::Static), &["b.hub"]);
        e.reprovision_policy = policy;
        e.device_id = Some("dev".into());
        let got = decide(&inputs("dev", &e, previous, &hubs));
        let case = format!("{policy_name} / {previous:?}");
        match got {
            Outcome::Assigned {
                assignment,
                twin,
                remove,
                ..
            } => {
                assert_eq!(assignment.hub, want_hub, "{case}");
                assert_eq!(assignment.substatus, want_substatus, "{case}");
                assert_eq!(twin, want_twin, "{case}");
                assert_eq!(remove, want_removed, "{case}");
            }
            other => panic!("{case}: {other:?}"),
        }
    }
}

#[test]
fn the_device_id_comes_from_the_enrollment_and_a_new_one_replaces_the_old_identity() {
    let hubs = three_hubs();
    let mut e = enrollment(Some(AllocationPolicy::Static), &["a.hub"]);
    let first = decide(&inputs("Sensor-1", &e, None, &hubs));
    let Outcome::Assigned {
        assignment,
        initial_hub,
        ..
    } = first
    else {
        panic!()
    };
    assert_eq!(
        assignment.device_id, "Sensor-1",
        "the device's own spelling"
    );
    assert_eq!(initial_hub, "a.hub");
    e.device_id = Some("renamed".into());
    let prev = Previous {
        assigned: Some(assignment),
        initial_hub: Some(initial_hub),
    };
    match decide(&inputs("Sensor-1", &e, Some(&prev), &hubs)) {
        Outcome::Assigned {
            assignment,
            remove,
            twin,
            ..
        } => {
            assert_eq!(assignment.device_id, "renamed");
            assert_eq!(remove, Some(("a.hub".into(), "Sensor-1".into())));
            assert_eq!(
                twin,
                Twin::MigrateFrom {
                    hub: "a.hub".into(),
                    device_id: "Sensor-1".into()
                }
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn no_linked_hub_fails_with_404210() {
    let e = enrollment(None, &[]);
    assert!(matches!(
        decide(&inputs("d", &e, None, &[])),
        Outcome::Failed {
            code: ErrorCode::LinkedHubNotFound,
            ..
        }
    ));
    let off = vec![hub("a.hub", "x", 1, false)];
    assert!(matches!(
        decide(&inputs("d", &e, None, &off)),
        Outcome::Failed { .. }
    ));
}
