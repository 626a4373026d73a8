"""`mediagen generate`, `mediagen jobs ...` and `mediagen models`: the user's commands, on
:mod:`mediagen.client`.

Only the standard library, httpx, rich and the client: no server code is imported, so the
commands work wherever the client is installed. Configured like the client by ``MEDIAGEN_URL``
and ``MEDIAGEN_API_KEY`` (or ``--url`` / ``--api-key``).

Exit codes: 0 done (a completed job), 1 the job failed, was canceled or expired (it completed,
but its outputs were deleted when their retention ended: nothing to download either), 2 a usage
error (also an output path that cannot be written), 3 an API error (401, 404, 429...: its
message and code on stderr), 130 interrupted (the job goes on).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import shutil
import sys
import tempfile
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from mediagen.client import Client, Job, MediagenError
from mediagen.client._args import build_parser
from mediagen.client._display import Display

EXIT_OK = 0
EXIT_JOB_FAILED = 1
EXIT_USAGE = 2
EXIT_API_ERROR = 3
EXIT_INTERRUPTED = 130

CLOSE_SECONDS = 3.0


def _follow(client: Client, job: Job, quiet: bool, logs: bool) -> Job:
    """Wait for `job` with the progress display (and the model's log lines, if asked for:
    shown even with --json, as they go to stderr); the finished job."""
    with Display(job, quiet) as display:
        if job.done and not logs:
            return job
        return client.wait(job.id, progress=display.event, on_log=display.log if logs else None)


# -- outputs -----------------------------------------------------------------------------------


def _download_to_file(client: Client, job: Job, target: Path) -> list[Path]:
    """Outputs as `target` (one) or `<stem>-<n><suffix>` (several), via a scratch directory
    beside it so a half-written file never carries the final name."""
    target.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=".mediagen-", dir=target.parent))
    try:
        fetched = client.download(job, scratch)
        if len(fetched) == 1:
            names = [target]
        else:
            names = [
                target.with_name(f"{target.stem}-{n}{target.suffix or path.suffix}")
                for n, path in enumerate(fetched)
            ]
        for path, name in zip(fetched, names, strict=True):
            path.replace(name)
        return names
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _summary(job: Job, files: Sequence[Path]) -> dict[str, Any]:
    return {
        "job_id": job.id,
        "status": job.status,
        "files": [str(path) for path in files],
        "output": job.output,
        "error": job.error,
    }


def _value(job: Job) -> str | None:
    """The job's output value as text, unless it is only its files (their URLs): text as it
    is, anything else as JSON."""
    if job.output is None or job.output == [output.url for output in job.outputs]:
        return None
    return job.output if isinstance(job.output, str) else json.dumps(job.output)


def _job_failed(job: Job) -> int:
    print(
        f"mediagen: job {job.id} {job.status}: {job.error or 'no error given'}",
        file=sys.stderr,
    )
    return EXIT_JOB_FAILED


def _interrupted(job_id: str | None) -> int:
    if job_id:
        print(f"interrupted; the job goes on: mediagen jobs wait {job_id}", file=sys.stderr)
    else:
        print("interrupted", file=sys.stderr)
    return EXIT_INTERRUPTED


# -- commands ----------------------------------------------------------------------------------


def _parameters(args: argparse.Namespace) -> dict[str, Any]:
    parameters: dict[str, Any] = dict(args.param)
    named = {
        "width": args.width,
        "height": args.height,
        "seed": args.seed,
        "num_inference_steps": args.steps,
        "output_format": args.format,
        "num_outputs": args.num_outputs,
    }
    parameters.update({key: value for key, value in named.items() if value is not None})
    return parameters


def _unreadable(parameters: dict[str, Any]) -> str | None:
    """What is wrong with the first local file named (`--param KEY=@FILE`, `--image`), if any:
    said before anything is uploaded or submitted."""
    for key, value in parameters.items():
        if isinstance(value, Path) and not value.is_file():
            what = "not a file" if value.exists() else "no such file"
            return f"{key}: {what}: {value}"
    return None


def cmd_generate(client: Client, args: argparse.Namespace) -> int:
    parameters = _parameters(args)
    if args.image:
        parameters["image"] = Path(args.image)  # uploaded by the client, as any local file
    if (problem := _unreadable(parameters)) is not None:
        print(f"mediagen: {problem}", file=sys.stderr)
        return EXIT_USAGE
    job = client.generate(
        args.prompt,
        model=args.model,
        priority=args.priority,
        retention=args.retention,
        **parameters,
    )
    if args.no_wait:
        if args.json:
            print(json.dumps(_summary(job, [])))
        else:
            print(job.id)
        return EXIT_OK
    try:
        job = _follow(client, job, quiet=args.json, logs=args.logs)
    except KeyboardInterrupt:
        return _interrupted(job.id)
    files: list[Path] = []
    if job.status == "completed":
        if args.output:
            files = _download_to_file(client, job, Path(args.output))
        else:
            files = client.download(job, args.output_dir or ".")
    if args.json:
        print(json.dumps(_summary(job, files)))
    else:
        for path in files:
            print(path)
        if not files and job.status == "completed" and (value := _value(job)) is not None:
            print(value)  # a model that returns text, numbers or JSON
    return EXIT_OK if job.status == "completed" else _job_failed(job)


def _when(job: Job) -> str:
    return job.created_at.strftime("%Y-%m-%d %H:%M:%S") if job.created_at else "-"


def cmd_list(client: Client, args: argparse.Namespace) -> int:
    jobs = client.list(status=args.status, limit=min(args.limit, 100))
    try:
        found = list(itertools.islice(jobs, args.limit))
    finally:
        close = getattr(jobs, "close", None)  # a generator: stop paging now
        if close is not None:
            close()
    if args.json:
        print(json.dumps([job.raw for job in found]))
        return EXIT_OK
    if not found:
        print("no jobs", file=sys.stderr)
        return EXIT_OK
    for job in found:
        prompt = (job.prompt or "").replace("\n", " ")
        if len(prompt) > 60:
            prompt = prompt[:59] + "…"
        print(f"{job.id}  {job.status:<10}  {_when(job)}  {prompt}")
    return EXIT_OK


def cmd_show(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.job_id)
    if args.json:
        print(json.dumps(job.raw, indent=2))
        return EXIT_OK
    rows: list[tuple[str, Any]] = [
        ("job", job.id),
        ("status", job.status),
        ("prompt", job.prompt),
        ("model", job.model),
        ("parameters", json.dumps(job.parameters) if job.parameters else None),
        ("created", _when(job)),
        ("queue position", job.queue_position),
        ("paused", "yes: its model is paused" if job.paused else None),
        ("progress", f"{job.progress.percent}%" if job.progress else None),
        ("attempts", job.attempts or None),
        ("duration", f"{job.duration_seconds:.1f} s" if job.duration_seconds else None),
        ("error", job.error),
        ("output", _value(job)),
    ]
    for name, value in rows:
        if value is not None and value != "":
            print(f"{name + ':':<16}{value}")
    for n, output in enumerate(job.outputs):
        extra = f" ({output.content_type}, {output.size} bytes)" if output.size else ""
        print(f"{f'output {n}:':<16}{output.url}{extra}")
    return EXIT_OK


def cmd_cancel(client: Client, args: argparse.Namespace) -> int:
    job = client.cancel(args.job_id)
    print(f"job {job.id}: {job.status}")
    return EXIT_OK


def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    client.delete(args.job_id)
    print(f"job {args.job_id}: deleted")
    return EXIT_OK


def cmd_wait(client: Client, args: argparse.Namespace) -> int:
    job = client.get(args.job_id)  # its queue position, and a 404 before any display
    try:
        job = _follow(client, job, quiet=args.json, logs=args.logs)
    except KeyboardInterrupt:
        return _interrupted(job.id)
    if args.json:
        print(json.dumps(_summary(job, [])))
    elif job.status == "completed":
        print(f"job {job.id}: completed; mediagen jobs download {job.id}")
    return EXIT_OK if job.status == "completed" else _job_failed(job)


def cmd_download(client: Client, args: argparse.Namespace) -> int:
    for path in client.download(args.job_id, args.output_dir):
        print(path)
    return EXIT_OK


def cmd_models(client: Client, args: argparse.Namespace) -> int:
    models = client.models()
    if args.json:
        print(json.dumps([dataclasses.asdict(model) for model in models], indent=2))
        return EXIT_OK
    width = max((len(model.name) for model in models), default=0)
    for model in models:
        default = "  (default)" if model.default else ""
        print(f"{model.name:<{width}}  {model.provider}{default}")
    return EXIT_OK


COMMANDS = {
    ("generate", None): cmd_generate,
    ("models", None): cmd_models,
    ("jobs", "list"): cmd_list,
    ("jobs", "show"): cmd_show,
    ("jobs", "cancel"): cmd_cancel,
    ("jobs", "delete"): cmd_delete,
    ("jobs", "wait"): cmd_wait,
    ("jobs", "download"): cmd_download,
}


@contextlib.contextmanager
def _client(args: argparse.Namespace) -> Iterator[Client]:
    client = Client(url=args.url, api_key=args.api_key)
    try:
        yield client
    finally:
        # Closed on a thread of its own, a few seconds at most: after a Ctrl-C the process
        # exits promptly whatever the connections are doing (the job lives on the server).
        closer = threading.Thread(target=_close_quietly, args=(client,), daemon=True)
        closer.start()
        with contextlib.suppress(KeyboardInterrupt):
            closer.join(CLOSE_SECONDS)


def _close_quietly(client: Client) -> None:
    with contextlib.suppress(Exception):
        client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(argv) if argv is not None else None)  # exit 2 on usage errors
    command = COMMANDS[(args.command, getattr(args, "jobs_command", None))]
    try:
        with _client(args) as client:
            return command(client, args)
    except MediagenError as exc:
        print(f"mediagen: {exc}", file=sys.stderr)
        if exc.retry_after is not None:
            print(f"mediagen: retry after {exc.retry_after:g} s", file=sys.stderr)
        return EXIT_API_ERROR
    except KeyboardInterrupt:
        return _interrupted(None)
    except OSError as exc:  # an output that cannot be written where asked
        print(f"mediagen: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
