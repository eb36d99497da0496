"""bus.preview: bounded previews of stored results, for agents.

Properties over generated payloads (hypothesis) and a few worked examples. A preview is
measured in UTF-8 bytes against the policy's head + tail; "a little over" is the marker
between head and tail, never more.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bus.preview import PreviewPolicy, build_preview

# The "[... N bytes omitted ...]" line between a text head and tail.
MARKER_ALLOWANCE = 64

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(10**12), 10**12)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=12), children, max_size=6)
    ),
    max_leaves=25,
)
policies = st.builds(
    PreviewPolicy, head_bytes=st.integers(0, 3000), tail_bytes=st.integers(0, 1500)
)
FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _size(text: str) -> int:
    return len(text.encode("utf-8"))


@FAST
@given(items=st.lists(json_values, min_size=1, max_size=400), policy=policies)
@example(items=["x" * 50_000], policy=PreviewPolicy(100, 50))  # one item over the budget
@example(items=[{"k": "é" * 20_000}, 1, 2], policy=PreviewPolicy(300, 0))
@example(items=list(range(5000)), policy=PreviewPolicy(100, 50))
def test_a_json_list_preview_is_json_and_bounded(items: list[Any], policy: PreviewPolicy) -> None:
    data = json.dumps(items, ensure_ascii=False).encode()
    preview = build_preview(data, "application/json", policy)
    budget = policy.head_bytes + policy.tail_bytes
    if len(data) <= budget:
        assert preview.text == data.decode() and not preview.truncated
        return
    assert preview.truncated
    if policy.head_bytes == policy.tail_bytes == 0:
        assert preview.text == ""
        return
    assert _size(preview.text) <= budget + MARKER_ALLOWANCE, preview.shape
    if preview.shape == "json-list":
        shown = json.loads(preview.text)  # always valid JSON
        assert shown["total_items"] == len(items)
        assert shown["shown"] == len(shown["items"]) >= 1
        assert shown["items"] == items[: shown["shown"]]  # the first items, unchanged
    else:
        # No first item fits the budget: a head and tail of the text instead.
        assert preview.shape == "text"
        first = json.dumps(items[0], ensure_ascii=False)
        assert _size(first) > budget - 50


@FAST
@given(
    doc=st.dictionaries(st.text(max_size=30), json_values, min_size=1, max_size=30),
    policy=policies,
)
@example(doc={"k" * 40_000: 1}, policy=PreviewPolicy(100, 50))  # a key over the budget
@example(doc={"rows": list(range(100_000)), "total": 100_000}, policy=PreviewPolicy(2048, 1024))
def test_a_json_object_preview_is_json_and_bounded(
    doc: dict[str, Any], policy: PreviewPolicy
) -> None:
    data = json.dumps(doc, ensure_ascii=False, indent=2).encode()
    preview = build_preview(data, "application/json", policy)
    budget = policy.head_bytes + policy.tail_bytes
    if len(data) <= budget or budget == 0:
        return
    assert _size(preview.text) <= budget + MARKER_ALLOWANCE, preview.shape
    if preview.shape == "json-object":
        shown = json.loads(preview.text)
        assert shown["total_keys"] == len(doc)
        assert shown["shown"] == len(shown["keys"]) >= 1
        assert list(shown["keys"]) == list(doc)[: shown["shown"]]
        cut = [k for k, v in shown["keys"].items() if v != doc[k]]
        assert preview.truncated == (shown["shown"] < len(doc) or bool(cut))
    else:
        assert preview.shape == "text"


@FAST
@given(
    text=st.text(st.characters(blacklist_characters="\x00"), min_size=1, max_size=3000),
    policy=policies,
)
@example(text="é" * 1000, policy=PreviewPolicy(101, 51))  # cuts inside two-byte characters
@example(text="🙂" * 1000, policy=PreviewPolicy(102, 53))  # ... and four-byte ones
def test_text_is_cut_on_character_boundaries(text: str, policy: PreviewPolicy) -> None:
    data = text.encode()
    preview = build_preview(data, "text/plain", policy)
    assert "\ufffd" not in preview.text  # nothing was cut inside a character
    budget = policy.head_bytes + policy.tail_bytes
    if len(data) <= budget:
        assert preview.text == text and not preview.truncated
        return
    assert preview.truncated
    if budget == 0:
        assert preview.text == ""
        return
    assert _size(preview.text) <= budget + MARKER_ALLOWANCE
    head, sep, tail = preview.text.partition("\n[... ")
    assert text.startswith(head)
    assert 0 <= policy.head_bytes - _size(head) <= 3  # at most one character short
    if sep:
        tail = tail.split(" omitted ...]\n", 1)[1]
        assert tail and text.endswith(tail)
        assert 0 <= policy.tail_bytes - _size(tail) <= 3
    else:  # no tail asked for, or too few bytes for the last character
        assert preview.text == head
        assert policy.tail_bytes < len(text[-1].encode())


def test_a_json_list_preview_shows_the_first_items_and_the_count() -> None:
    rows = [{"id": i, "name": f"row-{i}"} for i in range(10_000)]
    preview = build_preview(json.dumps(rows).encode(), "application/json", PreviewPolicy(300, 100))
    shown = json.loads(preview.text)
    assert preview.shape == "json-list" and preview.truncated
    assert shown["total_items"] == 10_000
    assert shown["items"] == rows[: shown["shown"]] and 5 <= shown["shown"] < 20


def test_a_large_text_shows_head_and_tail_with_what_was_left_out() -> None:
    data = b"A" * 1000 + b"B" * 100_000 + b"C" * 500
    preview = build_preview(data, "text/plain", PreviewPolicy(1000, 500))
    assert preview.text == "A" * 1000 + "\n[... 100,000 bytes omitted ...]\n" + "C" * 500


def test_a_lone_surrogate_escaped_in_json_does_not_break_the_preview() -> None:
    data = json.dumps(["\ud800 lone", *range(5000)]).encode()  # ASCII: "\\ud800"
    preview = build_preview(data, "application/json", PreviewPolicy(100, 50))
    assert preview.shape == "json-list"
    assert json.loads(preview.text)["items"][0] == "\ud800 lone"


def test_binary_gets_no_preview_and_none_asked_gets_none() -> None:
    assert build_preview(b"\x00\x01" * 5000, "application/octet-stream", PreviewPolicy()).text == ""
    assert build_preview(b"\x89PNG\x00" * 5000, "text/plain", PreviewPolicy()).shape == "binary"
    none = build_preview(b"x" * 10_000, "text/plain", PreviewPolicy(0, 0))
    assert none.text == "" and none.truncated


def test_a_pretty_printed_object_that_fits_compact_is_not_called_cut() -> None:
    doc = {f"key{i}": i for i in range(40)}
    data = json.dumps(doc, indent=30).encode()
    assert len(data) > 1000 > len(json.dumps(doc)) + 60
    preview = build_preview(data, "application/json", PreviewPolicy(700, 300))
    assert preview.shape == "json-object"
    assert json.loads(preview.text)["keys"] == doc
    assert not preview.truncated


@given(max_chars=st.integers(1, 200_000), policy=policies)
def test_resized_never_grows_and_leaves_room_for_the_notice(
    max_chars: int, policy: PreviewPolicy
) -> None:
    resized = policy.resized(max_chars)
    assert resized.head_bytes <= policy.head_bytes and resized.tail_bytes <= policy.tail_bytes
    assert resized.head_bytes >= 0 and resized.tail_bytes >= 0
    total = resized.head_bytes + resized.tail_bytes
    assert total == policy.head_bytes + policy.tail_bytes or total == 0 or total + 400 <= max_chars
    assert policy.resized(None) == policy
