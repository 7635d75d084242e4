"""Write data/demo/conversations.jsonl: the project's own multi-turn set, made from its demo instructions.

    python scripts/demo_conversations.py          # rewrites the file (tests check it equals this script's output)

The 240 instructions of data/demo/instructions.jsonl, in file order, chained two at a time into 120 two-exchange
conversations in the chat ``messages`` layout: user (instruction i, a blank line and its input when it has one),
assistant (its output), user (instruction i + 1 likewise), assistant (its output). Every third conversation opens
with a system turn, so templates with and without a system role are exercised. The second reply is the one sampled
and scored (ROUGE-L); both are supervised under ``data.supervised_turns: all``.
"""

from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "data" / "demo" / "instructions.jsonl"
TARGET = ROOT / "data" / "demo" / "conversations.jsonl"
SYSTEM = "You are a helpful assistant. Answer each request directly and briefly."


def user_turn(row: dict) -> dict:
    content = f"{row['instruction']}\n\n{row['input']}" if row["input"] else row["instruction"]
    return {"role": "user", "content": content}


def conversations(rows: list[dict]) -> list[dict]:
    out = []
    for index in range(0, len(rows) - 1, 2):
        first, second = rows[index], rows[index + 1]
        messages = [user_turn(first), {"role": "assistant", "content": first["output"]},
                    user_turn(second), {"role": "assistant", "content": second["output"]}]  # fmt: skip
        if (index // 2) % 3 == 0:
            messages.insert(0, {"role": "system", "content": SYSTEM})
        out.append({"messages": messages, "category": second["category"]})
    return out


def render() -> str:
    rows = [json.loads(line) for line in SOURCE.read_text(encoding="utf-8").splitlines() if line.strip()]
    return "".join(json.dumps(c, ensure_ascii=False) + "\n" for c in conversations(rows))


if __name__ == "__main__":
    TARGET.write_text(render(), encoding="utf-8")
    print(f"wrote {TARGET} ({len(render().splitlines())} conversations)")
