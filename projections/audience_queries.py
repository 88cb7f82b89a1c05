"""Read-side queries on the audience read model: segments, membership history, why,
preview, engagement and list statistics, and the consent ledger (plain SQL, both backends).
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from projections.audience import load_json
from projections.db import ViewDatabase, any_of
from projections.segment_sql import prefilter
from services.domain.audience import TenantRules, evaluate
from services.domain.engagement import STATUSES, engagement_at
from services.domain.facts import ContactFacts, days_before
from services.domain.identity import normalise_email
from services.domain.rfm import GROUPS as RFM_GROUPS
from services.domain.rfm import RfmCuts
from services.domain.rules import Context, Leaf, Node
from services.domain.segments import SegmentDefinition
from services.domain.stamps import utc_iso

FACT_COLUMNS = "f.contact_id, f.tenant, f.email, f.doc, s.members, f.engagement, f.rfm"
# A contact's facts with its segment state (``projections.audience``).
FACTS_FROM = "audience_facts f LEFT JOIN audience_segments s ON s.contact_id = f.contact_id"


class NotFound(LookupError):
    """A tenant, segment or contact that the read model does not know."""


def projection_now(db: ViewDatabase) -> str | None:
    with db.reading() as cur:
        cur.execute("SELECT value FROM audience_state WHERE name = 'now'")
        row = cur.fetchone()
    return str(row["value"]) if row and row["value"] else None


# ------------------------------------------------------------------------------ segments


def tenant_rules(db: ViewDatabase, tenant: str,
                 definitions: list[SegmentDefinition]) -> TenantRules:
    """The tenant's rules as the projection holds them: its settings and RFM cuts."""
    with db.reading() as cur:
        cur.execute("SELECT name, value FROM audience_state WHERE name IN (?, ?)",
                    (f"settings:{tenant}", f"rfm_cuts:{tenant}"))
        state = {r["name"].split(":", 1)[0]: load_json(r["value"]) for r in cur.fetchall()}
    cuts = RfmCuts.from_json(state["rfm_cuts"]) if "rfm_cuts" in state else None
    return TenantRules.compile(definitions, cuts=cuts, settings=state.get("settings"))


def list_segments(db: ViewDatabase, tenant: str, include_deleted: bool = False
                  ) -> list[dict[str, Any]]:
    with db.reading() as cur:
        cur.execute(
            "SELECT d.segment_id, d.name, d.version, d.deleted, d.created_at, d.changed_at, "
            "d.rule, (SELECT COUNT(*) FROM segment_history h WHERE h.tenant = d.tenant "
            "AND h.segment_id = d.segment_id AND h.exited_at IS NULL) AS members "
            "FROM segment_definitions d WHERE d.tenant = ? "
            + ("" if include_deleted else "AND d.deleted = 0 ")
            + "ORDER BY d.segment_id",
            (tenant,),
        )
        rows = cur.fetchall()
    for row in rows:
        row["rule"] = load_json(row["rule"])
        row["deleted"] = bool(row["deleted"])
        row["members"] = int(row["members"])
    return rows


def get_segment(db: ViewDatabase, tenant: str, segment_id: str) -> dict[str, Any]:
    for row in list_segments(db, tenant, include_deleted=True):
        if row["segment_id"] == segment_id:
            return row
    raise NotFound(f"segment {segment_id!r} does not exist in tenant {tenant}")


# A segment's memberships with each member's email: what the member list and the
# segment export read (``h`` the intervals, ``f`` the contact's facts).
MEMBERS_FROM = "segment_history h JOIN audience_facts f ON f.contact_id = h.contact_id"


def membership_where(tenant: str, segment_id: str, as_of: datetime | None = None
                     ) -> tuple[str, list[Any]]:
    """The memberships of a segment now, or at ``as_of`` (the intervals [entered_at,
    exited_at) containing it), as a condition on ``segment_history h`` and its parameters."""
    params: list[Any] = [tenant, segment_id]
    if as_of is None:
        when = "h.exited_at IS NULL"
    else:
        moment = utc_iso(as_of)
        when = "h.entered_at <= ? AND (h.exited_at IS NULL OR h.exited_at > ?)"
        params += [moment, moment]
    return f"h.tenant = ? AND h.segment_id = ? AND {when}", params


def segment_members(
    db: ViewDatabase, tenant: str, segment_id: str, *, as_of: datetime | None = None,
    limit: int = 100, after: str = "",
) -> list[dict[str, Any]]:
    """Members now, or at ``as_of``, in contact id order, ``limit`` after ``after``."""
    get_segment(db, tenant, segment_id)
    where, params = membership_where(tenant, segment_id, as_of)
    with db.reading() as cur:
        cur.execute(
            "SELECT h.contact_id, f.email, h.entered_at, h.exited_at, h.enter_cause, "
            f"h.enter_ref FROM {MEMBERS_FROM} WHERE {where} AND h.contact_id > ? "
            "ORDER BY h.contact_id LIMIT ?",
            [*params, after, limit],
        )
        return cur.fetchall()


def count_members(db: ViewDatabase, tenant: str, segment_id: str,
                  as_of: datetime | None = None) -> int:
    where, params = membership_where(tenant, segment_id, as_of)
    with db.reading() as cur:
        cur.execute(f"SELECT COUNT(*) AS n FROM segment_history h WHERE {where}", params)
        row = cur.fetchone()
    return int(row["n"]) if row else 0


def _facts_row(db: ViewDatabase, tenant: str, email: str) -> dict[str, Any]:
    with db.reading() as cur:
        cur.execute(
            f"SELECT {FACT_COLUMNS}, f.engagement_since FROM {FACTS_FROM} "
            "WHERE f.tenant = ? AND f.email = ?",
            (tenant, normalise_email(email)),
        )
        row = cur.fetchone()
    if row is None:
        raise NotFound(f"no contact {normalise_email(email)} in tenant {tenant}")
    return row


def _facts(row: dict[str, Any]) -> ContactFacts:
    return ContactFacts.from_json(row["doc"])


def explain(db: ViewDatabase, tenant: str, email: str, segment_id: str | None = None
            ) -> dict[str, Any]:
    """Why a contact is (or is not, or was) in each segment.

    For each segment: the membership history with causes and flipped clauses, and every
    clause of the current rule with its value for this contact now.
    """
    row = _facts_row(db, tenant, email)
    facts = _facts(row)
    now = projection_now(db) or utc_iso(datetime.now().astimezone())
    definitions = [
        SegmentDefinition(s["segment_id"], s["name"], s["version"], s["rule"])
        for s in list_segments(db, tenant)
    ]
    rules = tenant_rules(db, tenant, definitions)
    evaluation = evaluate(facts, rules, now)
    with db.reading() as cur:
        cur.execute(
            "SELECT segment_id, entry_no, entered_at, entered_version, enter_cause, enter_ref, "
            "enter_clauses, exited_at, exited_version, exit_cause, exit_ref, exit_clauses "
            "FROM segment_history WHERE tenant = ? AND contact_id = ? "
            "ORDER BY segment_id, entry_no",
            (tenant, row["contact_id"]),
        )
        history = cur.fetchall()
    out = []
    for segment in rules.segments:
        sid = segment.segment_id
        if segment_id is not None and sid != segment_id:
            continue
        descriptions = {n.path: n.describe() for n in segment.rule.walk() if isinstance(n, Leaf)}
        trace = evaluation.traces[sid]
        intervals = []
        for h in history:
            if h["segment_id"] != sid:
                continue
            h["enter_clauses"] = [
                {"path": p, "clause": descriptions.get(p, "(an earlier version's clause)")}
                for p in load_json(h["enter_clauses"])
            ]
            if h["exit_clauses"] is not None:
                h["exit_clauses"] = [
                    {"path": p, "clause": descriptions.get(p, "(an earlier version's clause)")}
                    for p in load_json(h["exit_clauses"])
                ]
            intervals.append(h)
        out.append({
            "segment_id": sid,
            "name": segment.definition.name,
            "version": segment.definition.version,
            "member": sid in set(load_json(row["members"] or "{}")),
            "matches_now": sid in evaluation.members,
            "rule": segment.rule.describe(),
            "clauses": [{"path": p, "clause": descriptions[p], "holds": v}
                        for p, v in trace.items()],
            "history": intervals,
        })
    if segment_id is not None and not out:
        raise NotFound(f"segment {segment_id!r} does not exist in tenant {tenant}")
    return {"tenant": tenant, "contact_id": row["contact_id"], "email": row["email"],
            "as_of": now, "engagement": row["engagement"], "segments": out}


# ------------------------------------------------------------------------------- preview


@dataclass
class Preview:
    entering: int = 0
    leaving: int = 0
    staying: int = 0
    samples: dict[str, list[str]] = field(
        default_factory=lambda: {"entering": [], "leaving": [], "staying": []}
    )

    def to_dict(self) -> dict[str, Any]:
        return {"would_enter": self.entering, "would_leave": self.leaving,
                "would_stay": self.staying, "total_after": self.entering + self.staying,
                "samples": self.samples}


def preview(db: ViewDatabase, tenant: str, segment_id: str, node: Node, now: datetime,
            sample: int = 5) -> Preview:
    """What applying the rule ``node`` (parsed: ``parse_rule``, or checked as a definition
    would be: ``SegmentCatalog.check``) to ``segment_id`` would change, without changing
    anything.

    Only the contacts the rule's SQL prefilter lets through, and the current members, are
    evaluated (see ``segment_sql``), streamed from one snapshot so that memory stays flat;
    the samples are the first contacts of each kind in contact id order.
    """
    moment = utc_iso(now)
    rules = tenant_rules(db, tenant, [])
    where, params = prefilter(node, tenant, moment, rules.windows) or ("1 = 1", [])
    counts = {"entering": 0, "leaving": 0, "staying": 0}
    firsts: dict[str, list[str]] = {key: [] for key in counts}  # contact ids, in order
    # What the rule reads decides what each contact costs to load.
    nodes = list(node.walk())
    wants_segments = bool(node.references())
    wants_engagement = any(getattr(n, "field_name", "") == "engagement" for n in nodes)
    wants_rfm = any(getattr(n, "field_name", "").startswith("rfm.") for n in nodes)
    statement = (
        "SELECT f.contact_id, f.doc, f.contact_id IN (SELECT contact_id FROM segment_history "
        "WHERE tenant = ? AND segment_id = ? AND exited_at IS NULL) AS was"
        + (", s.members" if wants_segments else ", NULL") + (", f.rfm" if wants_rfm else ", NULL")
        + f" FROM {FACTS_FROM if wants_segments else 'audience_facts f'} "
        f"WHERE f.tenant = ? AND (({where}) OR f.contact_id IN ("
        "SELECT contact_id FROM segment_history WHERE tenant = ? AND segment_id = ? "
        "AND exited_at IS NULL))"
    )
    params = [tenant, segment_id, tenant, *params, tenant, segment_id]
    ctx = Context(now=moment, soft_bounce_limit=rules.soft_bounce_limit)  # reset per row
    for batch in db.stream_text(statement, params):
        for contact_id, doc, was_member, members_json, rfm_json in batch:
            was = was_member in (True, 1, "t")
            facts = ContactFacts.from_json(doc)
            if wants_segments:
                ctx.segments = set(load_json(members_json or "{}")) - {segment_id}
            if wants_engagement:
                ctx.engagement = engagement_at(facts, moment, rules.windows)
            if wants_rfm:
                rfm = load_json(rfm_json) if rfm_json else {}
                ctx.rfm_group = rfm.get("group")
                ctx.rfm_scores = ({"rfm.recency": rfm["r"], "rfm.frequency": rfm["f"],
                                   "rfm.monetary": rfm["m"]} if rfm.get("r") is not None
                                  else {})
            matches = node.answer(facts, ctx)
            key = ("staying" if was else "entering") if matches else ("leaving" if was else "")
            if key:
                counts[key] += 1
                _keep_first(firsts[key], contact_id, sample)
    emails = _emails(db, [cid for kept in firsts.values() for cid in kept])
    return Preview(counts["entering"], counts["leaving"], counts["staying"],
                   {key: [emails[cid] for cid in kept] for key, kept in firsts.items()})


def _emails(db: ViewDatabase, contact_ids: list[str]) -> dict[str, str]:
    found: dict[str, str] = {}
    with db.reading() as cur:
        for condition, params in any_of("contact_id", contact_ids, db.is_postgres):
            cur.execute(f"SELECT contact_id, email FROM audience_facts WHERE {condition}",
                        params)
            found.update((r["contact_id"], r["email"]) for r in cur.fetchall())
    return found


def _keep_first(kept: list[str], item: str, size: int) -> None:
    """Keep the ``size`` smallest items seen, in order."""
    if size <= 0:
        return
    if len(kept) < size:
        bisect.insort(kept, item)
    elif item < kept[-1]:
        bisect.insort(kept, item)
        kept.pop()


# ---------------------------------------------------------------------------- tallies


def _tallies(db: ViewDatabase, tenant: str, metric: str, days: int
             ) -> tuple[str | None, list[dict[str, Any]], list[dict[str, Any]]]:
    now = projection_now(db)
    with db.reading() as cur:
        cur.execute(
            "SELECT k1, k2, count FROM audience_counts WHERE tenant = ? AND metric = ? "
            "ORDER BY k1, k2", (tenant, metric)
        )
        current = cur.fetchall()
        # From the last snapshot on or before the series' first day, to carry it forward.
        first_day = days_before(now, days)[:10] if now else ""
        cur.execute(
            "SELECT MAX(day) AS day FROM audience_daily WHERE tenant = ? AND metric = ? "
            "AND day <= ?", (tenant, metric, first_day)
        )
        row = cur.fetchone()
        start = row["day"] if row and row["day"] else first_day
        cur.execute(
            "SELECT day, k1, k2, count FROM audience_daily WHERE tenant = ? AND metric = ? "
            "AND day >= ? ORDER BY day, k1, k2", (tenant, metric, start)
        )
        daily = cur.fetchall()
    return now, current, daily


def _series(now: str | None, daily: list[dict[str, Any]], days: int, key: Any,
            empty: dict[str, int]) -> list[dict[str, Any]]:
    """End-of-day counts for each of the last ``days`` days (and today), carried forward
    over days without changes."""
    if now is None:
        return []
    snapshots: dict[str, dict[str, int]] = {}
    for row in daily:
        counts = snapshots.setdefault(row["day"], dict(empty))
        name = key(row)
        counts[name] = counts.get(name, 0) + int(row["count"])
    ordered = sorted(snapshots)
    out = []
    carried = dict(empty)
    index = 0
    for offset in range(days, -1, -1):
        day = days_before(now, offset)[:10]
        while index < len(ordered) and ordered[index] <= day:
            carried = snapshots[ordered[index]]
            index += 1
        out.append({"day": day, "counts": dict(carried)})
    return out


def engagement_stats(db: ViewDatabase, tenant: str, days: int = 30) -> dict[str, Any]:
    """Counts and percentages per status, split by subscription, with a daily series.

    The 30-day change compares with the counts ficha held at the end of the day 30 days
    ago (its own clock: what it knew then), so a history imported today changes by all.
    """
    now, current, daily = _tallies(db, tenant, "engagement", days)
    empty = dict.fromkeys(STATUSES, 0)
    totals = dict(empty)
    split = {"subscribed": dict(empty), "not_subscribed": dict(empty)}
    for row in current:
        totals[row["k1"]] += int(row["count"])
        side = "subscribed" if row["k2"] == "1" else "not_subscribed"
        split[side][row["k1"]] += int(row["count"])
    series = _series(now, daily, days, lambda r: r["k1"], empty)
    before = series[0]["counts"] if series else empty
    total = sum(totals.values())
    return {
        "tenant": tenant,
        "as_of": now,
        "total": total,
        "change_over_days": days,
        "statuses": {
            s: {
                "count": totals[s],
                "percent": round(100.0 * totals[s] / total, 1) if total else 0.0,
                "change": totals[s] - before.get(s, 0),
            }
            for s in STATUSES
        },
        "by_subscription": split,
        "daily": series,
    }


def list_stats(db: ViewDatabase, tenant: str, days: int = 30) -> dict[str, Any]:
    """Contacts per list and state, with each list's daily series."""
    now, current, daily = _tallies(db, tenant, "list", days)
    lists: dict[str, dict[str, int]] = {}
    for row in current:
        lists.setdefault(row["k1"], {})[row["k2"]] = int(row["count"])
    series = _series(now, daily, days, lambda r: f"{r['k1']}|{r['k2']}", {})
    return {"tenant": tenant, "as_of": now, "lists": lists, "daily": series}


def rfm_stats(db: ViewDatabase, tenant: str, days: int = 30) -> dict[str, Any]:
    """Contacts per RFM group, the recency x frequency grid, and the groups' daily series."""
    now, current, daily = _tallies(db, tenant, "rfm", days)
    _, grid_rows, _ = _tallies(db, tenant, "rfm_grid", 0)
    groups = dict.fromkeys(RFM_GROUPS, 0)
    for row in current:
        groups[row["k1"]] = int(row["count"])
    grid = [[0] * 5 for _ in range(5)]  # grid[r-1][f-1]
    for row in grid_rows:
        grid[int(row["k1"]) - 1][int(row["k2"]) - 1] = int(row["count"])
    with db.reading() as cur:
        cur.execute("SELECT value FROM audience_state WHERE name = ?", (f"rfm_cuts:{tenant}",))
        cuts = cur.fetchone()
    return {
        "tenant": tenant, "as_of": now, "groups": groups, "grid_recency_by_frequency": grid,
        "cuts": None if cuts is None else load_json(cuts["value"]),
        "daily": _series(now, daily, days, lambda r: r["k1"], dict.fromkeys(RFM_GROUPS, 0)),
    }


# ------------------------------------------------------------------------------- consent


def consent_at(db: ViewDatabase, tenant: str, email: str, channel: str,
               at: datetime) -> dict[str, Any]:
    """Did the contact consent on ``channel`` at ``at``? The deciding ledger entry, if any."""
    row = _facts_row(db, tenant, email)
    moment = utc_iso(at)
    with db.reading() as cur:
        cur.execute(
            "SELECT occurred_at, event_id, granted, source, recorded_at FROM consent_ledger "
            "WHERE contact_id = ? AND channel = ? AND occurred_at <= ? "
            "ORDER BY occurred_at DESC, event_id DESC LIMIT 1",
            (row["contact_id"], channel, moment),
        )
        deciding = cur.fetchone()
        cur.execute(
            "SELECT occurred_at, event_id, granted, source, recorded_at FROM consent_ledger "
            "WHERE contact_id = ? AND channel = ? ORDER BY occurred_at, event_id",
            (row["contact_id"], channel),
        )
        ledger = cur.fetchall()
    for entry in [deciding, *ledger]:
        if entry is not None:
            entry["granted"] = bool(entry["granted"])
    return {
        "tenant": tenant, "email": row["email"], "channel": channel, "at": moment,
        "consented": bool(deciding and deciding["granted"]),
        "decided_by": deciding, "ledger": ledger,
    }



def segment_sizes(db: ViewDatabase, tenant: str, days: int = 30) -> dict[str, Any]:
    """Each live segment's member count at the end of each of the last ``days`` days
    (by the projection's clock) and now, from the membership intervals."""
    now = projection_now(db)
    segments = list_segments(db, tenant)
    if now is None or not segments:
        return {"as_of": now, "days": [], "segments": []}
    ends = [days_before(now, offset)[:10] + "T23:59:59.999999Z" for offset in range(days, 0, -1)]
    ends.append(now)
    columns = ", ".join(
        f"SUM(CASE WHEN entered_at <= ? AND (exited_at IS NULL OR exited_at > ?) "
        f"THEN 1 ELSE 0 END) AS d{i}" for i in range(len(ends)))
    # Instants are stored as fixed-width UTC text (utc_iso): compared as strings.
    params: list[Any] = [value for end in ends for value in (end, end)]
    with db.reading() as cur:
        cur.execute(f"SELECT segment_id, {columns} FROM segment_history WHERE tenant = ? "
                    "GROUP BY segment_id", [*params, tenant])
        counts = {r["segment_id"]: [int(r[f"d{i}"] or 0) for i in range(len(ends))]
                  for r in cur.fetchall()}
    return {
        "as_of": now,
        "days": [end[:10] for end in ends[:-1]] + ["now"],
        "segments": [{"segment_id": s["segment_id"], "name": s["name"],
                      "sizes": counts.get(s["segment_id"], [0] * len(ends))}
                     for s in segments],
    }
