"""The line framer: bytes in, lines out, bounded memory whatever the peer sends."""
from hypothesis import given, settings
from hypothesis import strategies as st

from gstratum.protocol.framing import LINE_TOO_LONG, LineFramer


def feed_all(framer, chunks):
    out = []
    for chunk in chunks:
        out.extend(framer.feed(chunk))
    return out


def test_splits_lines_and_keeps_partial_line():
    framer = LineFramer()
    assert framer.feed(b'{"a":1}\n{"b"') == [b'{"a":1}']
    assert framer.buffered == 4
    assert framer.feed(b":2}\n") == [b'{"b":2}']
    assert framer.buffered == 0


def test_crlf_and_blank_lines():
    assert LineFramer().feed(b"one\r\n\r\n\n  \ntwo\n") == [b"one", b"two"]


def test_oversize_line_reported_once_then_resynchronises():
    framer = LineFramer(max_line=10)
    out = framer.feed(b"x" * 25)
    assert out == [LINE_TOO_LONG]
    assert framer.buffered == 0
    assert framer.feed(b"y" * 100) == []
    assert framer.feed(b"zz\nok\n") == [b"ok"]


def test_oversize_line_with_newline_in_same_chunk():
    assert LineFramer(max_line=4).feed(b"12345678\nabc\n") == [LINE_TOO_LONG, b"abc"]


def test_line_exactly_at_cap_is_accepted():
    assert LineFramer(max_line=4).feed(b"1234\n") == [b"1234"]


lines = st.lists(st.binary(min_size=1, max_size=40).map(lambda b: b.replace(b"\n", b"")).filter(
    lambda b: b.strip() and not b.endswith(b"\r")), max_size=20)


@settings(max_examples=300)
@given(lines, st.data())
def test_any_split_gives_the_same_lines(messages, data):
    stream = b"".join(m + b"\n" for m in messages)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    chunks = [stream[a:b] for a, b in zip([0] + cuts, cuts + [len(stream)])]
    assert feed_all(LineFramer(max_line=64), chunks) == messages


@settings(max_examples=300)
@given(st.lists(st.binary(max_size=300), max_size=30))
def test_buffer_never_exceeds_cap(chunks):
    framer = LineFramer(max_line=50)
    for chunk in chunks:
        for item in framer.feed(chunk):
            assert item is LINE_TOO_LONG or len(item) <= 50
        assert framer.buffered <= 50
