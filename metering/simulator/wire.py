"""What the simulator sends, in each provider's wire format: whole response bodies and
the SSE frames of a stream (OpenAI Chat Completions, OpenAI Responses, Anthropic Messages).

Pure: a `Generation` (decided by `engine`) in, JSON objects or pre-encoded frames out.
A stream is a list of `Frames`: each frame carries the number of tokens generated before
it is due, so `app` can pace it. The usage they report is the generation's, shaped as
each provider (and each OpenAI-compatible server `quirk`) reports it.
"""

from __future__ import annotations

import itertools
from typing import Any

import orjson

from metering.simulator import engine
from metering.simulator.engine import Generation

Frames = list[tuple[int, bytes]]  # (tokens generated before the frame is due, SSE bytes)

_DONE = b"data: [DONE]\n\n"
_CHOICE_END = b'},"logprobs":null,"finish_reason":null}]'
_REASONING_DELTA_KEY = {
    "vllm": b'{"reasoning":',
    "deepseek": b'{"content":null,"reasoning_content":',
    "llamacpp": b'{"reasoning_content":',
}


# ---- chat completion framing -------------------------------------------------------------


def chat_message(generation: Generation, quirk: str | None) -> dict[str, Any]:
    text = generation.visible_text
    if quirk is None or quirk == "nonempty-choices":
        return {"role": "assistant", "content": text, "refusal": None, "annotations": []}
    reasoning = generation.reasoning_text if generation.reasoning_tokens else None
    if quirk == "vllm":
        return {"role": "assistant", "content": text, "reasoning": reasoning, "tool_calls": []}
    return {"role": "assistant", "content": text, "reasoning_content": reasoning}


def chat_usage(generation: Generation, quirk: str | None) -> dict[str, Any]:
    prompt = generation.prompt_tokens
    completion = generation.output_tokens
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if quirk == "vllm":
        usage["prompt_tokens_details"] = None
    elif quirk == "llamacpp":
        pass
    elif quirk == "deepseek":
        usage["prompt_tokens_details"] = {"cached_tokens": generation.cached_tokens}
        usage["completion_tokens_details"] = {"reasoning_tokens": generation.reasoning_tokens}
        usage["prompt_cache_hit_tokens"] = generation.cached_tokens
        usage["prompt_cache_miss_tokens"] = prompt - generation.cached_tokens
    else:
        usage["prompt_tokens_details"] = {
            "cached_tokens": generation.cached_tokens,
            "audio_tokens": 0,
        }
        usage["completion_tokens_details"] = {
            "reasoning_tokens": generation.reasoning_tokens,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        }
    return usage


def chat_frames(
    rid: str, created: int, generation: Generation, quirk: str | None, include_usage: bool
) -> tuple[Frames, int]:
    """All SSE frames of a chat stream, and the index of the first visible-content frame."""
    head = (
        b'data: {"id":"chatcmpl-%s","object":"chat.completion.chunk","created":%d,"model":%s,'
        % (
            rid.encode(),
            created,
            orjson.dumps(generation.model),
        )
    )
    head += b'"system_fingerprint":null,"choices":'
    reasoning = generation.reasoning_tokens
    visible = generation.visible_tokens
    total = reasoning + visible
    prompt = generation.prompt_tokens
    every_frame_usage = quirk == "vllm" and include_usage
    tail = b',"usage":null}\n\n' if include_usage else b"}\n\n"

    def usage_tail(completion: int) -> bytes:
        return b',"usage":{"prompt_tokens":%d,"total_tokens":%d,"completion_tokens":%d}}\n\n' % (
            prompt,
            prompt + completion,
            completion,
        )

    role_delta = (
        b'{"role":"assistant","content":"","refusal":null'
        if quirk in (None, "nonempty-choices")
        else b'{"role":"assistant","content":""'
    )
    frames: Frames = [
        (
            0,
            head
            + b'[{"index":0,"delta":'
            + role_delta
            + _CHOICE_END
            + (usage_tail(0) if every_frame_usage else tail),
        )
    ]
    done = 0
    reasoning_key = _REASONING_DELTA_KEY.get(quirk or "")
    if reasoning_key is not None:
        for piece in engine.json_pieces(generation.reasoning_start, reasoning):
            done += 1
            frame_tail = usage_tail(done) if every_frame_usage else tail
            frames.append(
                (
                    done,
                    head
                    + b'[{"index":0,"delta":'
                    + reasoning_key
                    + piece
                    + _CHOICE_END
                    + frame_tail,
                )
            )
    done = reasoning
    visible_at = len(frames)
    content_head = head + b'[{"index":0,"delta":{"content":'
    if every_frame_usage:
        for piece in engine.json_pieces(generation.visible_start, visible):
            done += 1
            frames.append((done, content_head + piece + _CHOICE_END + usage_tail(done)))
    else:
        frames.extend(
            (reasoning + number, content_head + piece + _CHOICE_END + tail)
            for number, piece in enumerate(engine.json_pieces(generation.visible_start, visible), 1)
        )
    finish = b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"%s"}]' % (
        b"length" if generation.truncated else b"stop"
    )
    usage_json = orjson.dumps(chat_usage(generation, quirk))
    if quirk == "nonempty-choices" and include_usage:
        frames.append((total, head + finish + b',"usage":' + usage_json + b"}\n\n"))
    else:
        frames.append((total, head + finish + (usage_tail(total) if every_frame_usage else tail)))
        if include_usage:
            choices = b"null" if quirk == "vllm" else b"[]"
            frames.append((total, head + choices + b',"usage":' + usage_json + b"}\n\n"))
    frames.append((total, _DONE))
    return frames, visible_at


# ---- Responses framing -------------------------------------------------------------------


def response_object(
    rid: str, created: int, body: dict[str, Any], generation: Generation, *, final: bool
) -> dict[str, Any]:
    reasoning_config = body.get("reasoning")
    effort = reasoning_config.get("effort") if isinstance(reasoning_config, dict) else None
    status = "in_progress"
    output: list[dict[str, Any]] = []
    usage = None
    if final:
        status = "incomplete" if generation.truncated else "completed"
        if generation.reasoning_tokens:
            output.append(_reasoning_item(rid))
        if generation.visible_tokens:
            output.append(_output_message(rid, generation.visible_text, status))
        usage = {
            "input_tokens": generation.prompt_tokens,
            "input_tokens_details": {
                "cached_tokens": generation.cached_tokens,
                "cache_write_tokens": 0,
            },
            "output_tokens": generation.output_tokens,
            "output_tokens_details": {"reasoning_tokens": generation.reasoning_tokens},
            "total_tokens": generation.total_tokens,
        }
    return {
        "id": f"resp_{rid}",
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": created if status == "completed" else None,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": generation.model,
        "output": output,
        "parallel_tool_calls": body.get("parallel_tool_calls", True),
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": effort or engine.OPENAI_DEFAULT_EFFORT, "summary": None},
        "service_tier": "default",
        "store": body.get("store", True),
        "temperature": body.get("temperature", 1.0),
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools", []),
        "top_p": body.get("top_p", 1.0),
        "truncation": body.get("truncation", "disabled"),
        "usage": usage,
        "user": body.get("user"),
        "metadata": body.get("metadata") or {},
    }


def _reasoning_item(rid: str) -> dict[str, Any]:
    return {"id": f"rs_{rid}", "type": "reasoning", "summary": []}


def _output_message(rid: str, text: str | None, status: str) -> dict[str, Any]:
    content = (
        []
        if text is None
        else [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]
    )
    return {
        "id": f"msg_{rid}",
        "type": "message",
        "status": status,
        "role": "assistant",
        "content": content,
    }


def response_frames(
    rid: str, created: int, body: dict[str, Any], generation: Generation
) -> tuple[Frames, int]:
    frames: Frames = []
    sequence = itertools.count()

    def event(due: int, event_type: str, payload: dict[str, Any]) -> None:
        data = orjson.dumps({"type": event_type, "sequence_number": next(sequence), **payload})
        frames.append((due, b"event: " + event_type.encode() + b"\ndata: " + data + b"\n\n"))

    reasoning = generation.reasoning_tokens
    total = generation.output_tokens
    start = response_object(rid, created, body, generation, final=False)
    event(0, "response.created", {"response": start})
    event(0, "response.in_progress", {"response": start})
    output_index = 0
    if reasoning:
        event(0, "response.output_item.added", {"output_index": 0, "item": _reasoning_item(rid)})
        event(
            reasoning,
            "response.output_item.done",
            {"output_index": 0, "item": _reasoning_item(rid)},
        )
        output_index = 1
    visible_at = len(frames)
    if generation.visible_tokens:
        item_id = f"msg_{rid}"
        status = "incomplete" if generation.truncated else "completed"
        text = generation.visible_text
        empty_part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
        place = {"item_id": item_id, "output_index": output_index, "content_index": 0}
        event(
            reasoning,
            "response.output_item.added",
            {"output_index": output_index, "item": _output_message(rid, None, "in_progress")},
        )
        event(reasoning, "response.content_part.added", {**place, "part": empty_part})
        visible_at = len(frames)
        delta_head = b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta","sequence_number":'
        delta_place = b',"item_id":"%s","output_index":%d,"content_index":0,"delta":' % (
            item_id.encode(),
            output_index,
        )
        for number, piece in enumerate(
            engine.json_pieces(generation.visible_start, generation.visible_tokens), 1
        ):
            frames.append(
                (
                    reasoning + number,
                    b'%s%d%s%s,"logprobs":[]}\n\n'
                    % (delta_head, next(sequence), delta_place, piece),
                )
            )
        event(total, "response.output_text.done", {**place, "text": text, "logprobs": []})
        event(total, "response.content_part.done", {**place, "part": {**empty_part, "text": text}})
        event(
            total,
            "response.output_item.done",
            {"output_index": output_index, "item": _output_message(rid, text, status)},
        )
    final = response_object(rid, created, body, generation, final=True)
    final_type = "response.incomplete" if generation.truncated else "response.completed"
    event(total, final_type, {"response": final})
    return frames, visible_at


# ---- Anthropic framing -------------------------------------------------------------------


def anthropic_usage(generation: Generation, output_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens": generation.uncached_input_tokens,
        "cache_creation_input_tokens": generation.cache_write_tokens,
        "cache_read_input_tokens": generation.cached_tokens,
        "cache_creation": {
            "ephemeral_5m_input_tokens": generation.cache_write_5m_tokens,
            "ephemeral_1h_input_tokens": generation.cache_write_1h_tokens,
        },
        "output_tokens": output_tokens,
        "output_tokens_details": {"thinking_tokens": generation.reasoning_tokens},
        "service_tier": "standard",
    }


def message_frames(rid: str, generation: Generation, omitted: bool) -> tuple[Frames, int]:
    frames: Frames = []

    def event(due: int, event_type: str, payload: dict[str, Any]) -> None:
        data = orjson.dumps({"type": event_type, **payload})
        frames.append((due, b"event: " + event_type.encode() + b"\ndata: " + data + b"\n\n"))

    reasoning = generation.reasoning_tokens
    total = generation.output_tokens
    start_usage = anthropic_usage(generation, 1)
    del start_usage["output_tokens_details"]
    message: dict[str, Any] = {
        "id": f"msg_{rid}",
        "type": "message",
        "role": "assistant",
        "model": generation.model,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": start_usage,
    }
    event(0, "message_start", {"message": message})
    event(0, "ping", {})
    index = 0
    if reasoning:
        event(
            0,
            "content_block_start",
            {"index": 0, "content_block": {"type": "thinking", "thinking": "", "signature": ""}},
        )
        if not omitted:
            thinking_head = (
                b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
                b'"delta":{"type":"thinking_delta","thinking":'
            )
            frames.extend(
                (number, thinking_head + piece + b"}}\n\n")
                for number, piece in enumerate(
                    engine.json_pieces(generation.reasoning_start, reasoning), 1
                )
            )
        event(
            reasoning,
            "content_block_delta",
            {"index": 0, "delta": {"type": "signature_delta", "signature": generation.signature}},
        )
        event(reasoning, "content_block_stop", {"index": 0})
        index = 1
    visible_at = len(frames)
    if generation.visible_tokens:
        event(
            reasoning,
            "content_block_start",
            {"index": index, "content_block": {"type": "text", "text": ""}},
        )
        visible_at = len(frames)
        text_head = (
            b'event: content_block_delta\ndata: {"type":"content_block_delta","index":%d,'
            b'"delta":{"type":"text_delta","text":' % index
        )
        frames.extend(
            (reasoning + number, text_head + piece + b"}}\n\n")
            for number, piece in enumerate(
                engine.json_pieces(generation.visible_start, generation.visible_tokens), 1
            )
        )
        event(total, "content_block_stop", {"index": index})
    final_usage = anthropic_usage(generation, total)
    del final_usage["cache_creation"], final_usage["service_tier"]
    stop_reason = "max_tokens" if generation.truncated else "end_turn"
    event(
        total,
        "message_delta",
        {"delta": {"stop_reason": stop_reason, "stop_sequence": None}, "usage": final_usage},
    )
    event(total, "message_stop", {})
    return frames, visible_at
