"""A fault corpus and a byte-mutation fuzz: bad input is rejected with exact counts, good input is all kept.

The corpus runs through `clean_file` in a child process with a time limit, so a hang (the old fence regex
took hours on the fence bomb) fails the test instead of stalling the suite; in the child, as in a real run,
the cleaner's per-record timer is active.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter

import pytest

from vicuna_jax.data.clean import CleanConfig, Cleaner
from vicuna_jax.data.formats import DataFormatError, read_records

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BOM = b"\xef\xbb\xbf"


def good(k: int) -> dict:
    return {"id": f"good{k}", "conversations": [{"from": "human", "value": f"Question number {k}?"},
                                                {"from": "gpt", "value": f"Answer number {k}."}]}  # fmt: skip


def reply(rid: str, text) -> dict:
    return {"id": rid, "conversations": [{"from": "human", "value": f"Question for {rid}"},
                                         {"from": "gpt", "value": text}]}  # fmt: skip


def line(record) -> bytes:
    return json.dumps(record).encode()


DEEP_JSON = b'{"id": "deep", "conversations": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
TEXT_PARTS = {"id": "parts", "messages": [
    {"role": "user", "content": [{"type": "text", "text": "Describe"}, {"type": "text", "text": "this."}]},
    {"role": "assistant", "content": "A cat."}]}  # fmt: skip
IMAGE_PART = {"id": "image", "messages": [
    {"role": "user", "content": [{"type": "text", "text": "Describe"},
                                 {"type": "image_url", "image_url": {"url": "https://x/cat.png"}}]},
    {"role": "assistant", "content": "A cat."}]}  # fmt: skip
BAD = {  # one bad record of each kind, as a JSON line, and the reason it must be rejected for
    "fence_bomb": (line(reply("fence", "```x\n" * 200_000)), "too_large"),
    "deep_json": (DEEP_JSON, "too_deep"),
    "nested_divs": (line(reply("divs", "<div>" * 1000 + "x" + "</div>" * 1000)), "bad_html"),
    # Python refuses to convert integers over 4,300 digits (ValueError, not a JSON error): in any field
    "huge_int": (b'{"id": "big", "n": ' + b"9" * 5_000 + b', "conversations": []}', "number_too_long"),
    "huge_int_id": (b'{"id": -' + b"1" * 100_000 + b', "conversations": []}', "number_too_long"),
    "not_utf8": (line(reply("latin1", "caf\u00e9")).replace(b"\\u00e9", b"\xe9"), "not_utf8"),
    "image_part": (line(IMAGE_PART), "unsupported_content"),
    "malformed": (b'{"id": "oops", "conversations": [oops]}', "malformed_json"),
}


# Hostile but harmless: kept, and quickly (html.parser took seconds per record on these: quadratic).
HOSTILE_KEPT = {
    "html_parser_bomb": reply("slow", "<div>" + "<a " * 20_000),
    "html_quoted_bomb": reply("quoted", "<div>" + "<a x='>' " * 8_000),
}

NO_RECORDS = "no usable conversation: the file holds no records"


def corpus() -> dict[str, tuple[bytes, list[str], dict]]:
    """name -> (file bytes, ids that must be kept in order, exact reject counts or {"error": text})."""
    g = [line(good(k)) for k in range(12)]
    files = {
        "bom_array.json": (BOM + b"[\n" + b",\n".join(g[:3]) + b"\n]\n", ["good0", "good1", "good2"], {}),
        "bom.jsonl": (BOM + b"\n".join(g[:3]) + b"\n", ["good0", "good1", "good2"], {}),
        "text_parts.jsonl": (line(TEXT_PARTS) + b"\n" + g[0] + b"\n", ["parts", "good0"], {}),
        "empty.json": (b"", [], {"error": NO_RECORDS}),
        "empty_array.json": (b"[]", [], {"error": NO_RECORDS}),
        "bom_empty_array.json": (BOM + b"[ ]", [], {"error": NO_RECORDS}),
    }
    for name, (bad, reason) in BAD.items():  # each bad record between two good ones
        files[f"{name}.jsonl"] = (g[0] + b"\n" + bad + b"\n" + g[1] + b"\n", ["good0", "good1"], {reason: 1})
    for name, record in HOSTILE_KEPT.items():
        files[f"{name}.jsonl"] = (g[0] + b"\n" + line(record) + b"\n", ["good0", record["id"]], {})
    # all of them at once, in an array (with a BOM) and in JSONL, between good records
    mixed, ids = [g[0]], ["good0"]
    for k, (bad, _) in enumerate(BAD.values()):
        mixed += [bad, g[k + 1]]
        ids.append(f"good{k + 1}")
    for record in HOSTILE_KEPT.values():
        mixed.append(line(record))
        ids.append(record["id"])
    mixed += [line(TEXT_PARTS)]
    ids.append("parts")
    counts = dict(Counter(reason for _, reason in BAD.values()))
    files["everything.jsonl"] = (b"\n".join(mixed) + b"\n", ids, counts)
    files["everything.json"] = (BOM + b"[\n" + b",\n".join(mixed) + b"\n]", ids, counts)
    return files


DRIVER = """
import json, sys
from vicuna_jax.cli import UserError
from vicuna_jax.data.clean import CleanConfig, clean_file
results = {}
for path in sys.argv[1:]:
    try:
        config = CleanConfig(max_record_seconds=1)
        report = clean_file(path, path + ".out", config, rejects_path=path + ".rej")
        results[path] = {"kept": [json.loads(x)["id"] for x in open(path + ".out")],
                         "rejects": [json.loads(x) for x in open(path + ".rej")], "total": report.total}
    except UserError as e:
        results[path] = {"error": str(e)}
print(json.dumps(results))
"""


def test_fault_corpus_exact_rejects_and_nothing_good_lost(tmp_path):
    files = corpus()
    for name, (data, _, _) in files.items():
        (tmp_path / name).write_bytes(data)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-c", DRIVER, *(str(tmp_path / n) for n in files)], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for name, (_, want_ids, want) in files.items():
        got = results[str(tmp_path / name)]
        if "error" in want:
            assert got == {"error": f"{tmp_path / name}: {want['error']}"}, name
            continue
        assert "error" not in got and got["kept"] == want_ids, (name, got)
        assert Counter(r["reason"] for r in got["rejects"]) == want, name
        assert got["total"] == len(want_ids) + sum(want.values()), name
        for r in got["rejects"]:  # every reject says where it was and why
            assert r["where"].startswith(f"{tmp_path / name}:") and r["detail"], (name, r)


@pytest.mark.parametrize("seed", range(4))
def test_mutated_jsonl_lines_never_cost_the_untouched_ones(tmp_path, seed):
    rng = random.Random(seed)
    lines = [line(good(k)) for k in range(40)]
    mutated = set(rng.sample(range(40), 12))
    junk = [b"\xff", b"\xc3", b"\x00", b'"', b"\\", b"{", b"}", b"[", b"]", b",", BOM, b"\r", b"\xe2\x80\xa8"]
    for k in mutated:
        data = bytearray(lines[k])
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(data))
            op = rng.choice(["insert", "delete", "replace"])
            if op == "delete":
                del data[at]
            else:
                data[at : at + (op == "replace")] = rng.choice(junk)
        lines[k] = bytes(data)
    path = tmp_path / "fuzz.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    cleaner = Cleaner(CleanConfig(dedup=False))
    rejects: list = []
    kept = {r["id"] for r in cleaner(read_records(path), rejects)}
    assert {f"good{k}" for k in range(40) if k not in mutated} <= kept
    report = cleaner.report
    assert report.total == 40 and report.kept + sum(report.rejected.values()) == 40
    assert len(rejects) == sum(report.rejected.values())
    assert all(r["where"] == f"{path}:{int(r['where'].rsplit(':', 1)[1])}" for r in rejects)


@pytest.mark.parametrize("seed", range(40))
def test_mutated_json_arrays_fail_cleanly_or_account_for_every_record(tmp_path, seed):
    rng = random.Random(seed)
    data = bytearray(json.dumps([good(k) for k in range(8)], indent=1).encode())
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(data))
        junk = rng.choice([b"\xff", b'"', b"\\", b"{", b"}", b"[", b"]", b",", b""])
        data[at : at + rng.randint(0, 1)] = junk
    path = tmp_path / "fuzz.json"
    path.write_bytes(bytes(data))
    cleaner = Cleaner(CleanConfig(dedup=False))
    try:
        kept = list(cleaner(read_records(path), []))
    except DataFormatError as e:  # the array's framing is broken: refused as a whole, with file:line
        assert str(e).startswith(f"{path}:") and "malformed JSON array" in str(e)
        return
    report = cleaner.report
    assert report.kept == len(kept) and report.kept + sum(report.rejected.values()) == report.total


def _raw_with_a_huge_int(tmp_path, n_good: int) -> str:
    """The first `n_good` bundled sample conversations as JSONL, with a record holding a 5,000-digit integer
    after the first one."""
    from vicuna_jax.data.prepare import bundled_sample_path

    with open(bundled_sample_path(), encoding="utf-8") as f:
        sample = json.load(f)[:n_good]
    lines = [line(r) for r in sample]
    lines.insert(1, b'{"id": "big", "score": ' + b"7" * 5_000 + b', "conversations": []}')
    path = tmp_path / "raw.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return str(path)


def test_prepare_rejects_only_the_record_python_cannot_read(tmp_path):
    from vicuna_jax.data.prepare import prepare_dataset
    from vicuna_jax.data.store import PreparedDataset
    from vicuna_jax.data.tokenizer import bundled_tokenizer_path

    raw = _raw_with_a_huge_int(tmp_path, 20)
    out = prepare_dataset(raw, str(tmp_path / "ds"), tokenizer=bundled_tokenizer_path(), max_length=256,
                          validation_fraction=0.0, verbose=False, num_workers=1)
    report = PreparedDataset(out).meta["clean_report"]
    assert report["total"] == 21 and report["rejected"] == {"number_too_long": 1}
    rejects = [json.loads(x) for x in open(os.path.join(out, "rejects.jsonl"))]
    assert rejects[0]["where"] == f"{raw}:2" and "5,000 digits" in rejects[0]["detail"]


def test_training_on_raw_data_with_a_record_python_cannot_read(tmp_path):
    from tiny_run import tiny_config

    from vicuna_jax.train import train

    raw = _raw_with_a_huge_int(tmp_path, 60)
    c = tiny_config({"model": "tiny", "model_overrides.hidden_size": 32,
                     "model_overrides.intermediate_size": 64, "model_overrides.num_layers": 1,
                     "model_overrides.num_heads": 2,
                     "model_overrides.num_kv_heads": 1, "seq_len": 128, "batch_size": 8, "total_steps": 1,
                     "checkpoint_every": 1, "eval_every": 0, "export_hf_at_end": False, "dtype": "float32",
                     "remat_policy": "none", "loss_chunk_size": 0, "data.path": raw})
    summary = train(c, str(tmp_path / "w"))
    assert summary["final_step"] == 1
    meta = json.load(open(tmp_path / "w" / "data" / "meta.json"))
    assert meta["clean_report"]["rejected"] == {"number_too_long": 1}


# ----------------------------------------------------------------------------------- chat templates
# Runaway chat templates (a model directory's chat_template is code): each must end within its budget with
# one error naming the template, whatever it asks of the CPU or memory. name -> (template, words the error
# must hold).
_LOOPS = "{% for i in range(100000) %}{% for j in range(100000) %}BODY{% endfor %}{% endfor %}"
TEMPLATE_ATTACKS = {
    "nested_range_loops": (_LOOPS.replace("BODY", ""), "s of CPU time"),
    "nested_string_loops": ("{% set s = 'a' * 100000 %}{% for i in s %}{% for j in s %}{% endfor %}"
                            "{% endfor %}", "s of CPU time"),
    "loops_in_a_filter_block": ("{% filter upper %}" + _LOOPS.replace("BODY", "x") + "{% endfilter %}",
                                "budget"),
    "string_times_1e10": ("{{ 'a' * 10**10 }}", "repetition (*)"),
    "list_times_1e10": ("{{ ([1] * 100000) * 100000 }}", "repetition (*)"),
    "range_1e9": ("{% for i in range(10**9) %}{{ i }}{% endfor %}", "range() of more than 100,000"),
    "range_1e30": ("{{ range(10**30)|list }}", "range() of more than 100,000"),
    "recursive_macro": ("{% macro f(n) %}{{ f(n + 1) }}{% endmacro %}{{ f(0) }}", "recursion too deep"),
    "recursive_loop": ("{% for x in [1] recursive %}{{ loop([1]) }}{% endfor %}", "recursion too deep"),
    "doubling_macro": ("{% macro f(n) %}{% if n %}{{ f(n - 1) }}{{ f(n - 1) }}{% else %}xxxxxxxx{% endif %}"
                       "{% endmacro %}{{ f(40) }}", "output passed the size budget"),
    "literal_in_loops": ("{% set x %}" + _LOOPS.replace("BODY", "L" * 1000) + "{% endset %}",
                         "output passed the size budget"),
    "doubling_concat": ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
                        "{% endfor %}", "concatenation (~)"),
    "doubling_plus": ("{% set ns = namespace(s='ab') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
                      "{% endfor %}", "concatenation (+)"),
    "power": ("{{ 2 ** (10 ** 9) }}", "power of over 4096 bits"),
    "squaring": ("{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}"
                 "{% endfor %}", "product of over 4096 bits"),
    "center_filter": ("{{ 'a'|center(10000000000) }}", "center width"),
    "ljust_method": ("{{ 'a'.ljust(10**10) }}", "ljust() width"),
    "replace_method": ("{{ ('a' * 1000000).replace('a', 'b' * 1000000) }}", "replace would hold"),
    "replace_filter": ("{{ ('a' * 1000000)|replace('a', 'b' * 1000000) }}", "replace would hold"),
    "join_method": ("{{ ('b' * 1000000).join('a' * 1000000) }}", "join"),
    "join_filter": ("{{ ('a' * 1000000)|join('b' * 1000000) }}", "join"),
    "format_width": ("{{ '{:>10000000000}'.format('a') }}", "width in a format string"),
    "format_nested_width": ("{{ '{:{}}'.format('a', 10**10) }}", "width in a format string"),
    "percent_width": ("{{ '%10000000000s' % 'a' }}", "width in a % format"),
    "percent_star": ("{{ '%*s' % (10**10, 'a') }}", "width in a % format"),
    "format_filter": ("{{ '%10000000000s'|format('a') }}", "width in a % format"),
    "indent": ("{{ ('a\n' * 500000)|indent(1000000) }}", "indent"),
    "batch_fill": ("{{ [1]|batch(10**10, 'x')|list }}", "batch count"),
    "expandtabs": ("{{ ('\t' * 1000000).expandtabs(1000000) }}", "expandtabs"),
    "translate": ("{{ ('a' * 1000000).translate({97: 'b' * 1000000}) }}", "translate"),
    "wordwrap": ("{{ ('a ' * 500000)|wordwrap(1, wrapstring='x' * 1000000) }}", "wordwrap"),
    "tojson_indent": ("{{ (range(100000)|list)|tojson(indent=10**6) }}", "tojson indent"),
    "sum_of_lists": ("{{ ([[1]] * 100000)|sum(start=[]) }}", "sum() of list"),
    "text_of_shared_strings": ("{{ ['a' * 1000000] * 100000 }}", "would write over"),
    "tojson_of_shared_strings": ("{{ (['a' * 1000000] * 100000)|tojson }}", "would write over"),
    "sort_of_long_strings": ("{{ (['a' * 1000000] * 100000)|sort|length }}", "work budget"),
    "max_of_long_strings": ("{{ (['a' * 1000000] * 100000)|max|length }}", "work budget"),
    "many_wide_values": ("{{ (range(100000)|list)|map('center', 100000)|join }}", "work budget"),
    "deep_parentheses": ("{{ " + "(" * 100000 + "1" + ")" * 100000 + " }}", "does not compile"),
    "include": ("{% include 'x' %}", "no loader"),
    "division_by_zero": ("{{ 1 / 0 }}", "ZeroDivisionError"),
    "lipsum": ("{{ lipsum(10**7) }}", "'lipsum' is undefined"),
}

TEMPLATE_DRIVER = """
import inspect, json, resource, sys, time
resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))  # a memory bomb fails here, not the machine
from vicuna_jax.data.chat_template import render
named = {"origin": "attack.jinja"} if "origin" in inspect.signature(render).parameters else {}
results = {}
for name, source in json.loads(sys.stdin.read()).items():
    t0 = time.monotonic()
    try:
        render(source, [{"role": "user", "content": "hi"}], {}, **named)
        results[name] = ("no error", "", time.monotonic() - t0)
    except BaseException as e:
        results[name] = (type(e).__name__, str(e), time.monotonic() - t0)
print(json.dumps(results))
"""


def test_runaway_chat_templates_end_within_their_budget_naming_the_template():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")]))
    sources = {name: source for name, (source, _) in TEMPLATE_ATTACKS.items()}
    proc = subprocess.run([sys.executable, "-c", TEMPLATE_DRIVER], input=json.dumps(sources), env=env,
                          capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout)
    for name, (_, words) in TEMPLATE_ATTACKS.items():
        kind, message, seconds = results[name]
        assert "\n" not in message and words in message, (name, kind, message)
        if name != "lipsum":  # jinja2's own UndefinedError names the variable
            assert message.startswith("chat template attack.jinja"), (name, message)
            assert kind in ("TemplateLimitError", "TemplateRenderError", "ChatTemplateError"), (name, kind)
        assert seconds < 10, (name, seconds)  # 1 s of CPU at most; wall time on a loaded machine
