"""Write the bundled ShareGPT-format sample (`vicuna_jax/assets/sharegpt_sample.json`), deterministically.

Every conversation is composed here from our own phrase material. Replies follow regular patterns (worked
arithmetic, fixed answer layouts, code in several languages), so a tiny model visibly learns them in a few
hundred steps. About a fifth of the assistant replies are rendered the way ShareGPT pages were scraped (HTML
with "Copy code" buttons and "1 / 2" regenerate counters) for the cleaner, and a handful of deliberately bad
records exercise every reject reason.

    python scripts/make_sample_data.py [--output=vicuna_jax/assets/sharegpt_sample.json] [--seed=0]
"""

from __future__ import annotations

import argparse
import html
import json
import os
import random
import re

from sample_material import (
    CODE,
    CONCEPTS,
    FOREIGN,
    SMALL_TALK,
    TIPS,
    TRANSLATIONS,
    WORDS,
)

HUMAN, GPT = "human", "gpt"


def turn(who: str, text: str) -> dict:
    return {"from": who, "value": text}


# ---------------------------------------------------------------------------------------------- kinds
def arithmetic(rng: random.Random) -> list[dict]:
    a, b = rng.randint(2, 999), rng.randint(2, 99)
    op = rng.choice(["+", "-", "*"])
    result = {"+": a + b, "-": a - b, "*": a * b}[op]
    name = {"+": "add", "-": "subtract", "*": "multiply"}[op]
    q = rng.choice(
        [f"What is {a} {op} {b}?", f"Can you compute {a} {op} {b} for me?", f"Calculate {a} {op} {b}."]
    )
    turns = [
        turn(HUMAN, q),
        turn(GPT, f"To {name} the numbers:\n\n{a} {op} {b} = {result}\n\nSo the answer is **{result}**."),
    ]
    for _ in range(rng.randint(0, 2)):
        c = rng.randint(2, 12)
        op2 = rng.choice(["+", "*"])
        new = result + c if op2 == "+" else result * c
        verb = "add" if op2 == "+" else "multiply it by"
        turns += [
            turn(HUMAN, f"Now {verb} {c}."),
            turn(
                GPT, f"Starting from {result}:\n\n{result} {op2} {c} = {new}\n\nThe new result is **{new}**."
            ),
        ]
        result = new
    return turns


def division(rng: random.Random) -> list[dict]:
    b = rng.randint(2, 12)
    a = rng.randint(b, 500)
    q, r = divmod(a, b)
    text = (
        f"Dividing {a} by {b}:\n\n{a} = {b} × {q} + {r}\n\nSo {a} ÷ {b} = **{q}** with remainder **{r}**."
        if r
        else f"Dividing {a} by {b}:\n\n{a} = {b} × {q}\n\nSo {a} ÷ {b} = **{q}** exactly."
    )
    return [turn(HUMAN, f"What is {a} divided by {b}?"), turn(GPT, text)]


def word_task(rng: random.Random) -> list[dict]:
    w = rng.choice(WORDS)
    kind = rng.randrange(4)
    if kind == 0:
        return [
            turn(HUMAN, f'Reverse the word "{w}".'),
            turn(GPT, f'The word "{w}" reversed is "{w[::-1]}".'),
        ]
    if kind == 1:
        return [
            turn(HUMAN, f'Write "{w}" in capital letters.'),
            turn(GPT, f"In capital letters: {w.upper()}"),
        ]
    if kind == 2:
        n = sum(ch in "aeiou" for ch in w)
        return [
            turn(HUMAN, f'How many vowels are in "{w}"?'),
            turn(
                GPT,
                f'The word "{w}" has {n} vowel{"s" if n != 1 else ""}: '
                + ", ".join(ch for ch in w if ch in "aeiou")
                + ".",
            ),
        ]
    ws = rng.sample(WORDS, rng.randint(3, 6))
    return [
        turn(HUMAN, "Sort these words alphabetically: " + ", ".join(ws)),
        turn(
            GPT,
            "Here they are in alphabetical order:\n\n"
            + "\n".join(f"{i}. {x}" for i, x in enumerate(sorted(ws), 1)),
        ),
    ]


def code_task(rng: random.Random) -> list[dict]:
    task = rng.choice(sorted(CODE))
    spec = CODE[task]
    langs = rng.sample(sorted(spec["code"]), k=min(len(spec["code"]), rng.randint(1, 3)))
    lang = langs[0]
    turns = [
        turn(HUMAN, f"Write a {lang} function that {spec['ask']}."),
        turn(
            GPT,
            f"Here is a {lang} function that {spec['ask']}:\n\n```{lang}\n{spec['code'][lang]}\n```\n\n"
            f"{spec['explain']}",
        ),
    ]
    for other in langs[1:]:
        turns += [
            turn(HUMAN, f"Can you show the same in {other}?"),
            turn(GPT, f"Sure, the same function in {other}:\n\n```{other}\n{spec['code'][other]}\n```"),
        ]
    if rng.random() < 0.5:
        turns += [
            turn(HUMAN, "What is the time complexity?"),
            turn(GPT, f"The time complexity is {spec['complexity']}."),
        ]
    return turns


def explain(rng: random.Random) -> list[dict]:
    name = rng.choice(sorted(CONCEPTS))
    c = CONCEPTS[name]
    q = rng.choice([f"Explain {name} in simple terms.", f"What is {name}?", f"Can you tell me about {name}?"])
    body = f"**{name[0].upper() + name[1:]}** {c['what']}\n\nKey points:\n" + "\n".join(
        f"{i}. {p}" for i, p in enumerate(c["points"], 1)
    )
    turns = [turn(HUMAN, q), turn(GPT, body)]
    if rng.random() < 0.6:
        turns += [
            turn(HUMAN, rng.choice(["Give me an example.", "Can you give an example?"])),
            turn(GPT, f"For example, {c['example']}"),
        ]
    if rng.random() < 0.3:
        turns += [
            turn(HUMAN, "Summarize that in one sentence."),
            turn(GPT, f"In one sentence: {name} {c['what'].split('. ')[0].rstrip('.')}."),
        ]
    return turns


def tips(rng: random.Random) -> list[dict]:
    topic = rng.choice(sorted(TIPS))
    n = rng.randint(3, min(6, len(TIPS[topic])))
    chosen = rng.sample(TIPS[topic], n)
    turns = [
        turn(HUMAN, f"Give me {n} tips for {topic}."),
        turn(
            GPT,
            f"Here are {n} tips for {topic}:\n\n" + "\n".join(f"{i}. {t}" for i, t in enumerate(chosen, 1)),
        ),
    ]
    if rng.random() < 0.4:
        turns += [
            turn(HUMAN, "Which one is the most important?"),
            turn(GPT, f"If you only pick one, start with the first: {chosen[0][0].lower() + chosen[0][1:]}"),
        ]
    return turns


def conversion(rng: random.Random) -> list[dict]:
    if rng.random() < 0.5:
        c = rng.randint(-30, 45)
        f = c * 9 / 5 + 32
        return [
            turn(HUMAN, f"Convert {c} degrees Celsius to Fahrenheit."),
            turn(GPT, f"Use F = C × 9/5 + 32:\n\n{c} × 9/5 + 32 = {f:g}\n\nSo {c} °C is **{f:g} °F**."),
        ]
    km = rng.randint(1, 200)
    return [
        turn(HUMAN, f"How many miles is {km} km?"),
        turn(
            GPT,
            f"One kilometre is about 0.621 miles:\n\n{km} × 0.621 = {km * 0.621:.1f}\n\n"
            f"So {km} km is about **{km * 0.621:.1f} miles**.",
        ),
    ]


def small_talk(rng: random.Random) -> list[dict]:
    pairs = rng.sample(SMALL_TALK, rng.randint(1, 3))
    return [t for q, a in pairs for t in (turn(HUMAN, q), turn(GPT, a))]


def foreign(rng: random.Random) -> list[dict]:
    if rng.random() < 0.4:
        phrase, lang, out = rng.choice(TRANSLATIONS)
        return [
            turn(HUMAN, f'How do you say "{phrase}" in {lang}?'),
            turn(GPT, f'In {lang}, "{phrase}" is **{out}**.'),
        ]
    lang = rng.choice(sorted(FOREIGN))
    spec = FOREIGN[lang]
    turns = [
        turn(HUMAN, q) if i % 2 == 0 else turn(GPT, q)
        for i, q in enumerate(x for pair in rng.sample(spec["chat"], rng.randint(1, 2)) for x in pair)
    ]
    a, b = rng.randint(2, 50), rng.randint(2, 50)
    turns += [turn(HUMAN, spec["sum_q"].format(a=a, b=b)), turn(GPT, spec["sum_a"].format(a=a, b=b, c=a + b))]
    return turns


def long_session(rng: random.Random) -> list[dict]:
    """Many exchanges in one record: material for the splitter."""
    turns: list[dict] = []
    for _ in range(rng.randint(6, 10)):
        turns += rng.choice([code_task, explain, arithmetic, tips])(rng)[:2]
    return turns


KINDS = [
    (arithmetic, 14),
    (division, 5),
    (word_task, 10),
    (code_task, 16),
    (explain, 16),
    (tips, 10),
    (conversion, 6),
    (small_talk, 7),
    (foreign, 12),
    (long_session, 4),
]


# ----------------------------------------------------------------------------- ShareGPT page artefacts
def to_sharegpt_html(md: str, rng: random.Random) -> str:
    """Render our small Markdown subset the way scraped ShareGPT pages stored replies."""
    out = []
    for chunk in re.split(r"(```\w*\n.*?\n```)", md, flags=re.S):
        fence = re.fullmatch(r"```(\w*)\n(.*)\n```", chunk, flags=re.S)
        if fence:
            lang, code = fence.groups()
            out.append(
                '<pre><div class="bg-black mb-4 rounded-md"><div class="flex items-center relative '
                "text-gray-200 "
                f'bg-gray-800 px-4 py-2 text-xs font-sans"><span class="">{lang}</span><button class="flex '
                'ml-auto gap-2"><svg stroke="currentColor" fill="none" height="1em" width="1em"></svg>'
                "Copy code"
                '</button></div><div class="p-4 overflow-y-auto"><code class="!whitespace-pre hljs '
                f'language-{lang}">{html.escape(code)}</code></div></div></pre>'
            )
            continue
        for block in (b.strip("\n") for b in chunk.split("\n\n")):
            if not block:
                continue
            if re.match(r"^\d+\. ", block):
                items = [re.sub(r"^\d+\. ", "", x) for x in block.split("\n")]
                out.append("<ol>" + "".join(f"<li>{_inline(x)}</li>" for x in items) + "</ol>")
            else:
                out.append(f"<p>{_inline(block)}</p>")
    body = "".join(out)
    counter = f"{rng.randint(1, 3)} / {rng.randint(3, 4)}" if rng.random() < 0.3 else ""
    return counter + f'<div class="markdown prose w-full break-words dark:prose-invert light">{body}</div>'


def _inline(text: str) -> str:
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return text.replace("\n", "<br>")


# ------------------------------------------------------------------------------------ bad records
def bad_records(rng: random.Random, good: list[dict]) -> list[dict]:
    """One or more records for each reason the cleaner rejects (see vicuna_jax/data/clean.py)."""
    g = [
        turn(HUMAN, "What is 2 + 2?"),
        turn(GPT, "To add the numbers:\n\n2 + 2 = 4\n\nSo the answer is **4**."),
    ]
    return [
        {"id": "bad_role", "conversations": [turn("robot", "beep"), turn(GPT, "Hello! How can I help?")]},
        {
            "id": "bad_empty_turn",
            "conversations": [turn(HUMAN, "   "), turn(GPT, "Could you say that again?")],
        },
        {
            "id": "bad_not_alternating",
            "conversations": [turn(HUMAN, "Hi"), turn(HUMAN, "Are you there?"), turn(GPT, "Yes, I am here.")],
        },
        {"id": "bad_only_assistant", "conversations": [turn(GPT, "I am the only speaker here.")]},
        {"id": "bad_no_conversations", "text": "this record has no conversations key"},
        {
            "id": "bad_value_type",
            "conversations": [turn(HUMAN, "Count to three."), {"from": GPT, "value": 123}],
        },
        {
            "id": "bad_blocked",
            "conversations": [
                turn(HUMAN, "Do you have feelings?"),
                turn(GPT, "As an AI language model, I do not have feelings."),
            ],
        },
        {"id": "bad_digits", "conversations": [turn(HUMAN, "Print a long number."), turn(GPT, "1" * 64)]},
        {
            "id": "bad_nonprintable",
            "conversations": [turn(HUMAN, "Hello\x00\x07\x1b"), turn(GPT, "\x00\x01\x02\x03")],
        },
        {"id": good[0]["id"], "conversations": g},  # duplicate id
        {"id": "bad_duplicate_exchange", "conversations": [dict(t) for t in good[1]["conversations"]]},
        # Fixable: a leading assistant turn and a trailing user turn are dropped, the rest is kept.
        {
            "id": "fix_leading_gpt",
            "conversations": [turn(GPT, "Welcome back!"), *g, turn(HUMAN, "Thanks, bye")],
        },
    ]


def build(seed: int, n: int) -> list[dict]:
    rng = random.Random(seed)
    kinds = [k for k, w in KINDS for _ in range(w)]
    records = []
    seen = set()
    for i in range(n):
        convo = rng.choice(kinds)(rng)
        while (convo[0]["value"], convo[1]["value"]) in seen:  # distinct first exchanges: dedup must not bite
            convo = rng.choice(kinds)(rng)
        seen.add((convo[0]["value"], convo[1]["value"]))
        r = rng.random()
        if r < 0.2:
            convo = [
                turn(t["from"], to_sharegpt_html(t["value"], rng)) if t["from"] == GPT else t for t in convo
            ]
        elif r < 0.3:  # text-scraped pages kept the button label glued to the fence
            convo = [turn(t["from"], re.sub(r"```(\w+)\n", r"```\1Copy code\n", t["value"])) for t in convo]
        if rng.random() < 0.05:
            convo = [turn("system", "You are a concise assistant."), *convo]
        records.append({"id": f"sample_{i:04d}", "conversations": convo})
    bad = bad_records(rng, records)
    for rec in bad:
        records.insert(rng.randrange(len(records) + 1), rec)
    return records


def main() -> None:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--output", default=os.path.join(root, "vicuna_jax", "assets", "sharegpt_sample.json"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--num_conversations", type=int, default=1000)
    args = ap.parse_args()
    records = build(args.seed, args.num_conversations)
    with open(args.output, "w", encoding="utf-8") as f:
        json.dump(records, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print(f"wrote {len(records)} records, {os.path.getsize(args.output) / 1e6:.2f} MB -> {args.output}")


if __name__ == "__main__":
    main()
