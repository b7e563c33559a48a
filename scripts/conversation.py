#!/usr/bin/env python3
"""Long-conversation request bodies for the cost-per-byte measurements.

Agents and chat front-ends resend the whole conversation every turn: a system prompt,
user turns, answers with code, tool calls and tool results that are whole files. That
history, not the new prompt, is what a request's size grows with, so `scripts/instr`
and `scripts/bench` send bodies built here: about BYTES of such history (JSON strings
full of newlines, quotes, backslashes and some non-ASCII, as real ones are) before a
one-line prompt, in the OpenAI or the Ollama dialect. The text is the same for the
same arguments (a fixed seed), so runs compare.

    scripts/conversation.py --dialect openai --history 100000 --model oa/mock [--stream]
"""

import argparse
import json
import random
import sys

PROSE = [
    "The failing test only shows up when the body is larger than the read buffer, so the "
    "decoder must be seeing a line cut in two.",
    "I changed the retry loop to stop after the first 4xx — a client error will not get "
    "better on another backend.",
    "Can you check why `cargo test --test gateway` hangs on the streaming case?",
    "Here is what I see in the log after the upgrade; the request id is the same in both lines.",
    "That works, thanks. Next: the config loader should say which file it read.",
    "The naïve fix would be to buffer the whole answer, but that breaks streaming for "
    "clients that show tokens as they arrive.",
    "Let me look at the handler first, then the tests that cover it.",
    "Summary: the parser keeps unknown fields, the renderer writes them back in order, "
    "and the round-trip test checks every field.",
    "Ünïcödé names and emoji 🦀 in file paths must survive the round trip unchanged.",
]

CODE = [
    "fn parse(line: &str) -> Result<Event, Error> {",
    "    let data = line.strip_prefix(\"data: \").ok_or(Error::NotSse)?;",
    "    if data == \"[DONE]\" {",
    "        return Ok(Event::Done);",
    "    }",
    "    serde_json::from_str(data).map_err(|e| Error::Json(e.to_string()))",
    "}",
    "",
    "#[test]",
    "fn keeps_escapes() {",
    "    let text = \"tab\\there, quote \\\" and backslash \\\\ end\";",
    "    assert_eq!(round_trip(text), text);",
    "}",
    "def load(path):",
    "    with open(path, encoding=\"utf-8\") as f:",
    "        return [json.loads(line) for line in f if line.strip()]",
    "\tif err != nil {",
    "\t\treturn fmt.Errorf(\"read %q: %w\", path, err)",
    "\t}",
    "const url = `${base}/v1/chat/completions`; // \"stream\": true",
]

TOOLS = ["read_file", "run_shell", "search_code", "apply_patch"]


def paragraph(rng, size):
    """About `size` bytes of prose, some of it followed by a fenced code block."""
    out = []
    length = 0
    while length < size:
        if rng.random() < 0.45:
            lines = rng.sample(CODE, k=min(len(CODE), rng.randint(4, 12)))
            block = "```\n" + "\n".join(lines) + "\n```"
        else:
            block = " ".join(rng.sample(PROSE, k=rng.randint(1, 3)))
        out.append(block)
        length += len(block) + 2
    return "\n\n".join(out)


def file_contents(rng, size):
    """About `size` bytes of a source file, as a tool result carries it."""
    lines = []
    length = 0
    while length < size:
        line = rng.choice(CODE)
        lines.append(line)
        length += len(line) + 1
    return "\n".join(lines) + "\n"


def history(rng, dialect, size):
    """Messages whose JSON takes about `size` bytes."""
    messages = []
    used = 0
    if size <= 0:
        return messages
    turn = 0
    while used < size:
        left = size - used
        if turn == 0:
            messages.append({"role": "system", "content": paragraph(rng, min(left, 600))})
        elif turn % 4 == 1:
            messages.append({"role": "user", "content": paragraph(rng, min(left, rng.randint(80, 900)))})
        elif turn % 4 == 2:
            call = {"name": rng.choice(TOOLS), "arguments": {"path": f"src/part{turn}.rs", "limit": 400}}
            result = file_contents(rng, min(left, rng.randint(300, 4000)))
            if dialect == "openai":
                call_id = f"call_{turn:06d}"
                messages.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": call_id, "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]})
                messages.append({"role": "tool", "tool_call_id": call_id, "content": result})
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [{"function": call}]})
                messages.append({"role": "tool", "tool_name": call["name"], "content": result})
        else:
            messages.append({"role": "assistant", "content": paragraph(rng, min(left, rng.randint(200, 2500)))})
        used = len(json.dumps(messages, ensure_ascii=False).encode())
        turn += 1
    return messages


def body(dialect, history_bytes, model, stream, seed=11):
    rng = random.Random(seed)
    messages = history(rng, dialect, history_bytes)
    messages.append({"role": "user", "content": "Given all that, what should I change first? One line."})
    return {"model": model, "stream": stream, "messages": messages}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dialect", choices=["openai", "ollama"], default="openai")
    parser.add_argument("--history", type=int, default=100_000, help="bytes of history")
    parser.add_argument("--model", default="mock-model")
    parser.add_argument("--stream", action="store_true")
    args = parser.parse_args()
    sys.stdout.write(json.dumps(body(args.dialect, args.history, args.model, args.stream),
                                ensure_ascii=False))


if __name__ == "__main__":
    main()
