"""What an AG-UI client does with a stream, in Python, for the tests of
:mod:`purpose_bus.agui`: validate each event as its ``ag_ui.core`` model, check
the ordering rules the official client's ``verifyEvents`` enforces (and a few
stricter ones), and reassemble the messages and tool calls like its
``defaultApplyEvents`` (a ``TEXT_MESSAGE_START`` of a message it already has
continues that message)."""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

import attrs
from ag_ui.core import BaseEvent
from ag_ui.core import Event as AguiEvent
from ag_ui.encoder import EventEncoder
from pydantic import TypeAdapter

from purpose_bus import Event
from purpose_bus.agui import Translator

#: The run the tests translate.
RUN = "run-1"
_ADAPTER: TypeAdapter[Any] = TypeAdapter(AguiEvent)
_ENCODER = EventEncoder()


def validated(data: str) -> dict[str, Any]:
    """The JSON of one AG-UI event, validated as the model of its type."""
    model = _ADAPTER.validate_json(data)
    decoded: dict[str, Any] = json.loads(data)
    assert model.type.value == decoded["type"]
    return decoded


def wire(events: Iterable[BaseEvent]) -> list[dict[str, Any]]:
    """Models, encoded by ag_ui's encoder and validated back, as JSON dicts."""
    out = []
    for event in events:
        frame = _ENCODER.encode(event)
        assert frame.startswith("data: ") and frame.endswith("\n\n")
        out.append(validated(frame[len("data: ") : -2]))
    return out


@attrs.frozen
class Frame:
    """One SSE block of an AG-UI stream."""

    id: str | None
    data: str | None


def parse_frames(body: str) -> list[Frame]:
    frames = []
    for block in body.split("\n\n"):
        if not block:
            continue
        fields: dict[str, str] = {}
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            name, _, value = line.partition(": ")
            assert name in ("id", "data"), line
            assert name not in fields, block
            fields[name] = value
        if fields:
            frames.append(Frame(fields.get("id"), fields.get("data")))
    return frames


def check_order(events: list[dict[str, Any]], *, complete: bool = True) -> None:
    """Assert the AG-UI ordering rules over one run's stream.

    :param complete: the stream must end with ``RUN_FINISHED`` or ``RUN_ERROR``
    """
    assert events, "an empty stream"
    assert events[0]["type"] in ("RUN_STARTED", "RUN_ERROR"), events[0]
    texts: dict[str, str | None] = {}
    calls: dict[str, str | None] = {}
    reasoning: set[str] = set()
    spans: set[str] = set()
    steps: set[tuple[str | None, str]] = set()
    active: set[str] = set()
    finished: set[str] = set()
    ended = False
    for index, event in enumerate(events):
        kind = event["type"]
        where = f"event {index} {event}"
        assert not ended, f"{where} after the run ended"
        assert "subagentRunId" not in event or event["subagentRunId"] is not None
        sub = event.get("subagentRunId")
        if sub is not None and not kind.startswith("SUBAGENT_"):
            assert sub in active, f"{where}: subagent {sub} is not active"
        if kind == "RUN_STARTED":
            assert index == 0, where
        elif kind in ("RUN_FINISHED", "RUN_ERROR"):
            if kind == "RUN_FINISHED":
                assert not texts and not calls and not steps, where
                assert not reasoning and not spans and not active, where
            ended = True
        elif kind == "TEXT_MESSAGE_START":
            assert event["messageId"] not in texts, where
            texts[event["messageId"]] = sub
        elif kind in ("TEXT_MESSAGE_CONTENT", "TEXT_MESSAGE_END"):
            assert texts.get(event["messageId"], "-") == sub, where
            if kind == "TEXT_MESSAGE_END":
                del texts[event["messageId"]]
            else:
                assert event["delta"] != "", f"{where}: an empty delta"
        elif kind == "TOOL_CALL_START":
            assert event["toolCallId"] not in calls, where
            calls[event["toolCallId"]] = sub
        elif kind in ("TOOL_CALL_ARGS", "TOOL_CALL_END"):
            assert calls.get(event["toolCallId"], "-") == sub, where
            if kind == "TOOL_CALL_END":
                del calls[event["toolCallId"]]
        elif kind == "STEP_STARTED":
            assert (sub, event["stepName"]) not in steps, where
            steps.add((sub, event["stepName"]))
        elif kind == "STEP_FINISHED":
            steps.remove((sub, event["stepName"]))
        elif kind == "REASONING_START":
            assert event["messageId"] not in spans, where
            spans.add(event["messageId"])
        elif kind == "REASONING_END":
            spans.remove(event["messageId"])
        elif kind == "REASONING_MESSAGE_START":
            assert event["messageId"] not in reasoning, where
            reasoning.add(event["messageId"])
        elif kind == "REASONING_MESSAGE_CONTENT":
            assert event["messageId"] in reasoning, where
        elif kind == "REASONING_MESSAGE_END":
            reasoning.remove(event["messageId"])
        elif kind == "SUBAGENT_STARTED":
            assert isinstance(sub, str), where
            assert sub not in active and sub not in finished, where
            active.add(sub)
        elif kind == "SUBAGENT_FINISHED":
            assert isinstance(sub, str), where
            active.remove(sub)
            finished.add(sub)
        else:
            assert kind in ("CUSTOM", "TOOL_CALL_RESULT"), where
    if complete:
        assert ended, "the stream ended before the run did"


@attrs.define
class Conversation:
    """Messages and tool calls as a client reassembles them from streams."""

    messages: dict[str, dict[str, Any]] = attrs.Factory(dict)
    calls: dict[str, dict[str, Any]] = attrs.Factory(dict)

    def apply(self, events: Iterable[dict[str, Any]]) -> Conversation:
        for event in events:
            self._apply(event)
        return self

    def _apply(self, event: dict[str, Any]) -> None:
        kind = event["type"]
        if kind in ("TEXT_MESSAGE_START", "REASONING_MESSAGE_START"):
            self.messages.setdefault(
                event["messageId"],
                {"role": event.get("role", "assistant"), "content": ""},
            )
        elif kind in ("TEXT_MESSAGE_CONTENT", "REASONING_MESSAGE_CONTENT"):
            self.messages[event["messageId"]]["content"] += event["delta"]
        elif kind == "TOOL_CALL_START":
            self.calls.setdefault(
                event["toolCallId"], {"name": event["toolCallName"], "args": ""}
            )
        elif kind == "TOOL_CALL_ARGS":
            self.calls[event["toolCallId"]]["args"] += event["delta"]
        elif kind == "TOOL_CALL_RESULT":
            self.messages[event["messageId"]] = {
                "role": "tool",
                "content": event["content"],
                "toolCallId": event["toolCallId"],
            }


def translate(events: list[Event], run_id: str = RUN) -> list[dict[str, Any]]:
    translator = Translator(run_id)
    return wire(e for event in events for e in translator.translate(event))


def stamped(events: list[Event]) -> list[Event]:
    """*events* with seq and offset as a bus would stamp them."""
    seqs: dict[str, int] = {}
    out = []
    for offset, event in enumerate(events, 1):
        seq = seqs[event.lane_id] = seqs.get(event.lane_id, 0) + 1
        out.append(attrs.evolve(event, seq=seq, offset=offset))
    return out
