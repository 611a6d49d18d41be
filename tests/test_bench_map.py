"""bench/ as a map (issue 81 item 6): every program in bench/README.md, every link there and in docs/ to a section of
bench/RESULTS.md landing on a heading that exists, every ``## `` section of RESULTS.md in the index at its top, and
every section a program's ``--record`` replaces being one that RESULTS.md has.

Static text checks only (no jax, no bench imports), each with a planted violation that must fail. Anchors follow
GitHub's rule: the heading's text lowercased, everything but letters, digits, ``_``, ``-`` and spaces dropped, spaces
turned to ``-``, and a repeated anchor suffixed ``-1``, ``-2``, ... in order of appearance.
"""

from __future__ import annotations

import pathlib
import re

REPO = pathlib.Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"

FENCE = re.compile(r"^(```|~~~)")
HEADING = re.compile(r"^(#{1,6}) +(.*?) *#*$")
LINK = re.compile(r"\]\(([^)\s]*?)#([^)\s]+)\)")


def slug(heading: str) -> str:
    """GitHub's anchor for a heading's text: ``## OT measure (kernels/ot.py)`` -> ``ot-measure-kernelsotpy``."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    return re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")


def headings(markdown: str) -> list[tuple[int, str, str]]:
    """(level, text, anchor) of every heading outside code fences, anchors made unique as GitHub makes them."""
    out, seen, fenced = [], {}, False
    for line in markdown.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else HEADING.match(line)
        if m:
            base = slug(m.group(2))
            n = seen.get(base, 0)
            seen[base] = n + 1
            out.append((len(m.group(1)), m.group(2), base if n == 0 else f"{base}-{n}"))
    return out


def index_problems(results: str) -> list[str]:
    """Every ``## `` section of RESULTS.md linked from the index (the text before the first ``## ``), and every index
    link landing on a heading."""
    anchors = {a for _, _, a in headings(results)}
    first = re.search(r"^## ", results, flags=re.MULTILINE)
    index = results[: first.start()] if first else results
    linked = {a for target, a in LINK.findall(index) if target == ""}
    problems = [
        f"RESULTS.md index: no link to section {t!r}; add `- [{t}](#{a})` under its kind"
        for lv, t, a in headings(results)
        if lv == 2 and a not in linked
    ]
    problems += [f"RESULTS.md index: link #{a} has no heading" for a in sorted(linked - anchors)]
    return problems


def link_problems(name: str, text: str, results: str) -> list[str]:
    """Every link of ``text`` to ``...RESULTS.md#anchor`` lands on a heading of RESULTS.md."""
    anchors = {a for _, _, a in headings(results)}
    return [
        f"{name}: link to RESULTS.md#{a} has no heading"
        for target, a in LINK.findall(text)
        if target.endswith("RESULTS.md") and a not in anchors
    ]


def readme_problems(readme: str, programs: list[str], results: str) -> list[str]:
    """Every program (``bench/x.py``, ``bench/x.sh``) named in the README, every ``bench/`` file it names existing,
    and its links to RESULTS.md landing."""
    problems = [f"bench/README.md: no row for bench/{p}" for p in programs if f"bench/{p}" not in readme]
    named = set(re.findall(r"bench/(\w+\.(?:py|sh))\b", readme))
    problems += [f"bench/README.md: bench/{p} does not exist" for p in sorted(named - set(programs))]
    return problems + link_problems("bench/README.md", readme, results)


# Sections a program's --record would add, not yet recorded (each a result nobody has taken on a quiet machine or a
# device); a new name here must be a real gap, not a misspelt section.
NOT_YET_RECORDED = {
    "encode: compute or storage (bench/encode_writes.py)": "its rates are in BUILD.md's encode plan",
    "seqsim pallas": "not yet run on a device (issue 80)",
}
RECORDED = re.compile(r"""record\([^,()]*(?:\([^()]*\))?,\s*"([^"]+)"|^\w*SECTION = "([^"]+)"$""", re.MULTILINE)


def record_problems(sources: dict[str, str], results: str) -> list[str]:
    """The section a program's ``--record`` replaces (``bench.common.record``'s literal name, or a ``*SECTION``
    constant) is a ``## `` section of RESULTS.md: a misspelt one would append a second copy instead of replacing."""
    sections = {t for lv, t, _ in headings(results) if lv == 2}
    problems = []
    for name, text in sources.items():
        for m in RECORDED.finditer(text):
            section = m.group(1) or m.group(2)
            if section not in sections and section not in NOT_YET_RECORDED:
                problems.append(f"{name}: records section {section!r}, which RESULTS.md has no '## ' heading for")
    return problems + [f"NOT_YET_RECORDED: {s!r} is recorded now; drop it" for s in NOT_YET_RECORDED if s in sections]


def programs() -> list[str]:
    return sorted(p.name for p in BENCH.iterdir() if p.suffix in (".py", ".sh") and p.name != "__init__.py")


def test_bench_readme_maps_every_program_to_results():
    results = (BENCH / "RESULTS.md").read_text()
    assert readme_problems((BENCH / "README.md").read_text(), programs(), results) == []


def test_record_sections_exist():
    sources = {f"bench/{p}": (BENCH / p).read_text() for p in programs() if p.endswith(".py")}
    assert record_problems(sources, (BENCH / "RESULTS.md").read_text()) == []


def test_results_index_lists_every_section():
    assert index_problems((BENCH / "RESULTS.md").read_text()) == []


def test_docs_links_to_results_land():
    results = (BENCH / "RESULTS.md").read_text()
    texts = {
        str(p.relative_to(REPO)): p.read_text()
        for p in [REPO / "BUILD.md", REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    }
    assert [p for name, text in texts.items() for p in link_problems(name, text, results)] == []


def test_anchors_follow_github():
    text = (
        "# T\n## OT measure (kernels/ot.py) against POT\n```\n## not a heading\n```\n### ISA: native\n### ISA: native\n"
    )
    assert [a for _, _, a in headings(text)] == [
        "t",
        "ot-measure-kernelsotpy-against-pot",
        "isa-native",
        "isa-native-1",
    ]
    assert slug("sae: FVU against steps (`bench/sae_steps.py`)") == "sae-fvu-against-steps-benchsae_stepspy"
    assert slug("GPU: NVIDIA H200, 2026-11-26 04:49-05:05 UTC") == "gpu-nvidia-h200-2026-11-26-0449-0505-utc"


def test_planted_violations_fail():
    results = "# R\n\n- [a](#a)\n- [gone](#gone)\n\n## a\n\ntext\n\n## b\n"
    assert index_problems(results) == [
        "RESULTS.md index: no link to section 'b'; add `- [b](#b)` under its kind",
        "RESULTS.md index: link #gone has no heading",
    ]
    assert index_problems("# R\n\n- [a](#a)\n- [b](#b)\n\n## a\n## b\n") == []
    readme = "| `bench/x.py` | [r](RESULTS.md#a) |\n| `bench/old.py` | [r](RESULTS.md#nope) |\n"
    assert readme_problems(readme, ["x.py", "y.sh"], results) == [
        "bench/README.md: no row for bench/y.sh",
        "bench/README.md: bench/old.py does not exist",
        "bench/README.md: link to RESULTS.md#nope has no heading",
    ]
    sources = {
        "bench/a.py": 'SECTION = "a"\n    record(args.record, "b", text)\n    record(pathlib.Path(x), "c", t)\n',
        "bench/f.py": 'record(args.record, f"a {x}", text)\n',
    }
    assert record_problems(sources, results) == [
        "bench/a.py: records section 'c', which RESULTS.md has no '## ' heading for"
    ]
    # the real files, with one section added below the index and one program added, fail
    real = (BENCH / "RESULTS.md").read_text()
    assert index_problems(real + "\n## a planted section\n") == [
        "RESULTS.md index: no link to section 'a planted section'; "
        "add `- [a planted section](#a-planted-section)` under its kind"
    ]
    readme = (BENCH / "README.md").read_text()
    assert readme_problems(readme, [*programs(), "planted.py"], real) == [
        "bench/README.md: no row for bench/planted.py"
    ]
