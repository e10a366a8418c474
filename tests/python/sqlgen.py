"""A deterministic data set for the SQL tests, and the answers computed from it in plain Python.

The generator writes what the pipeline would: events (some moved to another customer with a
higher version, some sent twice), sessions with channel transitions (some superseded by a
later version, some retracted, some written twice, versions arriving out of order), scenario
hits (same kinds of corrections, plus customer-level hits without a session) and churn rows
(some customers loaded twice). Everything is relative to a base day a few weeks back, so the
rows stay inside the events TTL, and every expectation is derived from the generated objects
with the semantics the SQL documents: the highest version wins, retracted rows are gone.
"""

from __future__ import annotations

import bisect
import datetime as dt
import random
import statistics
from collections import Counter, defaultdict
from dataclasses import dataclass, field, replace

MINUTE = 60_000
HOUR = 60 * MINUTE
DAY = 24 * HOUR
DAYS = 16

SELF_SERVICE = ["APP", "WEB", "IVR", "VOICE_BOT", "CHAT", "SMS", "EMAIL"]
ASSISTED = ["CONTACT_CENTRE", "RETAIL", "BACK_OFFICE"]
CHANNELS = SELF_SERVICE + ASSISTED
CHANNEL_WEIGHTS = [30, 18, 14, 6, 8, 3, 2, 12, 4, 3]
TOPICS = ["billing", "network", "roaming", "device", "contract"]
REGIONS = ["north", "south", "east", "west"]
RULES = {"app_to_call": "high", "repeat_call": "medium", "ivr_failure": "medium", "escalation": "low"}
REASONS = ["price", "network", "service", "moved"]


def fmt(ms: int) -> str:
    """DateTime64(3) text."""
    d = dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc)
    return d.strftime("%Y-%m-%d %H:%M:%S.") + f"{ms % 1000:03d}"


def fmt_s(ms: int) -> str:
    """DateTime text (whole seconds)."""
    return dt.datetime.fromtimestamp(ms // 1000, dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S")


def fmt_date(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms // 1000, dt.timezone.utc).strftime("%Y-%m-%d")


def minute(ms: int) -> int:
    return ms - ms % MINUTE


def hour(ms: int) -> int:
    return ms - ms % HOUR


def median(values) -> float:
    """What quantileExactInclusive(0.5) returns: the middle value, or the mean of the two."""
    return float(statistics.median(values))


def base_day() -> int:
    """Midnight UTC three weeks ago: the data's day 0."""
    today = dt.datetime.now(dt.timezone.utc).replace(hour=0, minute=0, second=0, microsecond=0)
    return int((today - dt.timedelta(days=21)).timestamp() * 1000)


@dataclass(frozen=True)
class Event:
    event_id: str
    t: int
    channel: str
    event_type: str
    customer: str
    topic: str
    outcome: str
    region: str
    version: int = 0

    def row(self) -> dict:
        return {
            "event_id": self.event_id, "event_time": fmt(self.t), "ingest_time": fmt(self.t + 250),
            "channel": self.channel, "event_type": self.event_type, "customer_id": self.customer,
            "crm_id": self.customer, "msisdn_hash": f"h{abs(hash_str(self.customer)):016x}",
            "app_instance_id": f"a-{self.customer}" if self.channel == "APP" else "",
            "topic": self.topic, "outcome": self.outcome, "line": "", "region": self.region,
            "agent_id": "agent-7" if self.channel in ASSISTED else "", "attrs": {"src": "sqlgen"},
            "version": self.version,
        }


@dataclass(frozen=True)
class Transition:
    from_channel: str
    to_channel: str
    t: int
    gap_ms: int


@dataclass(frozen=True)
class Session:
    session_id: str
    customer: str
    start: int
    end: int
    event_count: int
    channels: tuple
    path: str
    topics: tuple
    assisted: bool
    first_event_id: str
    last_event_id: str
    region: str
    transitions: tuple
    version: int
    retracted: bool = False

    def row(self) -> dict:
        return {
            "session_id": self.session_id, "customer_id": self.customer, "start_time": fmt(self.start),
            "end_time": fmt(self.end), "duration_ms": self.end - self.start, "event_count": self.event_count,
            "channels": list(self.channels), "path": self.path, "topics": list(self.topics),
            "assisted": self.assisted, "first_event_id": self.first_event_id, "last_event_id": self.last_event_id,
            "version": self.version, "retracted": self.retracted, "region": self.region,
            "tr_from": [x.from_channel for x in self.transitions], "tr_to": [x.to_channel for x in self.transitions],
            "tr_time": [fmt(x.t) for x in self.transitions], "tr_gap_ms": [x.gap_ms for x in self.transitions],
        }

    def retraction(self, version: int) -> "Session":
        """What the sessionizer emits to retract it: the record alone, no region or transitions."""
        return replace(self, version=version, retracted=True, region="", transitions=())


@dataclass(frozen=True)
class Hit:
    hit_id: str
    rule: str
    customer: str
    session_id: str
    t: int
    trigger_event_id: str
    matched: tuple
    path: str
    topic: str
    channel: str
    region: str
    version: int
    retracted: bool = False

    def row(self) -> dict:
        return {
            "hit_id": self.hit_id, "rule": self.rule, "rule_version": 1, "customer_id": self.customer,
            "session_id": self.session_id, "event_time": fmt(self.t), "trigger_event_id": self.trigger_event_id,
            "matched_event_ids": list(self.matched), "path": self.path, "topic": self.topic,
            "channel": self.channel, "region": self.region, "severity": RULES.get(self.rule, "low"),
            "version": self.version, "retracted": self.retracted,
        }

    @property
    def severity(self) -> str:
        return RULES.get(self.rule, "low")


@dataclass(frozen=True)
class Churn:
    customer: str
    day: int
    reason: str
    loaded_at: int

    def row(self) -> dict:
        return {"customer_id": self.customer, "churn_date": fmt_date(self.day), "reason": self.reason,
                "loaded_at": fmt_s(self.loaded_at)}


def hash_str(s: str) -> int:
    h = 0xCBF29CE484222325
    for b in s.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def build_session(session_id: str, customer: str, events: list[Event], version: int) -> Session:
    """The session record of sorted events, as the sessionizer builds it."""
    path, channels, topics, transitions = [], [], [], []
    for i, e in enumerate(events):
        if not path or path[-1] != e.channel:
            path.append(e.channel)
        if e.channel not in channels:
            channels.append(e.channel)
        if e.topic and e.topic not in topics:
            topics.append(e.topic)
        if i and events[i - 1].channel != e.channel:
            transitions.append(Transition(events[i - 1].channel, e.channel, e.t, e.t - events[i - 1].t))
    return Session(
        session_id=session_id, customer=customer, start=events[0].t, end=events[-1].t,
        event_count=len(events), channels=tuple(channels), path=">".join(path), topics=tuple(topics),
        assisted=any(e.event_type == "contact.start" for e in events),
        first_event_id=events[0].event_id, last_event_id=events[-1].event_id,
        region=next((e.region for e in events if e.region), ""), transitions=tuple(transitions), version=version,
    )


V = 1 << 20  # versions step like the pipeline's offset-based ones


@dataclass
class Dataset:
    base: int
    customers: list[str]
    events: list[Event] = field(default_factory=list)      # every inserted row
    sessions: list[Session] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    churn: list[Churn] = field(default_factory=list)
    batches: list[tuple[str, list]] = field(default_factory=list)  # (table, objects) in insert order
    # what the generator knows, for building corrections
    true_events: dict[str, list[Event]] = field(default_factory=dict)  # session_id -> its events
    latest_session: dict[str, Session] = field(default_factory=dict)
    latest_hit: dict[str, Hit] = field(default_factory=dict)
    latest_event: dict[str, Event] = field(default_factory=dict)

    def add(self, table: str, objs: list) -> None:
        """Records a batch (inserted later by `load`)."""
        self.batches.append((table, list(objs)))
        store = {"events": self.events, "sessions": self.sessions, "scenario_hits": self.hits, "churn": self.churn}[table]
        store.extend(objs)
        for o in objs:
            if table == "sessions" and o.version >= self.latest_session.get(o.session_id, o).version:
                self.latest_session[o.session_id] = o
            if table == "scenario_hits" and o.version >= self.latest_hit.get(o.hit_id, o).version:
                self.latest_hit[o.hit_id] = o
            if table == "events" and o.version >= self.latest_event.get(o.event_id, o).version:
                self.latest_event[o.event_id] = o

    def load(self, ch, start: int = 0) -> int:
        """Inserts the batches from index `start`; returns the index after the last one."""
        for table, objs in self.batches[start:]:
            ch.insert(table, [o.row() for o in objs])
        return len(self.batches)


def generate(seed: int = 7, customers: int = 120) -> Dataset:
    rng = random.Random(seed)
    base = base_day()
    ds = Dataset(base=base, customers=[f"C{i:05d}" for i in range(customers)])
    first_batch_events, first_batch_sessions, late_sessions, replays = [], [], [], []
    hits_v1, hits_v2 = [], []
    for ci, cid in enumerate(ds.customers):
        region = REGIONS[ci % len(REGIONS)] if ci % 9 else ""
        n_sessions = rng.randint(3, 12)
        # Session starts at least 4 hours apart: no session runs into the next.
        slots = sorted(rng.sample(range(0, DAYS * 6 - 1), n_sessions))
        for si, slot in enumerate(slots):
            t = base + slot * 4 * HOUR + rng.randint(0, 90 * MINUTE)
            topic = rng.choice(TOPICS)
            channel = rng.choices(CHANNELS, CHANNEL_WEIGHTS)[0]
            evs = []
            for j in range(rng.choices([1, 2, 3, 4, 5, 6], [2, 4, 4, 3, 2, 1])[0]):
                if j:
                    t += rng.randint(2_000, 25 * MINUTE)
                    if rng.random() < 0.65:
                        channel = rng.choice([c for c in CHANNELS if c != channel])
                evs.append(Event(
                    event_id=f"E{ci:05d}-{si:02d}-{j}", t=t, channel=channel,
                    event_type="contact.start" if channel in ASSISTED else f"{channel.lower()}.visit",
                    customer=cid, topic=topic if rng.random() < 0.8 else "",
                    outcome=rng.choice(["ok", "ok", "failed", ""]),
                    region=region if (j or rng.random() < 0.7) else "",
                ))
            sid = f"S{ci:05d}-{si:02d}"
            ds.true_events[sid] = evs
            first_batch_events.extend(evs)
            final = build_session(sid, cid, evs, 2 * V)
            kind = rng.random()
            if kind < 0.12 and len(evs) >= 2:  # grew: an earlier version without the last event
                late_sessions.append(build_session(sid, cid, evs[:-1], V))
                first_batch_sessions.append(final)
            elif kind < 0.22 and len(evs) >= 2:  # an earlier version saw another channel last
                other = rng.choice([c for c in CHANNELS if c != evs[-1].channel])
                wrong = evs[:-1] + [replace(evs[-1], channel=other)]
                first_batch_sessions.append(build_session(sid, cid, wrong, V))
                late_sessions.append(final)  # the newer version arrives after the older one
            elif kind < 0.27:  # retracted after it was emitted
                live = build_session(sid, cid, evs, V)
                first_batch_sessions.append(live)
                late_sessions.append(live.retraction(2 * V))
                final = None
            else:
                first_batch_sessions.append(final)
                if kind > 0.95:
                    replays.append(final)  # re-inserted after a crash
            # Scenario hits of this session.
            if rng.random() < 0.35:
                rule = rng.choice(list(RULES))
                trig = evs[0]
                done = evs[-1]
                s_region = next((e.region for e in evs if e.region), "")
                hit = Hit(
                    hit_id=f"H{sid}-{rule}", rule=rule, customer=cid, session_id=sid, t=done.t,
                    trigger_event_id=trig.event_id, matched=tuple(e.event_id for e in evs[1:]),
                    path=build_session(sid, cid, evs, 0).path, topic=topic, channel=trig.channel,
                    region=s_region, version=V,
                )
                k = rng.random()
                if k < 0.12:  # superseded: the first version had another trigger channel and topic
                    first = replace(hit, channel=rng.choice([c for c in CHANNELS if c != hit.channel]), topic="")
                    hits_v1.append(first)
                    hits_v2.append(replace(hit, version=2 * V))
                elif k < 0.2:  # retracted
                    hits_v1.append(hit)
                    hits_v2.append(replace(hit, version=2 * V, retracted=True))
                elif k < 0.23:  # retracted, then confirmed again
                    hits_v1.append(replace(hit, retracted=True))
                    hits_v2.append(replace(hit, version=2 * V))
                else:
                    hits_v1.append(hit)
                    if k > 0.95:
                        hits_v2.append(hit)  # the same row again (crash replay)
        # A customer-level hit without a session (absence rule: trigger + 2 hours).
        if ci % 11 == 3:
            trig = first_batch_events[-1]
            hits_v1.append(Hit(
                hit_id=f"H{cid}-no_callback", rule="no_callback", customer=cid, session_id="",
                t=trig.t + 2 * HOUR, trigger_event_id=trig.event_id, matched=(), path="", topic=trig.topic,
                channel=trig.channel, region=trig.region, version=V,
            ))
    # Events: some moved here from another customer key (the old row has a lower version),
    # some sent twice.
    moved_old, twice = [], []
    for e in first_batch_events:
        r = rng.random()
        if r < 0.04:
            other = ds.customers[(int(e.customer[1:]) + 1) % len(ds.customers)]
            moved_old.append(replace(e, customer=other, version=0))
        elif r > 0.97:
            twice.append(e)
    current_events = [replace(e, version=1) if any(m.event_id == e.event_id for m in moved_old) else e
                      for e in first_batch_events]
    ds.add("events", moved_old)
    ds.add("events", current_events)
    ds.add("events", twice)
    ds.add("sessions", first_batch_sessions)
    ds.add("sessions", late_sessions)
    ds.add("sessions", replays)
    ds.add("scenario_hits", hits_v2[: len(hits_v2) // 2])  # some newer versions arrive first
    ds.add("scenario_hits", hits_v1)
    ds.add("scenario_hits", hits_v2[len(hits_v2) // 2:])
    # Churn: a quarter of the customers, churn dates in the last week of the data; some loaded
    # twice (the later load wins), one customer never seen in events.
    rows, again = [], []
    loaded = base + DAYS * DAY
    for ci, cid in enumerate(ds.customers):
        if ci % 4 == 1:
            day = base + rng.randint(9, DAYS - 1) * DAY
            rows.append(Churn(cid, day, rng.choice(REASONS), loaded))
            if ci % 20 == 1:
                again.append(Churn(cid, day - 3 * DAY, "price", loaded - DAY))
    rows.append(Churn("C99999", base + 12 * DAY, "moved", loaded))
    ds.add("churn", again)
    ds.add("churn", rows)
    return ds


def corrections(ds: Dataset, seed: int = 11) -> int:
    """Adds a round of corrections (new session and hit versions, retractions, moved events, a
    replayed batch); returns the index of the first new batch."""
    rng = random.Random(seed)
    first = len(ds.batches)
    live = sorted(s for s, v in ds.latest_session.items() if not v.retracted and v.transitions)
    sessions = []
    for sid in rng.sample(live, 12):
        cur = ds.latest_session[sid]
        evs = ds.true_events[sid]
        other = rng.choice([c for c in CHANNELS if c != evs[-1].channel])
        changed = evs[:-1] + [replace(evs[-1], channel=other)]
        sessions.append(build_session(sid, cur.customer, changed, cur.version + V))
    for sid in rng.sample([s for s in live if s not in {x.session_id for x in sessions}], 6):
        cur = ds.latest_session[sid]
        sessions.append(cur.retraction(cur.version + V))
    revived = sorted(s for s, v in ds.latest_session.items() if v.retracted)[:3]
    for sid in revived:
        cur = ds.latest_session[sid]
        sessions.append(build_session(sid, cur.customer, ds.true_events[sid], cur.version + V))
    hits = []
    live_hits = sorted(h for h, v in ds.latest_hit.items() if not v.retracted)
    chosen = rng.sample(live_hits, 10)
    for hid in chosen[:5]:
        cur = ds.latest_hit[hid]
        hits.append(replace(cur, version=cur.version + V, channel=rng.choice([c for c in CHANNELS if c != cur.channel]),
                            region=rng.choice(REGIONS)))
    for hid in chosen[5:]:
        cur = ds.latest_hit[hid]
        hits.append(replace(cur, version=cur.version + V, retracted=True))
    events = []
    for eid in rng.sample(sorted(ds.latest_event), 6):
        cur = ds.latest_event[eid]
        other = ds.customers[(int(cur.customer[1:]) + 7) % len(ds.customers)]
        events.append(replace(cur, customer=other, version=cur.version + 1))
    extra_t = ds.base + 3 * DAY + 5 * HOUR
    events += [Event(f"X{i}", extra_t + i * 7_000, CHANNELS[i % len(CHANNELS)], "web.visit", ds.customers[i], "", "ok",
                     REGIONS[i % 4]) for i in range(5)]
    ds.add("sessions", sessions)
    ds.add("scenario_hits", hits)
    ds.add("events", events)
    # A crash replay of the first batches: identical rows again, nothing may change.
    for table, objs in ds.batches[:first][:4]:
        ds.add(table, objs)
    return first


# --- current rows -------------------------------------------------------------------------------


def current_events(ds: Dataset) -> list[Event]:
    best: dict[tuple, Event] = {}
    for e in ds.events:
        key = (e.t, e.event_id)
        if key not in best or e.version >= best[key].version:
            best[key] = e
    return list(best.values())


def current_sessions(ds: Dataset) -> list[Session]:
    best: dict[tuple, Session] = {}
    for s in ds.sessions:
        key = (s.customer, s.session_id)
        if key not in best or s.version >= best[key].version:
            best[key] = s
    return [s for s in best.values() if not s.retracted]


def current_hits(ds: Dataset) -> list[Hit]:
    best: dict[str, Hit] = {}
    for h in ds.hits:
        if h.hit_id not in best or h.version >= best[h.hit_id].version:
            best[h.hit_id] = h
    return [h for h in best.values() if not h.retracted]


def current_churn(ds: Dataset) -> dict[str, Churn]:
    best: dict[str, Churn] = {}
    for c in ds.churn:
        if c.customer not in best or c.loaded_at >= best[c.customer].loaded_at:
            best[c.customer] = c
    return best


# --- rollups ------------------------------------------------------------------------------------


def events_minute(ds: Dataset) -> dict[tuple, int]:
    return dict(Counter((fmt_s(minute(e.t)), e.channel, e.region) for e in current_events(ds)))


def scenario_minute(ds: Dataset) -> dict[tuple, int]:
    return dict(Counter((fmt_s(minute(h.t)), h.rule, h.channel, h.topic, h.region) for h in current_hits(ds)))


def flow_minute(ds: Dataset) -> dict[tuple, tuple[int, float]]:
    gaps = defaultdict(list)
    for s in current_sessions(ds):
        for tr in s.transitions:
            gaps[(fmt_s(minute(tr.t)), tr.from_channel, tr.to_channel)].append(tr.gap_ms)
    return {k: (len(v), median(v)) for k, v in gaps.items()}


# --- queries ------------------------------------------------------------------------------------


def q_events_per_channel_minute(ds: Dataset, frm: int, to: int, channel: str, region: str) -> list[dict]:
    out = Counter()
    for e in current_events(ds):
        m = minute(e.t)
        if frm <= m < to and channel in ("", e.channel) and region in ("", e.region):
            out[(fmt_s(m), e.channel)] += 1
    return [{"minute": m, "channel": c, "events": n} for (m, c), n in sorted(out.items())]


def q_channel_flow(ds: Dataset, frm: int, to: int, topic: str, region: str, scenario: str) -> list[dict]:
    with_rule = {h.session_id for h in current_hits(ds)
                 if h.rule == scenario and h.session_id and frm - 2 * DAY <= h.t < to + 2 * DAY}
    gaps, sessions = defaultdict(list), defaultdict(set)
    for s in current_sessions(ds):
        if region and s.region != region or topic and topic not in s.topics or scenario and s.session_id not in with_rule:
            continue
        for tr in s.transitions:
            if frm <= tr.t < to:
                gaps[(tr.from_channel, tr.to_channel)].append(tr.gap_ms)
                sessions[(tr.from_channel, tr.to_channel)].add(s.session_id)
    rows = [{"from_channel": f, "to_channel": t, "transitions": len(g), "sessions": len(sessions[(f, t)]),
             "median_gap_ms": median(g)} for (f, t), g in gaps.items()]
    return sorted(rows, key=lambda r: (-r["transitions"], r["from_channel"], r["to_channel"]))


def q_top_paths(ds: Dataset, frm: int, to: int, topic: str, region: str, limit: int) -> list[dict]:
    durations = defaultdict(list)
    for s in current_sessions(ds):
        if frm <= s.start < to and region in ("", s.region) and (not topic or topic in s.topics):
            durations[s.path].append(s.end - s.start)
    total = sum(len(v) for v in durations.values())
    rows = [{"path": p, "sessions": len(d), "share": len(d) / total, "median_duration_ms": median(d)}
            for p, d in durations.items()]
    return sorted(rows, key=lambda r: (-r["sessions"], r["path"]))[:limit]


def q_scenario_hit_rates(ds: Dataset, frm: int, to: int, rule: str, channel: str, topic: str, region: str) -> list[dict]:
    this, last = Counter(), Counter()
    lo = hour(frm)
    for h in current_hits(ds):
        if rule and h.rule != rule or channel and h.channel != channel or topic and h.topic != topic or region and h.region != region:
            continue
        m = minute(h.t)
        if lo <= m < to:
            this[(hour(m), h.rule)] += 1
        if lo - 7 * DAY <= m < to - 7 * DAY:
            last[(hour(m) + 7 * DAY, h.rule)] += 1
    rows = []
    for key in sorted(set(this) | set(last)):
        n, p = this.get(key, 0), last.get(key, 0)
        rows.append({"hour": fmt_s(key[0]), "rule": key[1], "hits": n, "hits_last_week": p,
                     "ratio": None if p == 0 else n / p})
    return rows


def q_customer_journey(ds: Dataset, customer: str, frm: int, to: int) -> list[dict]:
    sessions = sorted((s for s in current_sessions(ds) if s.customer == customer), key=lambda s: s.start)
    starts = [s.start for s in sessions]
    by_id = {s.session_id: s for s in sessions}
    hits = [h for h in current_hits(ds) if h.customer == customer and frm <= h.t < to]
    rules_by_event = defaultdict(set)
    for h in hits:
        for eid in (h.trigger_event_id, *h.matched):
            rules_by_event[eid].add(h.rule)
    rows = []
    for e in current_events(ds):
        if e.customer != customer or not frm <= e.t < to:
            continue
        i = bisect.bisect_right(starts, e.t) - 1
        s = sessions[i] if i >= 0 and e.t <= sessions[i].end else None
        rows.append({"kind": "event", "time": fmt(e.t), "id": e.event_id, "channel": e.channel, "what": e.event_type,
                     "topic": e.topic, "region": e.region, "detail": e.outcome,
                     "session_id": s.session_id if s else "", "path": s.path if s else "",
                     "hit_rules": sorted(rules_by_event.get(e.event_id, ())), "event_ids": []})
    for h in hits:
        s = by_id.get(h.session_id)
        rows.append({"kind": "scenario_hit", "time": fmt(h.t), "id": h.hit_id, "channel": h.channel, "what": h.rule,
                     "topic": h.topic, "region": h.region, "detail": h.severity, "session_id": h.session_id,
                     "path": s.path if s else "", "hit_rules": [], "event_ids": [h.trigger_event_id, *h.matched]})
    return sorted(rows, key=lambda r: (r["time"], r["kind"], r["id"]))


@dataclass(frozen=True)
class Member:
    cohort: str
    customer: str
    lo: int
    hi: int


def cohorts(ds: Dataset, frm_day: int, to_day: int, reference_day: int, lookback_days: int) -> list[Member]:
    """Churned customers (latest load, churn date in [frm_day, to_day]) and retained ones (a
    session in the lookback window before the reference day, never in churn)."""
    span = lookback_days * DAY
    out = [Member("churned", c.customer, c.day - span, c.day)
           for c in current_churn(ds).values() if frm_day <= c.day <= to_day]
    ever_churned = {c.customer for c in ds.churn}
    active = {s.customer for s in current_sessions(ds) if reference_day - span <= s.start < reference_day}
    out += [Member("retained", c, reference_day - span, reference_day) for c in sorted(active - ever_churned)]
    return out


def _sessions_in_windows(ds: Dataset, members: list[Member]):
    by_customer = defaultdict(list)
    for s in current_sessions(ds):
        by_customer[s.customer].append(s)
    for m in members:
        for s in by_customer.get(m.customer, ()):
            if m.lo <= s.start < m.hi:
                yield m, s


def q_churn_scenario_exposure(ds: Dataset, *args) -> list[dict]:
    members = cohorts(ds, *args)
    size = Counter(m.cohort for m in members)
    hits = defaultdict(list)
    for h in current_hits(ds):
        hits[h.customer].append(h)
    exposed = defaultdict(set)
    for m in members:
        for h in hits.get(m.customer, ()):
            if m.lo <= h.t < m.hi:
                exposed[(m.cohort, h.rule)].add(m.customer)
    rows = []
    for rule in sorted({r for _, r in exposed}):
        ce, re_ = len(exposed.get(("churned", rule), ())), len(exposed.get(("retained", rule), ()))
        cs, rs = ce / size["churned"], re_ / size["retained"]
        rows.append({"rule": rule, "churned_exposed": ce, "churned_customers": size["churned"], "churned_share": cs,
                     "retained_exposed": re_, "retained_customers": size["retained"], "retained_share": rs,
                     "lift": None if re_ == 0 else cs / rs})
    return rows


def q_churn_repeat_contact(ds: Dataset, frm_day, to_day, reference_day, lookback_days, repeat_days) -> list[dict]:
    members = cohorts(ds, frm_day, to_day, reference_day, lookback_days)
    size = Counter(m.cohort for m in members)
    starts = defaultdict(list)
    for m, s in _sessions_in_windows(ds, members):
        if s.assisted:
            starts[(m.cohort, m.customer)].append(s.start)
    rows = []
    for cohort in sorted(size):
        contacts = repeats = with_repeat = 0
        for (c, _), ts in starts.items():
            if c != cohort:
                continue
            ts = sorted(ts)
            r = sum(1 for a, b in zip(ts, ts[1:]) if b - a <= repeat_days * DAY)
            contacts += len(ts)
            repeats += r
            with_repeat += r > 0
        rows.append({"cohort": cohort, "customers": size[cohort], "assisted_contacts": contacts,
                     "repeat_contacts": repeats, "repeat_contact_rate": None if contacts == 0 else repeats / contacts,
                     "customers_with_repeat": with_repeat, "share_customers_with_repeat": with_repeat / size[cohort]})
    return rows


def q_churn_left_self_service(ds: Dataset, *args) -> list[dict]:
    members = cohorts(ds, *args)
    size = Counter(m.cohort for m in members)
    sessions, assisted, left = Counter(), Counter(), defaultdict(set)
    for m, s in _sessions_in_windows(ds, members):
        sessions[m.cohort] += 1
        if s.assisted:
            assisted[m.cohort] += 1
            left[m.cohort].add(m.customer)
    return [{"cohort": c, "customers": size[c], "sessions": sessions[c], "assisted_sessions": assisted[c],
             "share_left_self_service": None if sessions[c] == 0 else assisted[c] / sessions[c],
             "customers_who_left": len(left[c]), "share_customers_who_left": len(left[c]) / size[c]}
            for c in sorted(size)]


def q_churn_path_lift(ds: Dataset, frm_day, to_day, reference_day, lookback_days, min_support, limit) -> list[dict]:
    members = cohorts(ds, frm_day, to_day, reference_day, lookback_days)
    size = Counter(m.cohort for m in members)
    followed = defaultdict(set)
    for m, s in _sessions_in_windows(ds, members):
        followed[(m.cohort, s.path)].add(m.customer)
    rows = []
    for path in {p for _, p in followed}:
        cc, rc = len(followed.get(("churned", path), ())), len(followed.get(("retained", path), ()))
        if cc < min_support:
            continue
        cs, rs = cc / size["churned"], rc / size["retained"]
        rows.append({"path": path, "churned_customers": cc, "churned_share": cs, "retained_customers": rc,
                     "retained_share": rs, "lift": None if rc == 0 else cs / rs})
    rows.sort(key=lambda r: (r["lift"] is not None, -(r["lift"] or 0.0), -r["churned_customers"], r["path"]))
    return rows[:limit]
