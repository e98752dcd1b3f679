"""Load test of `kqa serve`: latency percentiles, throughput, errors and server memory under concurrent
requests, with micro-batching on (`--batch-size`) and off (batch size 1) in the same run.

Two server processes are started on 127.0.0.1 (loopback only), one per mode, on the same model; the
cells (concurrency × mode) run interleaved, unbatched first at each concurrency, so that a drift of
the machine's speed touches both modes alike. Each cell sends `--requests` POST /v1/answer requests
from `--concurrency` client threads (one keep-alive connection each) or stops after `--max-seconds`.
Questions are real (question, short context) pairs from the data directory, cycled.

- errors: any response that is not a 200 with answers (must be 0),
- wrong answers: `--tiny` (a model whose answers are known by construction): answers that differ
  from the known one; a real model: answers whose text or offsets differ from the answer the
  unbatched server gave the same question at concurrency 1 (micro-batching must not change answers),
- memory: VmRSS / VmHWM of each server process from /proc/PID/status, when it is ready (before any
  request) and after the last cell,
- batch: mean questions per model call during the cell (from the server's /health counters).

    python benchmarks/bench_server.py --out results.json          # outputs/offline-e5-small/best
    python benchmarks/bench_server.py --tiny --requests 50 --concurrency 1 4
    python benchmarks/bench_server.py --url http://127.0.0.1:8000  # a running server: its own mode only

Soak (`--soak-seconds S`): one micro-batched server, `--concurrency` (default 8) clients for S
seconds sending a mix of good requests (questions, batches of four) and every kind of bad or tricky
one (not JSON, lone surrogates, 20,000 unknown fields, 100,000 empty rows, a 20 MB chunked body, a
body just under the limit, …), each of which must get its documented status; the server's RSS is
sampled every `--sample-seconds`; it has levelled off when its median over the last quarter of the
run is at most `--level-off-mib` above its median over the second quarter.

    python benchmarks/bench_server.py --soak-seconds 600 --concurrency 8 --out soak.json
"""

from __future__ import annotations

import argparse
import http.client
import json
import socket
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# The benchmark folder (for `common`) and the repository root (for `kqa`, when it is not installed).
sys.path[:0] = [str(Path(__file__).resolve().parent), str(Path(__file__).resolve().parents[1])]

import common  # noqa: E402

DEFAULT_MODEL = common.REPO_ROOT / "outputs" / "offline-e5-small" / "best"
MODES = ("unbatched", "batched")


# --------------------------------------------------------------------------------------------------
# Inputs and the tiny model
# --------------------------------------------------------------------------------------------------


def short_pairs(data_dir: Path, chars: tuple[int, int], limit: int) -> list[dict]:
    """(question, context) pairs whose context has `chars[0]`-`chars[1]` characters, read with the json
    module (the client process stays light)."""
    pairs = []
    for path in common.squad_files(data_dir):
        for article in json.loads(path.read_text(encoding="utf-8-sig"))["data"]:
            for paragraph in article["paragraphs"]:
                if not chars[0] <= len(paragraph["context"]) <= chars[1]:
                    continue
                for qa in paragraph["qas"]:
                    pairs.append({"question": qa["question"], "context": paragraph["context"]})
    if not pairs:
        raise SystemExit(f"{data_dir}: no question has a context of {chars[0]}-{chars[1]} characters")
    return pairs[:limit]


MARKED_SPANS = {"부산": ("부", "##산"), "영국": ("영", "##국"), "반포": ("반", "##포")}


def build_tiny_model(work: Path) -> tuple[Path, list[dict]]:
    """A `token_scoring_model` that answers each Korean example with its one marked span; the pairs
    carry that answer (text, start, end) as `expected`."""
    from kqa.testing import KOREAN_EXAMPLES, build_char_tokenizer, token_scoring_model

    texts = [ex["context"] for ex in KOREAN_EXAMPLES] + [ex["question"] for ex in KOREAN_EXAMPLES]
    tokenizer = build_char_tokenizer(texts, save_dir=work / "tokenizer")
    model = token_scoring_model(
        tokenizer, {s: 8.0 for s, _ in MARKED_SPANS.values()}, {e: 8.0 for _, e in MARKED_SPANS.values()}
    )
    model_dir = work / "tiny-model"
    model.save_pretrained(
        model_dir, tokenizer=tokenizer, kqa_config={"max_seq_length": 64, "doc_stride": 16, "max_query_length": 16}
    )
    pairs = []
    for ex in KOREAN_EXAMPLES:
        (text,) = [s for s in MARKED_SPANS if s in ex["context"]]
        start = ex["context"].index(text)
        pairs.append(
            {"question": ex["question"], "context": ex["context"], "expected": [text, start, start + len(text)]}
        )
    return model_dir, pairs


# --------------------------------------------------------------------------------------------------
# Client
# --------------------------------------------------------------------------------------------------


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as response:
        return json.loads(response.read().decode("utf-8"))


def proc_memory(pid: int | None, url: str) -> dict:
    """VmRSS / VmHWM (KiB) from /proc/PID/status for a local server; from /health otherwise."""
    if pid is not None:
        values = {}
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("VmRSS:", "VmHWM:")):
                values["rss_kib" if line.startswith("VmRSS") else "peak_rss_kib"] = int(line.split()[1])
        return values
    return get_json(url + "/health").get("memory", {})


def run_cell(
    url: str, pairs: list[dict], *, requests: int, concurrency: int, max_seconds: float, reference: dict[int, list]
) -> dict:
    """`requests` POST /v1/answer from `concurrency` threads (or until `max_seconds`): latencies, errors,
    answers that differ from `reference` (pair index → [text, start, end]; filled where empty)."""
    parsed = urllib.parse.urlsplit(url)
    bodies = [
        json.dumps({"question": p["question"], "context": p["context"]}, ensure_ascii=False).encode("utf-8")
        for p in pairs
    ]
    lock = threading.Lock()
    state = {"next": 0, "errors": 0, "wrong": 0, "error_examples": []}
    latencies: list[float] = []
    deadline = time.perf_counter() + max_seconds

    def worker() -> None:
        conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
        while True:
            with lock:
                i = state["next"]
                if i >= requests or time.perf_counter() > deadline:
                    break
                state["next"] += 1
            k = i % len(pairs)
            t0 = time.perf_counter()
            try:
                conn.request("POST", "/v1/answer", body=bodies[k], headers={"Content-Type": "application/json"})
                response = conn.getresponse()
                payload = response.read()
                elapsed = time.perf_counter() - t0
                ok = response.status == 200
                answer = json.loads(payload)["answers"][0] if ok else None
            except (OSError, http.client.HTTPException, ValueError, KeyError, IndexError) as err:
                conn.close()
                conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
                elapsed, ok, answer, payload = time.perf_counter() - t0, False, None, repr(err).encode()
            with lock:
                latencies.append(elapsed)
                if not ok:
                    state["errors"] += 1
                    if len(state["error_examples"]) < 3:
                        state["error_examples"].append(payload[:300].decode("utf-8", "replace"))
                    continue
                got = [answer["text"], answer["start"], answer["end"]]
                expected = pairs[k].get("expected") or reference.setdefault(k, got)
                if got != expected:
                    state["wrong"] += 1
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = [x * 1000 for x in latencies]
    return {
        "concurrency": concurrency,
        "requests": len(latencies),
        "capped_by_time": len(latencies) < requests,
        "errors": state["errors"],
        "error_examples": state["error_examples"],
        "wrong_answers": state["wrong"],
        "wall_s": wall,
        "throughput_rps": len(latencies) / wall if wall > 0 else 0.0,
        "p50_ms": common.percentile(ms, 50) if ms else None,
        "p95_ms": common.percentile(ms, 95) if ms else None,
        "p99_ms": common.percentile(ms, 99) if ms else None,
        "mean_ms": sum(ms) / len(ms) if ms else None,
    }


# --------------------------------------------------------------------------------------------------
# Soak: good and bad requests for a bounded time, the server's memory sampled
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SoakRequest:
    """One request of the soak mix and the status it must get."""

    kind: str
    method: str
    path: str
    body: bytes | None
    expected: int
    send: str = "plain"  # "plain" (Content-Length), "chunked" (no Content-Length), "headers only"
    repeat: int = 1  # "chunked": the body is sent this many times over (a big body, built once)


def _json(value) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def bad_requests(pair: dict, max_body_bytes: int) -> list[SoakRequest]:
    """The bad and tricky requests of the soak: each kind of 4xx of docs/serving.md, and the big ones
    that once cost the server memory (bodies read to the end and kept, error replies of megabytes)."""
    good = {"question": pair["question"], "context": pair["context"]}
    near_limit = b'{"question": "' + b"a" * (max_body_bytes - 1_024)  # under the limit, not JSON
    return [
        SoakRequest("not JSON", "POST", "/v1/answer", b'{"question": ', 400),
        SoakRequest("not UTF-8", "POST", "/v1/answer", b'{"question": "\xff\xfe", "context": "x"}', 400),
        SoakRequest("missing field", "POST", "/v1/answer", _json({"question": pair["question"]}), 422),
        SoakRequest("empty question", "POST", "/v1/answer", _json({**good, "question": " "}), 422),
        SoakRequest("top_k 0", "POST", "/v1/answer", _json({**good, "top_k": 0}), 422),
        SoakRequest("long context", "POST", "/v1/answer", _json({**good, "context": "가" * 10_001}), 422),
        SoakRequest("surrogate value", "POST", "/v1/answer", b'{"question": "\\ud800", "context": "x"}', 422),
        SoakRequest("surrogate name", "POST", "/v1/answer", b'{"question": "q", "context": "c", "\\ud800": 1}', 422),
        SoakRequest(
            "20k unknown fields", "POST", "/v1/answer", _json({**good, **{f"f{i}": 0 for i in range(20_000)}}), 422
        ),
        SoakRequest("100k empty rows", "POST", "/v1/answer/batch", _json({"questions": [{}] * 100_000}), 422),
        SoakRequest("near-limit non-JSON", "POST", "/v1/answer", near_limit, 400),
        # Sent whole, as ordinary clients do: the server drains it and the client reads the 413.
        SoakRequest("body over limit", "POST", "/v1/answer", b"a" * (max_body_bytes + 1_000_000), 413),
        # Over any drain bound (kqa.serving.limits): a 413 at once, without waiting for a body never sent.
        SoakRequest("Content-Length far over limit", "POST", "/v1/answer", str(10**12).encode(), 413, "headers only"),
        SoakRequest("chunked 20 MB", "POST", "/v1/answer", b"a" * 262_144, 413, "chunked", repeat=80),
        SoakRequest("HEAD /health", "HEAD", "/health", None, 200),
    ]


def soak_schedule(pairs: list[dict], max_body_bytes: int) -> list[SoakRequest]:
    """Three good requests (two questions, one batch of four) before each bad one, so that the model
    keeps working while every kind of bad request comes by again and again."""
    questions = [_json({"question": p["question"], "context": p["context"]}) for p in pairs]
    schedule = []
    for i, bad in enumerate(bad_requests(pairs[0], max_body_bytes)):
        batch = {"questions": [json.loads(questions[(4 * i + k) % len(questions)]) for k in range(4)]}
        schedule += [
            SoakRequest("question", "POST", "/v1/answer", questions[(2 * i) % len(questions)], 200),
            SoakRequest("question", "POST", "/v1/answer", questions[(2 * i + 1) % len(questions)], 200),
            SoakRequest("batch of 4", "POST", "/v1/answer/batch", _json(batch), 200),
            bad,
        ]
    return schedule


def _raw_request(host: str, port: int, request: SoakRequest) -> int:
    """A request over a socket of its own: a chunked body (the server must cut it off at the limit) or
    a Content-Length without the body. The status of the reply."""
    with socket.create_connection((host, port), timeout=60) as sock:
        framing = (
            "Transfer-Encoding: chunked" if request.send == "chunked" else f"Content-Length: {request.body.decode()}"
        )
        sock.sendall(
            f"{request.method} {request.path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"{framing}\r\n\r\n".encode()
        )
        if request.send == "chunked":
            chunk = b"%x\r\n%s\r\n" % (len(request.body), request.body)
            try:
                for _ in range(request.repeat):
                    sock.sendall(chunk)
                sock.sendall(b"0\r\n\r\n")
            except OSError:
                pass  # the server answered and closed the connection: the rest was not needed
        response = http.client.HTTPResponse(sock)
        response.begin()
        response.read()
        return response.status


def _plain_request(conn: http.client.HTTPConnection, request: SoakRequest) -> int:
    headers = {"Content-Type": "application/json"} if request.body is not None else {}
    conn.request(request.method, request.path, body=request.body, headers=headers)
    response = conn.getresponse()
    payload = response.read()
    if response.status == 200 and request.method == "POST":
        json.loads(payload)  # a 200 must carry JSON answers
    return response.status


def soak_worker(url: str, schedule: list[SoakRequest], offset: int, stop: threading.Event, tally: dict, lock) -> None:
    """Requests of `schedule` in turn (from `offset`, so that workers do not march in step) until `stop`."""
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    i = offset
    while not stop.is_set():
        request = schedule[i % len(schedule)]
        i += 1
        try:
            if request.send == "plain":
                status = _plain_request(conn, request)
            else:
                status = _raw_request(parsed.hostname, parsed.port, request)
        except (OSError, http.client.HTTPException, ValueError) as err:
            conn.close()
            status = f"{type(err).__name__}"
        with lock:
            tally["requests"] += 1
            tally["bad"] += request.expected != 200
            tally["by_kind"][request.kind] = tally["by_kind"].get(request.kind, 0) + 1
            if status != request.expected:
                key = f"{request.kind}: {status} (expected {request.expected})"
                tally["unexpected"][key] = tally["unexpected"].get(key, 0) + 1
    conn.close()


def run_soak(url: str, pid: int | None, pairs: list[dict], args) -> dict:
    """`args.concurrency` workers for `args.soak_seconds`; the server's RSS every `args.sample_seconds`."""
    max_body_bytes = get_json(url + "/health")["limits"]["max_body_bytes"]
    schedule = soak_schedule(pairs, max_body_bytes)
    (concurrency,) = args.concurrency
    stop, lock = threading.Event(), threading.Lock()
    tally = {"requests": 0, "bad": 0, "by_kind": {}, "unexpected": {}}
    workers = [
        threading.Thread(target=soak_worker, args=(url, schedule, n * 7, stop, tally, lock)) for n in range(concurrency)
    ]
    samples = []
    t0 = time.perf_counter()
    for worker in workers:
        worker.start()
    while True:
        elapsed = time.perf_counter() - t0
        with lock:
            done, bad = tally["requests"], tally["bad"]
        rss_kib = proc_memory(pid, url).get("rss_kib")
        samples.append({"t_s": round(elapsed, 1), "requests": done, "bad_requests": bad, "rss_mib": rss_kib / 1024})
        print(f"  {elapsed:7.1f} s  {done:7d} requests  RSS {rss_kib / 1024:8.1f} MiB", flush=True)
        if elapsed >= args.soak_seconds:
            break
        time.sleep(min(args.sample_seconds, max(args.soak_seconds - elapsed, 0.0)))
    stop.set()
    for worker in workers:
        worker.join()
    return {"concurrency": concurrency, **tally, **level_off(samples, args)}


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _window(samples: list[dict], start: float, end: float) -> list[float]:
    """RSS of the samples taken between `start` and `end` seconds (the nearest one when none was)."""
    inside = [s["rss_mib"] for s in samples if start <= s["t_s"] <= end]
    return inside or [min(samples, key=lambda s: abs(s["t_s"] - (start + end) / 2))["rss_mib"]]


def level_off(samples: list[dict], args) -> dict:
    """Did RSS level off? It moves by tens of MiB as micro-batches come and go (their activations), so
    one sample against another says little: the median of the last quarter of the run is compared
    with the median of the second quarter (the growth over the last half, against `--level-off-mib`),
    and the least-squares slope over the last half is reported beside it."""
    end = samples[-1]["t_s"]
    growth = _median(_window(samples, 0.75 * end, end)) - _median(_window(samples, 0.25 * end, 0.5 * end))
    late = [s for s in samples if s["t_s"] >= end / 2]
    mean_t = sum(s["t_s"] for s in late) / len(late)
    mean_rss = sum(s["rss_mib"] for s in late) / len(late)
    spread = sum((s["t_s"] - mean_t) ** 2 for s in late)
    slope = sum((s["t_s"] - mean_t) * (s["rss_mib"] - mean_rss) for s in late) / spread if spread else 0.0
    return {
        "samples": samples,
        "rss_first_mib": samples[0]["rss_mib"],
        "rss_last_mib": samples[-1]["rss_mib"],
        "rss_max_mib": max(s["rss_mib"] for s in samples),
        "growth_last_half_mib": growth,
        "slope_last_half_mib_per_min": 60 * slope,
        "level_off_mib": args.level_off_mib,
        "levelled_off": growth <= args.level_off_mib,
    }


def print_soak(result: dict) -> None:
    common.print_table(
        result["samples"],
        [
            ("t_s", "time s", ".0f"),
            ("requests", "requests", "d"),
            ("bad_requests", "bad", "d"),
            ("rss_mib", "RSS MiB", ".1f"),
        ],
        title="soak: server memory (/proc/PID/status VmRSS)",
    )
    rate = result["requests"] / result["samples"][-1]["t_s"] if result["samples"][-1]["t_s"] else 0.0
    print(
        f"{result['requests']} requests ({result['bad']} bad or tricky, {rate:.1f}/s) at concurrency "
        f"{result['concurrency']}; unexpected replies: {sum(result['unexpected'].values())}"
    )
    for key, count in sorted(result["unexpected"].items()):
        print(f"  {count:5d} × {key}")
    verdict = "levelled off" if result["levelled_off"] else "did NOT level off"
    print(
        f"RSS {verdict}: {result['rss_first_mib']:.1f} → {result['rss_last_mib']:.1f} MiB (max "
        f"{result['rss_max_mib']:.1f}); {result['growth_last_half_mib']:+.1f} MiB over the last half "
        f"(median of the last quarter against the second; bound {result['level_off_mib']:g} MiB), slope "
        f"{result['slope_last_half_mib_per_min']:+.2f} MiB/min over the last half"
    )


# --------------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------------


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="kqa model directory to serve")
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="a tiny model with known answers on the hand-written Korean examples (smoke test)",
    )
    parser.add_argument("--url", help="load-test a running server instead (loopback only); its own mode only")
    parser.add_argument("--data-dir", type=Path, default=common.default_data_dir())
    parser.add_argument(
        "--short-chars",
        type=int,
        nargs=2,
        default=(150, 260),
        metavar=("MIN", "MAX"),
        help="context length range of the questions (characters)",
    )
    parser.add_argument("--pool", type=int, default=200, help="distinct questions, cycled")
    parser.add_argument("--requests", type=int, default=2000, help="requests per cell (concurrency × mode)")
    parser.add_argument(
        "--concurrency", type=int, nargs="+", help="client threads per cell (default 1 8 32); --soak-seconds: one (8)"
    )
    parser.add_argument("--max-seconds", type=float, default=60.0, help="a cell stops after this many seconds")
    parser.add_argument("--warmup", type=int, default=20, help="requests per server before the first cell")
    parser.add_argument("--batch-size", type=int, default=16, help="micro-batch size of the batched server")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--soak-seconds",
        type=float,
        default=0.0,
        help="instead of the load test: a soak of good and bad requests for this long, server RSS sampled",
    )
    parser.add_argument("--sample-seconds", type=float, default=5.0, help="soak: seconds between RSS samples")
    parser.add_argument(
        "--level-off-mib",
        type=float,
        default=32.0,
        help="soak: RSS has levelled off when its median over the last quarter of the run is at most this "
        "much above its median over the second quarter",
    )
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if args.concurrency is None:
        args.concurrency = [8] if args.soak_seconds else [1, 8, 32]
    if args.soak_seconds and len(args.concurrency) != 1:
        parser.error("--soak-seconds: give one --concurrency")
    if args.url and urllib.parse.urlsplit(args.url).hostname not in ("127.0.0.1", "localhost", "::1"):
        parser.error("--url: loopback only (127.0.0.1 / localhost)")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from kqa.serving.harness import ServerProcess

    machine = common.machine_info()
    common.print_header(machine, common.settings_from_args(args))
    work = Path(tempfile.mkdtemp(prefix="bench-server-"))
    if args.tiny:
        model_dir, pairs = build_tiny_model(work)
        model_label = "tiny token_scoring_model (answers known by construction), hand-written Korean examples"
    else:
        model_dir = args.model
        if not args.url and not (Path(model_dir) / "config.json").exists():
            raise SystemExit(f"{model_dir}: not a saved model (train one, pass --model DIR, or use --tiny)")
        pairs = short_pairs(args.data_dir, tuple(args.short_chars), args.pool)
        model_label = str(model_dir)
    print(
        f"model: {model_label}; {len(pairs)} distinct questions, "
        f"mean context {sum(len(p['context']) for p in pairs) / len(pairs):.0f} characters"
    )

    if args.soak_seconds:
        return soak_main(args, machine, model_dir, model_label, pairs, work)
    servers: dict[str, dict] = {}
    processes = []
    try:
        if args.url:
            health = get_json(args.url + "/health")
            mode = "batched" if health["batching"]["batch_size"] > 1 else "unbatched"
            servers[mode] = {"url": args.url.rstrip("/"), "pid": None, "batching": health["batching"]}
        else:
            for mode in MODES:
                batch = args.batch_size if mode == "batched" else 1
                process = ServerProcess(
                    model_dir,
                    [
                        "--micro_batch_size",
                        batch,
                        "--max_wait_ms",
                        args.max_wait_ms,
                        "--device",
                        args.device,
                        "--log_level",
                        "warning",
                    ],
                    log_path=work / f"server-{mode}.log",
                )
                processes.append(process.start())
                servers[mode] = {
                    "url": process.url,
                    "pid": process.pid,
                    "batching": get_json(process.url + "/health")["batching"],
                }
        for server in servers.values():
            memory = proc_memory(server["pid"], server["url"])
            server["rss_kib_before"] = memory.get("rss_kib")
            warm = run_cell(
                server["url"], pairs, requests=args.warmup, concurrency=1, max_seconds=args.max_seconds, reference={}
            )
            if warm["errors"]:
                raise SystemExit(f"{mode} server: warm-up requests failed: {warm['error_examples']}")

        reference: dict[int, list] = {}
        rows = []
        for concurrency in args.concurrency:
            for mode in [m for m in MODES if m in servers]:
                server = servers[mode]
                before = get_json(server["url"] + "/health")["queue"]
                row = run_cell(
                    server["url"],
                    pairs,
                    requests=args.requests,
                    concurrency=concurrency,
                    max_seconds=args.max_seconds,
                    reference=reference,
                )
                after = get_json(server["url"] + "/health")["queue"]
                batches = after["batches"] - before["batches"]
                row.update(
                    mode=mode,
                    batch_size=server["batching"]["batch_size"],
                    mean_batch=(after["questions"] - before["questions"]) / batches if batches else None,
                )
                rows.append(row)
                print(
                    f"  {mode:9s} concurrency {concurrency:3d}: {row['requests']} requests, "
                    f"{row['throughput_rps']:.1f}/s, p50 {row['p50_ms']:.1f} ms, errors {row['errors']}",
                    flush=True,
                )
        for server in servers.values():
            memory = proc_memory(server["pid"], server["url"])
            server["rss_kib_after"] = memory.get("rss_kib")
            server["peak_rss_kib"] = memory.get("peak_rss_kib")
    finally:
        for process in processes:
            process.stop()

    unbatched = {r["concurrency"]: r["throughput_rps"] for r in rows if r["mode"] == "unbatched"}
    for row in rows:
        base = unbatched.get(row["concurrency"])
        row["speedup"] = row["throughput_rps"] / base if base else None
    common.print_table(
        rows,
        [
            ("mode", "mode", ""),
            ("concurrency", "clients", "d"),
            ("requests", "requests", "d"),
            ("errors", "errors", "d"),
            ("wrong_answers", "wrong", "d"),
            ("throughput_rps", "req/s", ".1f"),
            ("speedup", "vs unbatched", ".2f"),
            ("p50_ms", "p50 ms", ".1f"),
            ("p95_ms", "p95 ms", ".1f"),
            ("p99_ms", "p99 ms", ".1f"),
            ("mean_batch", "mean batch", ".2f"),
        ],
        title="load test",
    )
    common.print_table(
        [
            {"mode": m, **{k: s.get(k) for k in ("rss_kib_before", "rss_kib_after", "peak_rss_kib")}}
            for m, s in servers.items()
        ],
        [
            ("mode", "server", ""),
            ("rss_kib_before", "RSS before (KiB)", "d"),
            ("rss_kib_after", "RSS after (KiB)", "d"),
            ("peak_rss_kib", "peak RSS (KiB)", "d"),
        ],
        title="server memory (/proc/PID/status)",
    )
    common.write_json(
        args.out,
        machine=machine,
        settings=common.settings_from_args(args),
        model=model_label,
        results=rows,
        servers=servers,
    )
    failed = sum(r["errors"] for r in rows)
    if failed:
        print(f"{failed} requests failed", file=sys.stderr)
        return 1
    return 0


def soak_main(args, machine: dict, model_dir: Path, model_label: str, pairs: list[dict], work: Path) -> int:
    """The soak against one micro-batched server (or `--url`); 1 when any reply was not the expected one."""
    from kqa.serving.harness import ServerProcess

    process = None
    try:
        if args.url:
            url, pid = args.url.rstrip("/"), None
        else:
            process = ServerProcess(
                model_dir,
                ["--micro_batch_size", args.batch_size, "--max_wait_ms", args.max_wait_ms, "--device", args.device]
                + ["--log_level", "warning"],
                log_path=work / "server-soak.log",
            ).start()
            url, pid = process.url, process.pid
        print(f"soak: {args.soak_seconds:g} s at concurrency {args.concurrency[0]} against {url}", flush=True)
        result = run_soak(url, pid, pairs, args)
    finally:
        if process is not None:
            process.stop()
    print_soak(result)
    common.write_json(
        args.out, machine=machine, settings=common.settings_from_args(args), model=model_label, soak=result
    )
    return 1 if result["unexpected"] else 0


if __name__ == "__main__":
    sys.exit(main())
