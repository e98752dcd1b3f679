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
"""

from __future__ import annotations

import argparse
import http.client
import json
import sys
import tempfile
import threading
import time
import urllib.parse
import urllib.request
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
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--max-seconds", type=float, default=60.0, help="a cell stops after this many seconds")
    parser.add_argument("--warmup", type=int, default=20, help="requests per server before the first cell")
    parser.add_argument("--batch-size", type=int, default=16, help="micro-batch size of the batched server")
    parser.add_argument("--max-wait-ms", type=float, default=5.0)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
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


if __name__ == "__main__":
    sys.exit(main())
