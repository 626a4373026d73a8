"""The receiver host: `python -m tests.rehearsal.receiver --host H --port P --log FILE` serves
tests/receiver.py's application and writes one JSON line per delivery (every attempt that
reached it: time, webhook-id, event, job, status), flushed at once so that a reader sees each
as it lands. `deliveries(FILE)` reads them back."""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import uvicorn
from starlette.responses import Response

from tests.receiver import Answer, Hit, Receiver, receiver_app


@dataclass(frozen=True)
class Delivery:
    at: float
    webhook_id: str
    event: str
    job_id: str
    status: str


def _recorder(out: IO[str]) -> Answer:
    def answer(rec: Receiver, hit: Hit) -> Response:
        rec.hits.clear()  # the file is the record: keep no growing list in memory
        try:
            body = json.loads(hit.body)
        except ValueError:
            body = {}
        line = {
            "at": time.time(),
            "webhook_id": hit.headers.get("webhook-id", ""),
            "event": body.get("event", ""),
            "job_id": body.get("job_id", ""),
            "status": body.get("status", ""),
        }
        out.write(json.dumps(line) + "\n")
        out.flush()
        return Response(status_code=204)

    return answer


def deliveries(log: Path) -> list[Delivery]:
    if not log.exists():
        return []
    found = []
    for line in log.read_text().splitlines():
        if line.strip():
            found.append(Delivery(**json.loads(line)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.rehearsal.receiver")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path, required=True)
    args = parser.parse_args()
    with args.log.open("a") as out:
        rec = Receiver(f"http://{args.host}:{args.port}")
        app = receiver_app(rec, _recorder(out))
        uvicorn.run(app, host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
