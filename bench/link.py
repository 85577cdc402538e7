"""P5: linking throughput of one linker process against a directory of 1,000,000 addresses.

Directory: 500,000 records with two addresses each, held as the linker's address → records map.
Per message the candidate does the linker's whole CPU path: validate the `message received` JSON,
normalise From/To/Cc/Bcc/Reply-To without the inbox's own address, look every participant up, decide
the links (every match, ambiguity reported), hash the link set and build + serialise `message linked`.
Baseline, measured in the same run on the same records: validating the `message received` JSON alone,
the least any consumer of the topic pays per message.

The machine may be shared: the measurement is repeated (`--runs`) and min / median / max are printed;
RESULT carries the median.

    .venv/bin/python bench/link.py [--addresses 1000000] [--messages 50000] [--runs 3]
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
import uuid
from collections.abc import Callable

from contracts import parse_event
from contracts.common import Address, MessageRef
from contracts.links import MessageLinked, MessageLinkedData
from contracts.messages import MessageReceived, MessageReceivedData
from services.linker import link_rules
from services.linker.link_rules import RecordRef
from services.linker.linking import facts_from_received

TOPIC = "mailsync.messages.v1"
TARGET = 20_000  # messages/s per linker process (issue #5, P5)


def build_directory(n_addresses: int) -> tuple[dict[str, list[RecordRef]], list[str]]:
    directory: dict[str, list[RecordRef]] = {}
    addresses: list[str] = []
    for r in range(n_addresses // 2):
        ref = RecordRef(f"rec{r}", "lead" if r % 3 == 0 else "contact")
        for email in (f"person{r}@company{r % 5000}.example", f"p{r}.private@mail{r % 97}.example"):
            directory.setdefault(email, []).append(ref)
            addresses.append(email)
    # 1% of addresses shared by two records (a couple, an assistant): links to both, reported.
    for r in range(0, n_addresses // 2, 100):
        directory[f"person{r}@company{r % 5000}.example"].append(RecordRef(f"rec{r}-b", "contact"))
    return directory, addresses


def build_messages(n: int, addresses: list[str], rng: random.Random) -> list[bytes]:
    def someone() -> Address:
        if rng.random() < 0.5:
            return Address(name="Known Person", email=rng.choice(addresses).upper())
        return Address(name="Stranger", email=f"x{rng.randrange(10**9)}@elsewhere.example")

    out = []
    for i in range(n):
        data = MessageReceivedData(
            ref=MessageRef(message_key=f"k{i}", folder="INBOX", uidvalidity=1, uid=i + 1),
            history=False,
            direction="inbound",
            message_id=f"{uuid.UUID(int=rng.getrandbits(128))}@mail.example",
            subject=f"subject {i}",
            from_=[someone()],
            to=[Address(name="Me", email="owner@corp.example"), someone()],
            cc=[someone(), someone()],
            size=2000,
        )
        event = MessageReceived.build(data=data, tenant_id="bench", source="/bench", inbox_id="inbox-1")
        out.append(event.model_dump_json().encode())
    return out


def run(raws: list[bytes], work: Callable[[bytes], object]) -> float:
    started = time.perf_counter()
    for raw in raws:
        work(raw)
    return len(raws) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--addresses", type=int, default=1_000_000)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rng = random.Random(2026)

    t0 = time.perf_counter()
    directory, addresses = build_directory(args.addresses)
    took = time.perf_counter() - t0
    print(f"directory: {len(directory):,} addresses, {args.addresses // 2:,} records, built in {took:.1f}s")
    raws = build_messages(args.messages, addresses, rng)
    own = link_rules.own_addresses("owner@corp.example", [])
    linked = 0

    def baseline(raw: bytes) -> object:
        return parse_event(raw, TOPIC)

    def link(raw: bytes) -> object:
        nonlocal linked
        event = parse_event(raw, TOPIC)
        assert isinstance(event, MessageReceived)
        facts = facts_from_received(event)
        parts = link_rules.participants(facts.by_role(), own)
        keys = link_rules.lookup_keys(parts, plus_addressing=False)
        found = {k: directory[k] for k in keys if k in directory}
        links, ambiguous = link_rules.compute_links(parts, found)
        if not links:
            return None
        linked += 1
        data = MessageLinkedData(
            message_key=facts.message_key,
            ref=facts.ref,
            link_version=link_rules.link_version(links),
            links=links,
            ambiguous_addresses=ambiguous,
            direction="inbound",
        )
        out = MessageLinked.build(data=data, tenant_id="bench", source="/bench", inbox_id="inbox-1")
        return out.model_dump_json()

    run(raws[:2000], link)  # warm-up
    bases, rates = [], []
    for i in range(args.runs):
        linked = 0
        bases.append(run(raws, baseline))
        rates.append(run(raws, link))
        print(f"run {i + 1}: baseline {bases[-1]:,.0f} msgs/s, link {rates[-1]:,.0f} msgs/s")
    base, p5 = statistics.median(bases), statistics.median(rates)
    print(f"baseline (validate message received only), median: {base:,.0f} msgs/s")
    print(
        "link (validate, normalise, look up, decide, build + serialise message linked): "
        f"min {min(rates):,.0f} / median {p5:,.0f} / max {max(rates):,.0f} msgs/s"
    )
    print(f"messages linked to at least one record: {linked / args.messages:.0%}")
    verdict = "met" if p5 >= TARGET else "NOT met"
    print(f"target {TARGET:,} msgs/s: {verdict} (median / target = {p5 / TARGET:.2f})")
    print(
        f"RESULT p5_msgs_per_s={p5:.0f} p5_min={min(rates):.0f} p5_max={max(rates):.0f} "
        f"target_msgs_per_s={TARGET} ratio_vs_target={p5 / TARGET:.2f} "
        f"baseline_validate_msgs_per_s={base:.0f} ratio_vs_baseline={p5 / base:.2f} "
        f"addresses={len(directory)} messages={args.messages} runs={args.runs}"
    )


if __name__ == "__main__":
    main()
