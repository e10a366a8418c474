use super::*;
use proptest::prelude::*;

fn c(v: &str) -> Ident {
    Ident { kind: IdKind::Customer, value: v.into() }
}
fn m(v: &str) -> Ident {
    Ident { kind: IdKind::Msisdn, value: v.into() }
}
fn a(v: &str) -> Ident {
    Ident { kind: IdKind::App, value: v.into() }
}

#[test]
fn a_customer_id_is_canonical_once_linked() {
    let mut g = IdentityGraph::new();
    assert_eq!(g.observe(&[a("app1")]).canonical, "a:app1");
    assert_eq!(g.observe(&[m("h1")]).canonical, "m:h1");
    // A login links the anonymous install to the customer: its key moves.
    let o = g.observe(&[c("C1"), a("app1")]);
    assert_eq!(o.canonical, "C1");
    assert_eq!(o.merges, vec![Merge { from: "a:app1".into(), to: "C1".into() }]);
    // A call identified in CRM links the phone too.
    let o = g.observe(&[c("C1"), m("h1")]);
    assert_eq!(o.merges, vec![Merge { from: "m:h1".into(), to: "C1".into() }]);
    assert_eq!(g.observe(&[a("app1")]).canonical, "C1");
    assert_eq!(g.customers(), 1);
    assert_eq!(g.identifiers(), 3);
}

#[test]
fn without_a_customer_id_the_phone_wins_over_the_app() {
    let mut g = IdentityGraph::new();
    g.observe(&[a("zzz")]);
    let o = g.observe(&[a("zzz"), m("h9")]);
    assert_eq!(o.canonical, "m:h9");
    assert_eq!(o.merges, vec![Merge { from: "a:zzz".into(), to: "m:h9".into() }]);
}

#[test]
fn two_customer_ids_sharing_a_phone_take_the_smaller() {
    let mut g = IdentityGraph::new();
    g.observe(&[c("C2"), m("shared")]);
    let o = g.observe(&[c("C1"), m("shared")]);
    assert_eq!(o.canonical, "C1");
    assert_eq!(o.merges, vec![Merge { from: "C2".into(), to: "C1".into() }]);
}

#[test]
fn nothing_new_publishes_nothing() {
    let mut g = IdentityGraph::new();
    assert!(!g.observe(&[c("C1"), m("h")]).links.is_empty());
    assert!(g.observe(&[c("C1"), m("h")]).links.is_empty());
    assert!(g.observe(&[m("h")]).links.is_empty());
}

#[test]
fn topic_keys_round_trip() {
    for id in [c("C1"), m("abc"), a("x:y")] {
        assert_eq!(Ident::from_topic_key(&id.topic_key()), Some(id.clone()));
        assert_eq!(ident_of_canonical(&id.canonical_key()), Some(id));
    }
}

#[test]
fn a_phone_pseudonym_is_its_own_fingerprint_and_other_values_are_hashed() {
    let hex = "00112233445566778899aabbccddeeff";
    let want = Fingerprint([0x3322_1100, 0x7766_5544, 0xbbaa_9988, 0xffee_ddcc]);
    assert_eq!(Fingerprint::of(&m(hex)), want);
    // The same digits as another kind, in upper case, or one digit short are hashed, so they
    // stay distinct identifiers.
    for other in [c(hex), a(hex), m(&hex.to_uppercase()), m(&hex[1..]), m(&format!("{hex}0")), m("0011223344556677889gaabbccddeeff")] {
        assert_ne!(Fingerprint::of(&other), want, "{other:?}");
        assert_eq!(
            lower_hex16(&other.value).is_some(),
            other.value.len() == 32 && other.value.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        );
    }
    // In the graph: a phone and an app install with the same text are two identifiers.
    let mut g = IdentityGraph::new();
    g.observe(&[m(hex)]);
    g.observe(&[a(hex)]);
    assert_eq!(g.customers(), 2);
}

fn arb_ident() -> impl Strategy<Value = Ident> {
    // Short values, phone pseudonyms (32 hex digits) and long values: the three forms in which
    // the graph stores a component's best identifier.
    (0u8..3, 0u8..12, 0u8..3).prop_map(|(k, v, form)| {
        let value = match form {
            0 => format!("{v}"),
            1 => format!("{:032x}", u128::from(v).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)),
            _ => format!("a-rather-long-identifier-value-{v}"),
        };
        match k {
            0 => c(&format!("C{value}")),
            1 => m(&value),
            _ => a(&format!("app{value}")),
        }
    })
}

fn arb_text() -> impl Strategy<Value = String> {
    prop_oneof!["[a-f0-9]{32}", "[a-fA-F0-9]{30,34}", ".{0,40}", "[\\x00-\\x7f]{20,24}",]
}

proptest! {
    #[test]
    fn any_order_and_a_rebuild_from_links_give_the_batch_canonical_keys(
        events in proptest::collection::vec(proptest::collection::vec(arb_ident(), 1..4), 1..40),
        seed in any::<u64>(),
    ) {
        let expected = batch_canonical(&events);
        // Streamed in a shuffled order.
        let mut order: Vec<usize> = (0..events.len()).collect();
        let mut s = seed;
        for i in (1..order.len()).rev() {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            order.swap(i, (s >> 33) as usize % (i + 1));
        }
        let mut g = IdentityGraph::new();
        let mut links = Vec::new();
        for &i in &order {
            links.extend(g.observe(&events[i]).links);
        }
        for (id, canonical) in &expected {
            prop_assert_eq!(&g.resolve(id), canonical);
        }
        // Another instance rebuilding from the identity topic (compacted: last value per key).
        let mut compacted: HashMap<String, String> = HashMap::new();
        for (k, v) in links {
            compacted.insert(k, v);
        }
        let mut rebuilt = IdentityGraph::new();
        for (k, v) in &compacted {
            rebuilt.apply_link(k, v);
        }
        for (id, canonical) in &expected {
            prop_assert_eq!(&rebuilt.resolve(id), canonical);
        }
    }
}

proptest! {
    #[test]
    fn the_compact_best_identifier_orders_and_spells_like_the_identifier(
        ka in 0u8..3, a_text in arb_text(), kb in 0u8..3, b_text in arb_text(),
    ) {
        let kind = |k: u8| [IdKind::Customer, IdKind::Msisdn, IdKind::App][usize::from(k)];
        let x = Ident { kind: kind(ka), value: a_text };
        let y = Ident { kind: kind(kb), value: b_text };
        let (bx, by) = (Best::new(&x), Best::new(&y));
        prop_assert_eq!(bx.canonical_key(), x.canonical_key());
        prop_assert_eq!(by.canonical_key(), y.canonical_key());
        prop_assert_eq!(bx.le(&by), x <= y);
        prop_assert_eq!(by.le(&bx), y <= x);
    }
}

fn event_with(customer: Option<&str>, msisdn: Option<&str>, app: Option<&str>) -> ChannelEvent {
    ChannelEvent {
        customer_id: customer.map(Into::into),
        msisdn: msisdn.map(Into::into),
        app_instance_id: app.map(Into::into),
        ..crate::test_event("e", 0, journey_schemas::Channel::App, "t")
    }
}

proptest! {
    /// The hot path's reused buffers give what fresh ones give, whatever the previous event
    /// left in them (more, fewer or other identifiers).
    #[test]
    fn reused_buffers_give_what_fresh_ones_give(
        events in proptest::collection::vec(
            (proptest::option::of("[a-c]{0,3}"), proptest::option::of("[0-9]{0,3}"), proptest::option::of("[x-z]{0,3}")),
            1..40,
        )
    ) {
        let p = crate::pii::Pseudonymizer::new(b"0123456789abcdef").unwrap();
        let mut cache = crate::pii::PseudonymCache::with_slots(p.clone(), 4);
        let (mut fresh, mut reused) = (IdentityGraph::new(), IdentityGraph::new());
        let (mut ids, mut obs) = (Vec::new(), Observation::default());
        for (c, m, a) in &events {
            let e = event_with(c.as_deref(), m.as_deref(), a.as_deref());
            let expected_ids = identifiers(&e, &p);
            identifiers_into(&e, &mut cache, &mut ids);
            prop_assert_eq!(&ids, &expected_ids);
            let expected = fresh.observe(&expected_ids);
            reused.observe_into(&ids, &mut obs);
            prop_assert_eq!(&obs, &expected);
        }
    }
}

proptest! {
    /// The shortcut is the definition: the topic key of the identifier the canonical key names.
    #[test]
    fn canonical_topic_key_is_that_of_the_named_identifier(kind in 0u8..4, value in "[a-z:0-9]{0,6}") {
        let canonical = match kind {
            0 => format!("m:{value}"),
            1 => format!("a:{value}"),
            2 => format!("c:{value}"),
            _ => value,
        };
        let want = ident_of_canonical(&canonical).map_or_else(|| canonical.clone(), |i| i.topic_key());
        prop_assert_eq!(canonical_topic_key(&canonical), want);
    }
}
