"""The WebSocket frame parser on hand-built frames: lengths, splits, fragments, errors."""

from __future__ import annotations

import pytest

from streamer.wsframes import FrameParser, Message, Opcode, WebSocketProtocolError


def frame(opcode: int, payload: bytes, fin: bool = True, mask: bytes | None = None) -> bytes:
    first = (0x80 if fin else 0) | opcode
    n = len(payload)
    if n < 126:
        head = bytes([first, n])
    elif n < 1 << 16:
        head = bytes([first, 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([first, 127]) + n.to_bytes(8, "big")
    if mask is None:
        return head + payload
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return bytes([head[0], head[1] | 0x80]) + head[2:] + mask + masked


def test_messages_of_every_length_encoding_arrive_whole_however_the_bytes_are_split() -> None:
    payloads = [b"", b"x" * 125, b"y" * 126, b"z" * 70_000]
    stream = b"".join(frame(Opcode.TEXT, p) for p in payloads)
    for step in (1, 7, 4096, len(stream)):
        parser = FrameParser()
        got: list[Message] = []
        for i in range(0, len(stream), step):
            got += parser.feed(stream[i : i + step])
        assert [m.data for m in got] == payloads
        assert all(m.opcode is Opcode.TEXT for m in got)


def test_fragments_join_around_a_ping_and_control_frames_pass_through() -> None:
    parser = FrameParser()
    data = (
        frame(Opcode.TEXT, b'{"event":', fin=False)
        + frame(Opcode.PING, b"hb")
        + frame(Opcode.CONTINUATION, b'"update",', fin=False)
        + frame(Opcode.CONTINUATION, b'"payload":"1"}')
        + frame(Opcode.PONG, b"")
        + frame(Opcode.CLOSE, b"\x03\xe8")
    )
    assert parser.feed(data) == [
        Message(Opcode.PING, b"hb"),
        Message(Opcode.TEXT, b'{"event":"update","payload":"1"}'),
        Message(Opcode.PONG, b""),
        Message(Opcode.CLOSE, b"\x03\xe8"),
    ]


def test_a_masked_frame_is_unmasked() -> None:
    parser = FrameParser()
    assert parser.feed(frame(Opcode.TEXT, b"hello", mask=b"\x01\x02\x03\x04")) == [
        Message(Opcode.TEXT, b"hello")
    ]


@pytest.mark.parametrize(
    "data",
    [
        bytes([0x80 | 0x3, 0]),  # reserved opcode
        bytes([0x80 | 0x40 | 0x1, 0]),  # RSV1 without an extension
        frame(Opcode.PING, b"p", fin=False),  # fragmented control frame
        frame(Opcode.CONTINUATION, b"x"),  # continuation of nothing
        frame(Opcode.TEXT, b"a", fin=False) + frame(Opcode.TEXT, b"b"),  # new message mid-way
        bytes([0x81, 127]) + (1 << 62).to_bytes(8, "big"),  # absurd length
    ],
)
def test_broken_framing_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(WebSocketProtocolError):
        FrameParser().feed(data)


def test_a_message_over_the_limit_in_fragments_is_refused() -> None:
    parser = FrameParser(max_message_bytes=10)
    parser.feed(frame(Opcode.TEXT, b"123456", fin=False))
    with pytest.raises(WebSocketProtocolError):
        parser.feed(frame(Opcode.CONTINUATION, b"789012"))
