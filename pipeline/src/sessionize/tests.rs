use super::*;
use proptest::prelude::*;
use std::collections::BTreeMap;

const P: SessionParams = SessionParams { gap_ms: 30 * 60_000, max_duration_ms: 4 * 3_600_000, horizon_ms: 24 * 3_600_000 };

fn ev(time: i64, id: &str, channel: Channel) -> SessionEvent {
    SessionEvent { time, id: id.into(), channel, topic: None, region: None, assisted: false, id_tag: 0, offset: 0, payload: None, moves: 0 }
}

/// Latest version of every session id, non-retracted, version cleared: the "final state".
fn final_state(out: &[Emitted]) -> BTreeMap<String, Emitted> {
    let mut latest: BTreeMap<String, Emitted> = BTreeMap::new();
    for s in out {
        match latest.get(&s.session_id) {
            Some(prev) if prev.version > s.version => {}
            _ => {
                latest.insert(s.session_id.clone(), s.clone());
            }
        }
    }
    latest
        .into_iter()
        .filter(|(_, s)| !s.retracted)
        .map(|(k, mut s)| {
            Arc::make_mut(&mut s.session).version = 0;
            (k, s)
        })
        .collect()
}

#[test]
fn gap_boundary_is_exclusive() {
    let evs = vec![ev(0, "a", Channel::App), ev(P.gap_ms - 1, "b", Channel::Ivr), ev(2 * P.gap_ms - 1, "c", Channel::Chat)];
    let s = batch_sessions("c:1", &evs, &P);
    assert_eq!(s.len(), 2, "exactly gap apart starts a new session");
    assert_eq!(s[0].event_count, 2);
    assert_eq!(s[0].path, "APP>IVR");
    assert_eq!(s[1].path, "CHAT");
}

#[test]
fn transitions_follow_the_path_with_the_time_since_the_previous_event() {
    let mut evs = vec![
        ev(0, "a", Channel::App),
        ev(60_000, "b", Channel::App),
        ev(180_000, "c", Channel::Ivr),
        ev(200_000, "d", Channel::ContactCentre),
        ev(260_000, "e", Channel::App),
    ];
    evs[2].region = Some("north".into());
    let s = batch_sessions("c:1", &evs, &P);
    assert_eq!(s.len(), 1);
    assert_eq!(s[0].path, "APP>IVR>CONTACT_CENTRE>APP");
    let t: Vec<_> = s[0].transitions.iter().map(|t| (t.from, t.to, t.time, t.gap_ms)).collect();
    assert_eq!(
        t,
        [
            (Channel::App, Channel::Ivr, 180_000, 120_000),
            (Channel::Ivr, Channel::ContactCentre, 200_000, 20_000),
            (Channel::ContactCentre, Channel::App, 260_000, 60_000),
        ]
    );
    assert_eq!(s[0].region.as_deref(), Some("north"), "the first region seen in the session");
    assert_eq!(s[0].transitions.len() + 1, s[0].path.split('>').count());
}

#[test]
fn long_sessions_split_at_max_duration() {
    // An event every 20 minutes for 10 hours: one run, split every 4 hours of duration.
    let evs: Vec<_> = (0..31).map(|i| ev(i * 20 * 60_000, &format!("e{i:02}"), Channel::App)).collect();
    let s = batch_sessions("c:1", &evs, &P);
    assert_eq!(s.len(), 3);
    assert!(s.iter().all(|x| x.duration_ms <= P.max_duration_ms));
    assert_eq!(s.iter().map(|x| x.event_count).sum::<i64>(), 31);
}

#[test]
fn ties_in_time_order_by_event_id() {
    let evs = vec![ev(5, "b", Channel::Ivr), ev(5, "a", Channel::App)];
    let s = batch_sessions("c:1", &evs, &P);
    assert_eq!(s[0].first_event_id, "a");
    assert_eq!(s[0].path, "APP>IVR");
}

#[test]
fn duplicates_and_too_late_events_are_reported() {
    let mut z = Sessionizer::new(P);
    let mut out = Vec::new();
    assert_eq!(z.admit("c:1", ev(1_000_000_000, "a", Channel::App), &mut out), Admission::Accepted);
    assert_eq!(z.admit("c:1", ev(1_000_000_000, "a", Channel::App), &mut out), Admission::Duplicate);
    z.advance(1_000_000_000 + P.horizon_ms + 10, &mut out);
    assert_eq!(z.admit("c:2", ev(1_000_000_000 - 1, "old", Channel::App), &mut out), Admission::TooLate);
}

#[test]
fn a_session_closes_only_when_the_watermark_passes_end_plus_gap() {
    let mut z = Sessionizer::new(P);
    let mut out = Vec::new();
    z.admit("c:1", ev(0, "a", Channel::App), &mut out);
    z.advance(P.gap_ms, &mut out);
    assert!(out.is_empty(), "end + gap == watermark is still open");
    z.advance(P.gap_ms + 1, &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].event_count, 1);
}

#[test]
fn a_late_event_merging_two_sessions_retracts_the_absorbed_one() {
    let mut z = Sessionizer::new(P);
    let mut out = Vec::new();
    z.admit("c:1", ev(0, "a", Channel::App), &mut out);
    z.admit("c:1", ev(50 * 60_000, "c", Channel::ContactCentre), &mut out);
    z.advance(3 * 3_600_000, &mut out);
    assert_eq!(out.len(), 2);
    // "b" at 25 min bridges both (25 < 30 and 25 < 30).
    z.admit("c:1", ev(25 * 60_000, "b", Channel::Ivr), &mut out);
    let fin = final_state(&out);
    assert_eq!(fin.len(), 1);
    let s = fin.values().next().unwrap();
    assert_eq!(s.path, "APP>IVR>CONTACT_CENTRE");
    assert_eq!(s.event_count, 3);
    assert!(out.iter().any(|s| s.retracted && s.first_event_id == "c"));
}

#[test]
fn state_is_pruned_past_the_horizon() {
    let mut z = Sessionizer::new(P);
    let mut out = Vec::new();
    for i in 0..100 {
        z.admit(&format!("c:{i}"), ev(i, &format!("e{i}"), Channel::App), &mut out);
    }
    z.advance(P.horizon_ms + P.gap_ms + 1000, &mut out);
    assert_eq!(out.len(), 100);
    assert_eq!(z.customers(), 0);
    assert_eq!(z.retained_events(), 0);
}

fn arb_events() -> impl Strategy<Value = Vec<(u8, i64, u16, u8)>> {
    // (customer, minute offset, id, channel)
    proptest::collection::vec((0u8..4, 0i64..(12 * 60), any::<u16>(), 0u8..12), 1..120)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn any_arrival_order_within_the_horizon_gives_the_batch_result(
        raw in arb_events(), delays in proptest::collection::vec(0i64..(20 * 60), 120), lateness_min in 0i64..60
    ) {
        let params = SessionParams { gap_ms: 30 * 60_000, max_duration_ms: 3 * 3_600_000, horizon_ms: 24 * 3_600_000 };
        let base = 1_700_000_000_000i64;
        // Event ids are unique (a random prefix shuffles the order of ties in time).
        let events: Vec<(String, SessionEvent)> = raw.iter().enumerate().map(|(i, &(c, m, id, ch))| {
            (format!("c:{c}"), SessionEvent { time: base + m * 60_000, id: format!("{id:05}-{i:03}").into(), channel: Channel::ALL[ch as usize], topic: None, region: (ch % 3 == 1).then(|| Arc::from(format!("r{}", id % 3))), assisted: ch == 5, id_tag: 0, offset: 0, payload: None, moves: 0 })
        }).collect();
        // Arrival order: event time plus a random delay of up to 20 hours (within the 24 h horizon).
        let mut arrival: Vec<usize> = (0..events.len()).collect();
        arrival.sort_by_key(|&i| (events[i].1.time + delays[i % delays.len()] * 60_000, i));
        let mut z = Sessionizer::new(params);
        let mut out = Vec::new();
        let mut max_seen = i64::MIN;
        for i in arrival {
            let (c, e) = events[i].clone();
            max_seen = max_seen.max(e.time);
            let adm = z.admit(&c, e, &mut out);
            prop_assert_ne!(adm, Admission::TooLate);
            z.advance(max_seen - lateness_min * 60_000, &mut out);
        }
        z.flush_all(&mut out);
        prop_assert_eq!(z.customers(), 0, "all state is pruned once event time has passed the horizon");
        let mut expected = BTreeMap::new();
        for c in 0u8..4 {
            let key = format!("c:{c}");
            let mine: Vec<SessionEvent> = events.iter().filter(|(k, _)| *k == key).map(|(_, e)| e.clone()).collect();
            for s in batch_sessions(&key, &mine, &params) {
                expected.insert(s.session_id.clone(), s);
            }
        }
        let got = final_state(&out);
        let missing: Vec<_> = expected.iter().filter(|(k, v)| got.get(*k) != Some(v)).map(|(_, v)| v).collect();
        let extra: Vec<_> = got.iter().filter(|(k, v)| expected.get(*k) != Some(v)).map(|(_, v)| v).collect();
        prop_assert!(missing.is_empty() && extra.is_empty(), "missing or different: {:#?}\nunexpected: {:#?}", missing, extra);
    }
}

#[test]
fn taking_a_customer_retracts_its_sessions_and_returns_its_events() {
    let mut z = Sessionizer::new(P);
    let mut out = Vec::new();
    z.admit("a:app", ev(0, "a", Channel::App), &mut out);
    z.admit("a:app", ev(60_000, "b", Channel::App), &mut out);
    z.advance(3_600_000, &mut out);
    assert_eq!(out.len(), 1);
    z.admit("a:app", ev(3_700_000, "c", Channel::App), &mut out);
    let events = z.take_customer("a:app", &mut out);
    assert_eq!(events.iter().map(|e| &*e.id).collect::<Vec<_>>(), ["a", "b", "c"]);
    assert!(out[1].retracted && out[1].session_id == out[0].session_id && out[1].version > out[0].version);
    assert_eq!(out.len(), 2, "the open session was never emitted, so nothing to retract");
    assert_eq!(z.customers(), 0);
    assert!(z.take_customer("a:app", &mut out).is_empty());
}

impl Sessionizer {
    /// Timer arming of the first version, kept to check the current one against: the earliest
    /// close of every retained session, closed ones included (so a customer with a closed
    /// session was reconciled again after each in-order event), never later than the timer.
    pub(super) fn reference_schedule(&mut self, idx: usize) {
        let p = self.params;
        let c = &mut self.customers[idx];
        let ranges = cut_sessions(&c.events, &p);
        let deadline = ranges
            .iter()
            .map(|r| {
                let s = &c.events[r.start];
                let e = &c.events[r.end - 1];
                e.time.saturating_add(p.gap_ms).min(s.time.saturating_add(p.max_duration_ms))
            })
            .min()
            .unwrap_or(i64::MAX);
        let deadline = match c.timer {
            Some(t) => t.min(deadline),
            None => deadline,
        };
        self.set_timer(idx, Some(deadline));
    }
}

/// Outputs grouped by customer, in emission order within each customer.
fn by_customer(out: &[Emitted]) -> BTreeMap<String, Vec<Emitted>> {
    let mut m: BTreeMap<String, Vec<Emitted>> = BTreeMap::new();
    for e in out {
        m.entry(e.customer_id.clone()).or_default().push(e.clone());
    }
    m
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    /// The sessionizer arms timers only for what can happen next; the first version also woke
    /// up for sessions already closed. Both must emit the same records at the same calls (the
    /// interleaving of different customers within one call aside), keep the same state, and
    /// report every customer whose state changed as dirty. Delays reach past the horizon, so
    /// late and too-late events are covered; some customers are taken (re-attribution).
    #[test]
    fn timers_for_open_sessions_only_emit_what_the_first_version_emitted(
        // Two days of event time, so sessions are also pruned while others are open.
        raw in proptest::collection::vec((0u8..4, 0i64..(48 * 60), any::<u16>(), 0u8..12), 1..160),
        delays in proptest::collection::vec(0i64..(30 * 60), 120),
        lateness_min in 0i64..90,
        checkpoints in proptest::collection::vec(0u8..4, 120),
        takes in proptest::collection::vec(0u8..60, 120),
    ) {
        let params = SessionParams { gap_ms: 30 * 60_000, max_duration_ms: 3 * 3_600_000, horizon_ms: 24 * 3_600_000 };
        let base = 1_700_000_000_000i64;
        let events: Vec<(String, SessionEvent)> = raw.iter().enumerate().map(|(i, &(c, m, id, ch))| {
            (format!("c:{c}"), SessionEvent { time: base + m * 60_000, id: format!("{id:05}-{i:03}").into(), channel: Channel::ALL[ch as usize], topic: (ch % 4 == 0).then(|| Arc::from("t")), region: None, assisted: ch == 5, id_tag: 0, offset: i as i64, payload: None, moves: 0 })
        }).collect();
        let mut arrival: Vec<usize> = (0..events.len()).collect();
        arrival.sort_by_key(|&i| (events[i].1.time + delays[i % delays.len()] * 60_000, i));
        let mut fast = Sessionizer::new(params);
        let mut reference = Sessionizer::new(params);
        reference.reference_timers = true;
        let keys: Vec<String> = (0u8..4).map(|c| format!("c:{c}")).collect();
        let mut last_snaps: Vec<Option<CustomerSnapshot>> = vec![None; keys.len()];
        let mut max_seen = i64::MIN;
        for (step, i) in arrival.into_iter().enumerate() {
            let (c, e) = events[i].clone();
            max_seen = max_seen.max(e.time);
            fast.set_version_floor(step as i64);
            reference.set_version_floor(step as i64);
            let (mut out_f, mut out_r) = (Vec::new(), Vec::new());
            prop_assert_eq!(fast.admit(&c, e.clone(), &mut out_f), reference.admit(&c, e, &mut out_r));
            prop_assert_eq!(by_customer(&out_f), by_customer(&out_r), "admit at step {}", step);
            fast.advance(max_seen - lateness_min * 60_000, &mut out_f);
            reference.advance(max_seen - lateness_min * 60_000, &mut out_r);
            prop_assert_eq!(by_customer(&out_f), by_customer(&out_r), "advance at step {}", step);
            if let Some(k) = keys.get(usize::from(takes[step % takes.len()])) {
                let (mut out_f, mut out_r) = (Vec::new(), Vec::new());
                prop_assert_eq!(fast.take_customer(k, &mut out_f), reference.take_customer(k, &mut out_r));
                prop_assert_eq!(out_f, out_r);
            }
            if checkpoints[step % checkpoints.len()] == 0 {
                let listed = fast.take_dirty();
                let dirty: HashSet<String> = listed.iter().cloned().collect();
                prop_assert_eq!(dirty.len(), listed.len(), "a key listed twice: {:?}", listed);
                reference.take_dirty();
                for (k, last) in keys.iter().zip(last_snaps.iter_mut()) {
                    let snap = fast.snapshot(k);
                    prop_assert_eq!(&snap, &reference.snapshot(k), "state of {} at step {}", k, step);
                    prop_assert!(snap == *last || dirty.contains(k), "{} changed but is not dirty", k);
                    *last = snap;
                }
            }
        }
        let (mut out_f, mut out_r) = (Vec::new(), Vec::new());
        fast.flush_all(&mut out_f);
        reference.flush_all(&mut out_r);
        prop_assert_eq!(by_customer(&out_f), by_customer(&out_r));
        prop_assert_eq!(fast.customers(), 0);
    }
}

proptest! {
    #[test]
    fn session_ids_are_the_two_salted_fnv_hashes_in_hex(customer in ".{0,30}", first in ".{0,30}") {
        let expected = format!(
            "{:016x}{:016x}",
            fnv1a(customer.as_bytes(), first.as_bytes(), 0),
            fnv1a(customer.as_bytes(), first.as_bytes(), 1)
        );
        prop_assert_eq!(session_id(&customer, &first), expected);
    }
}

#[test]
fn session_ids_do_not_change() {
    // Ids are stored in ClickHouse and in the changelog: the function must stay as it is.
    assert_eq!(session_id("C1", "e1"), "80ecf63362a8102ca5a4c691ffb3bdf3");
}

#[test]
fn interned_strings_are_shared_up_to_the_bound_and_equal_beyond_it() {
    let a = intern("billing");
    let b = intern("billing");
    assert!(Arc::ptr_eq(&a, &b), "a known string is shared, not allocated again");
    // Fill the table past its bound (on a thread of its own, so other tests' strings do not
    // count): later strings are still right, only no longer shared.
    std::thread::spawn(|| {
        for i in 0..INTERN_MAX {
            intern(&format!("t{i}"));
        }
        let late = intern("one-too-many");
        assert_eq!(&*late, "one-too-many");
        assert!(!Arc::ptr_eq(&late, &intern("one-too-many")), "beyond the bound nothing is kept");
        assert!(Arc::ptr_eq(&intern("t0"), &intern("t0")));
    })
    .join()
    .unwrap();
}

#[test]
fn duplicates_are_recognised_whatever_id_tag_the_caller_gave() {
    let tagged = |time, id, tag| SessionEvent { id_tag: tag, ..ev(time, id, Channel::App) };
    let mut out = Vec::new();
    let mut z = Sessionizer::new(P);
    assert_eq!(z.admit("k", tagged(0, "a", 7), &mut out), Admission::Accepted);
    assert_eq!(z.admit("k", tagged(0, "a", 9), &mut out), Admission::Duplicate);
    assert_eq!(z.admit("k", tagged(1, "b", 7), &mut out), Admission::Accepted, "another id with the same given tag");
    // Restored events are tagged again, whatever their snapshot says.
    let mut snap = z.snapshot("k").expect("state");
    for (e, tag) in snap.events.iter_mut().zip([3, 4]) {
        e.id_tag = tag;
    }
    let mut y = Sessionizer::new(P);
    y.restore(snap, &mut out);
    assert_eq!(y.admit("k", ev(0, "a", Channel::App), &mut out), Admission::Duplicate);
    assert_eq!(y.admit("k", ev(1, "b", Channel::App), &mut out), Admission::Duplicate);
    assert_eq!(y.admit("k", ev(2, "c", Channel::App), &mut out), Admission::Accepted);
}
